"""Mutual-information proxy for "template collapse" (RAGEN-2, arXiv 2604.06268).

Teacher-force every rollout's response under every distinct prompt of the batch and ask which prompt
makes it most likely. The retrieval accuracy (the argmax prompt is the rollout's own) is high when
responses depend on their prompt and falls to chance (1 / number of prompts) when the policy writes
the same template whatever it is asked, a collapse that entropy alone does not show (a collapsed
policy can still be high-entropy inside the template).

Score of response y under prompt x: ``sum_t log p(y_t | x, y_<t)`` over the response tokens (or over
the tokens ``masks`` marks, e.g. only the model's own tokens of a multi-turn episode). A rollout counts
as retrieved only when its own prompt's score is strictly higher than every other prompt's (a tie, as
under a fully collapsed policy, is a miss).
"""

from __future__ import annotations

from typing import Sequence

import torch


def retrieval_accuracy(scores: torch.Tensor, owners: Sequence[int]) -> float:
    """Fraction of rows of ``scores`` [R, P] whose own column (``owners[r]``) is the strict maximum."""
    if scores.shape[0] != len(owners):
        raise ValueError(f"{scores.shape[0]} score rows for {len(owners)} owners")
    if scores.shape[0] == 0:
        raise ValueError("no rollouts to retrieve")
    own = scores[torch.arange(len(owners)), torch.as_tensor(owners)]
    others = scores.clone()
    others[torch.arange(len(owners)), torch.as_tensor(owners)] = float("-inf")
    best_other = others.max(-1).values if scores.shape[1] > 1 else torch.full_like(own, float("-inf"))
    return float((own > best_other).float().mean())


def score_matrix(policy, prompts: Sequence[list[int]], responses: Sequence[list[int]],
                 masks: Sequence[Sequence[int]] | None = None, batch_tokens: int = 16384) -> torch.Tensor:
    """[R, P] summed log-probs of every response under every prompt, in one batched ``policy.score``
    call over the R x P pairs."""
    pairs_p = [list(p) for _ in responses for p in prompts]
    pairs_r = [list(r) for r in responses for _ in prompts]
    scored = policy.score(pairs_p, pairs_r, batch_tokens=batch_tokens)
    out = torch.empty(len(responses) * len(prompts), dtype=torch.float64)
    for k, s in enumerate(scored):
        lp = s.logprob.double()
        if masks is not None:
            lp = lp * torch.as_tensor(list(masks[k // len(prompts)]), dtype=torch.float64)
        out[k] = lp.sum()
    return out.view(len(responses), len(prompts))


def mi_proxy(policy, prompt_ids: Sequence[list[int]], response_ids: Sequence[list[int]],
             masks: Sequence[Sequence[int]] | None = None) -> dict[str, float]:
    """``{"mi_proxy_acc", "mi_proxy_chance", "mi_proxy_prompts", "scored_tokens"}`` for rollouts given by
    their own prompt ids (one per rollout; identical prompts are merged) and response ids."""
    if len(prompt_ids) != len(response_ids):
        raise ValueError("prompt_ids and response_ids must have the same length")
    distinct: dict[tuple[int, ...], int] = {}
    owners = [distinct.setdefault(tuple(p), len(distinct)) for p in prompt_ids]
    prompts = [list(p) for p in distinct]
    scores = score_matrix(policy, prompts, response_ids, masks)
    tokens = sum(len(p) + len(r) for r in response_ids for p in prompts)
    return {"mi_proxy_acc": retrieval_accuracy(scores, owners), "mi_proxy_chance": 1.0 / len(prompts),
            "mi_proxy_prompts": float(len(prompts)), "scored_tokens": float(tokens)}
