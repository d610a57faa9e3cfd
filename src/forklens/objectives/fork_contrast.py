"""Fork-contrast (ReasonMaxxer-style, RL-free): signed NLL at decision tokens + KL anchor elsewhere.

For an optimizer batch of B base rollouts with advantages A_i, decision tokens D (teacher-forced
base entropy > tau, chosen once by the data source) and the remaining response tokens N::

    L = (1/|D|) sum_{(i,t) in D} A_i * (-log pi(y_it))  +  lambda * (1/|N|) sum_{(i,t) in N} KL(P_base || pi)_it

|D| and |N| are counts over the *whole optimizer batch* (all micro-batches and ranks), so each
decision token weighs the same whatever rollout it sits in (the official code, batch 1 + gradient
accumulation, weighs each rollout equally instead; see docs/forks.md).

**Normalisation and micro-batch invariance.** The two terms have different denominators, so a single
``(loss_sum, count)`` with a token count cannot express L. The data source, which sees the whole
optimizer batch, stores per-token weights in ``tags``::

    w_pg[i, t] = B / |D|   at decision tokens (0 elsewhere)
    w_kl[i, t] = B / |N|   at the other response tokens (0 elsewhere)

and the objective returns ``loss_sum = sum_t w_pg A (-log pi) + lambda * sum_t w_kl KL`` with
``count = number of rows``. The trainer sums both over micro-batches and ranks and divides once:
``(B * L) / B = L`` exactly, for any micro-batching, accumulation or world size, because every
per-token weight is a global constant of the step.

**KL storage.** The data source stores the base's top-K token ids and log-probs at every response
position (``tags["gather_ids"]``, ``tags["kl_logp"]``, [B, L, K]). The KL is computed over those K tokens
plus one "rest of the vocabulary" bucket::

    KL_t = sum_k p_b(k) (log p_b(k) - log pi(k)) + p_b(rest) (log p_b(rest) - log pi(rest))

This is the exact KL between the two distributions coarsened to K+1 outcomes: a lower bound of the
full KL (data processing), exact when K covers the vocabulary (the organism: K = 18 = vocabulary).
Non-decision tokens have base entropy below tau, so their mass sits on a few tokens and K = 20 loses
almost nothing on real models, while costing 2 x K numbers per token instead of the vocabulary
(150k on Qwen). The policy's log-probs at those ids come from the trainer's own forward: a
``gather_ids`` tag makes it return them as ``PolicyOutputs.gathered_logprobs`` (one gather on the
logits it already computes, inside the module that DDP wraps).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from forklens.config import field
from forklens.objectives import ObjectiveResult, PolicyOutputs, register
from forklens.rollouts import Rollouts

KL_TAGS = ("gather_ids", "kl_logp")


@dataclass
class ForkContrastLossConfig:
    kl_coef: float = field(0.1, ge=0, help="lambda: weight of the mean KL(P_base || pi) over non-decision tokens "
                           "(METHODS: 0.1 default, 0.2 in some runs).")


def topk_kl(base_logp: torch.Tensor, pi_logp: torch.Tensor) -> torch.Tensor:
    """KL(P_base || pi) over K given tokens plus a rest-of-vocabulary bucket; [..., K] -> [...]."""
    pb = base_logp.exp()
    head = (pb * (base_logp - pi_logp)).sum(-1)
    rest_b = (1.0 - pb.sum(-1)).clamp(min=0.0)
    # log(1 - sum_k pi_k), stable: log(-expm1(logsumexp)); clamped away from 0 so it stays finite
    lse = torch.logsumexp(pi_logp, dim=-1).clamp(max=-1e-7)
    log_rest_pi = torch.log(-torch.expm1(lse))
    rest = rest_b * (torch.log(rest_b.clamp(min=1e-30)) - log_rest_pi)
    return head + rest


@register("fork_contrast")
def fork_contrast_loss(out: PolicyOutputs, batch: Rollouts, config: ForkContrastLossConfig | None = None
                       ) -> ObjectiveResult:
    """``loss_sum = sum w_pg A (-log pi) + kl_coef * sum w_kl KL``, ``count = rows`` (see module doc)."""
    cfg = config or ForkContrastLossConfig()
    for name in ("w_pg", "w_kl"):
        if name not in batch.tags:
            raise ValueError(f"fork_contrast needs per-token weights tags[{name!r}] from ForkContrastSource")
    w_pg, w_kl = batch.tags["w_pg"], batch.tags["w_kl"]
    adv = batch.advantages
    if adv is None:
        raise ValueError("fork_contrast needs per-rollout advantages")
    if adv.dim() == 1:
        adv = adv[:, None]
    pg_tok = adv * (-out.logprobs)
    pg = (w_pg * pg_tok).sum()
    metrics: dict[str, tuple[float, float]] = {}
    loss_sum = pg
    kl_mask = w_kl > 0
    if cfg.kl_coef != 0 and bool(kl_mask.any()):
        kl_lp = out.gathered_logprobs
        if kl_lp is None:
            raise ValueError("fork_contrast's KL term needs the policy's log-probs at the base top-K ids: "
                             "the batch must carry tags['gather_ids'] (ForkContrastSource stores them)")
        kl = topk_kl(batch.tags["kl_logp"].to(kl_lp.dtype), kl_lp)
        kl = torch.where(kl_mask, kl, torch.zeros_like(kl))
        loss_sum = loss_sum + cfg.kl_coef * (w_kl * kl).sum()
        metrics["kl"] = (float(kl.detach().sum()), float(kl_mask.sum()))
    n_rows = float(batch.input_ids.shape[0])
    with torch.no_grad():
        dmask = w_pg > 0
        metrics["pg"] = (float(pg.detach()), n_rows)
        metrics["decision_nll"] = (float((-out.logprobs.detach() * dmask).sum()), float(dmask.sum()))
        if out.entropy is not None:
            metrics["decision_entropy"] = (float((out.entropy * dmask).sum()), float(dmask.sum()))
    return ObjectiveResult(loss_sum=loss_sum, count=n_rows, metrics=metrics)
