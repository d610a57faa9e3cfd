"""Scoring for ``forklens diff`` (docs/diff.md): both models on the same responses, the LM heads
applied chunk by chunk, per-token rank of the RL token under the base, entropies and KL.

:func:`chunk_pair_stats` is pure, on one chunk of logits; :func:`score_pairs` runs both model bodies
once per batch and applies both LM heads chunk by chunk, so full float32 logits for both models never
exist at once (peak ~ ``chunk_tokens x vocab x 8`` floats).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from forklens.analysis.diff_fused import FusedCompileError, compiled_failed, fused_pair_stats, use_fused
from forklens.errors import ModelLoadError
from forklens.policy.score import body_and_head, head_logits, hidden_states, pack_for_scoring, pad_rows, verify_head

MIN_LIST_K = 5  # top-k lists always hold at least 5 candidates, so the report can show a top-5


# ----------------------------------------------------------------------------------------------
# 1. Scoring: both models, chunked over positions
# ----------------------------------------------------------------------------------------------


@dataclass
class PairScores:
    """Teacher-forced statistics of one response under both models, one entry per response token."""

    token_ids: torch.Tensor  # [T] the response tokens
    rl_token: torch.Tensor  # [T] RL argmax
    rank_under_base: torch.Tensor  # [T] int64, exact rank of rl_token under the base
    base_logprob: torch.Tensor  # [T] base log-prob of rl_token
    rl_logprob: torch.Tensor  # [T] RL log-prob of rl_token
    base_logprob_token: torch.Tensor  # [T] base log-prob of the response token
    rl_logprob_token: torch.Tensor  # [T] RL log-prob of the response token
    base_entropy: torch.Tensor  # [T] nats
    rl_entropy: torch.Tensor  # [T] nats
    kl: torch.Tensor  # [T] KL(base || rl), nats
    base_topk_ids: torch.Tensor  # [T, k]
    base_topk_logprobs: torch.Tensor  # [T, k]
    rl_topk_ids: torch.Tensor  # [T, k]
    rl_topk_logprobs: torch.Tensor  # [T, k]


_STAT_KEYS = ("rl_token", "rank_under_base", "base_logprob", "rl_logprob", "base_logprob_token",
              "rl_logprob_token", "base_entropy", "rl_entropy", "kl", "base_topk_ids",
              "base_topk_logprobs", "rl_topk_ids", "rl_topk_logprobs")


_DOT_BLOCK = 128


def _plogp(p: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    return torch.where(p > 0, p * logp, torch.zeros((), dtype=p.dtype, device=p.device))


@torch.no_grad()
def chunk_pair_stats(base_logits: torch.Tensor, rl_logits: torch.Tensor, targets: torch.Tensor,
                     list_k: int) -> dict[str, torch.Tensor]:
    """Per-position statistics from one chunk of float32 logits ``[c, V]`` of both models.

    ``targets`` [c] are the response tokens (teacher-forced). Pure: no model, no I/O.

    Few passes over the ``[c, V]`` rows (they dominate scoring time on a CPU): each log-softmax is
    formed once, in place, in a shifted copy of the logits; each softmax once; entropy and KL are row
    dot products (``H = -p . log p``, ``KL = p_b . (log p_b - log p_r)``) over the same elementwise terms
    as the definition, so the float32 error stays that of :func:`chunk_pair_stats_reference`. Rows with
    a non-finite logit (``-inf`` masks) are recomputed by that reference.
    """
    zb = base_logits.float()
    zr = rl_logits.float().to(zb.device)
    targets = targets.to(zb.device)
    mr, rl_token = zr.max(-1)  # the first (lowest id) maximum on ties, as argmax
    mb = zb.max(-1).values
    ref = zb.gather(-1, rl_token[:, None])
    rank = 1 + (zb > ref).sum(-1)

    def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Row dot products: batched over 128-wide blocks, then the block sums added (faster than a
        product and a sum, and as accurate; one long float32 dot per row is not)."""
        rows, width = a.shape
        if width % _DOT_BLOCK == 0 and width > _DOT_BLOCK:
            blocks = torch.bmm(a.reshape(-1, 1, _DOT_BLOCK), b.reshape(-1, _DOT_BLOCK, 1))
            return blocks.view(rows, -1).sum(-1)
        return (a * b).sum(-1)

    logp_b = zb - mb[:, None]
    logp_r = zr - mr[:, None]
    p_b = logp_b.exp()
    sb = p_b.sum(-1)
    p_b /= sb[:, None]
    logp_b -= sb.log()[:, None]
    base_entropy = -dot(p_b, logp_b)
    q = logp_r.exp()
    sr = q.sum(-1)
    q /= sr[:, None]
    logp_r -= sr.log()[:, None]
    rl_entropy = -dot(q, logp_r)
    torch.sub(logp_b, logp_r, out=q)
    kl = dot(p_b, q)
    del p_b, q
    out = _collect(rl_token, rank, logp_b, logp_r, targets, base_entropy, rl_entropy, kl, list_k)
    return _exact_where_nonfinite(out, base_logits, rl_logits, targets, list_k)


def _exact_where_nonfinite(out: dict[str, torch.Tensor], base_logits, rl_logits, targets, list_k) -> dict[str, torch.Tensor]:
    """Rows whose entropy or KL came out non-finite (``-inf`` masks in the logits) recomputed by the reference."""
    bad = ~(torch.isfinite(out["kl"]) & torch.isfinite(out["base_entropy"]) & torch.isfinite(out["rl_entropy"]))
    if bool(bad.any()):
        rows = bad.nonzero().view(-1)
        exact = chunk_pair_stats_reference(base_logits[rows], rl_logits[rows], targets[rows].to(rows.device), list_k)
        for key, value in exact.items():
            out[key] = out[key].clone()
            out[key][rows] = value.to(out[key].dtype)
    return out


def pair_stats(base_logits: torch.Tensor, rl_logits: torch.Tensor, targets: torch.Tensor, list_k: int, *,
               fused: bool = False) -> dict[str, torch.Tensor]:
    """The statistics of one chunk by the compiled fused kernel (:mod:`forklens.analysis.diff_fused`) when
    ``fused``, else :func:`chunk_pair_stats`; a failed compile warns once and falls back."""
    if fused and not compiled_failed():
        try:
            out = fused_pair_stats(base_logits, rl_logits, targets, list_k)
        except FusedCompileError as exc:
            warnings.warn(f"forklens: {exc}; using the eager path", RuntimeWarning, stacklevel=2)
        else:
            return _exact_where_nonfinite(out, base_logits, rl_logits, targets.to(base_logits.device), list_k)
    return chunk_pair_stats(base_logits, rl_logits, targets, list_k)


@torch.no_grad()
def chunk_pair_stats_reference(base_logits: torch.Tensor, rl_logits: torch.Tensor, targets: torch.Tensor,
                               list_k: int) -> dict[str, torch.Tensor]:
    """:func:`chunk_pair_stats` by the elementwise definitions (log-softmax, ``p log p`` with 0 log 0 = 0);
    the fallback for rows with non-finite logits and the reference the fast path is tested against."""
    base_logits = base_logits.float()
    rl_logits = rl_logits.float().to(base_logits.device)
    targets = targets.to(base_logits.device)
    rl_token = rl_logits.argmax(-1)  # first (lowest id) maximum on ties
    ref = base_logits.gather(-1, rl_token[:, None])
    rank = 1 + (base_logits > ref).sum(-1)
    logp_b = torch.log_softmax(base_logits, dim=-1)
    logp_r = torch.log_softmax(rl_logits, dim=-1)
    p_b = logp_b.exp()
    base_entropy = -_plogp(p_b, logp_b).sum(-1)
    kl = _plogp(p_b, logp_b - logp_r).sum(-1)
    del p_b
    rl_entropy = -_plogp(logp_r.exp(), logp_r).sum(-1)
    return _collect(rl_token, rank, logp_b, logp_r, targets, base_entropy, rl_entropy, kl, list_k)


def _collect(rl_token, rank, logp_b, logp_r, targets, base_entropy, rl_entropy, kl, list_k) -> dict[str, torch.Tensor]:
    """The statistics dict of both paths from the two log-softmaxes and the reductions."""
    k = min(list_k, logp_b.shape[-1])
    bv, bi = logp_b.topk(k, dim=-1)
    rv, ri = logp_r.topk(k, dim=-1)
    return {
        "rl_token": rl_token,
        "rank_under_base": rank,
        "base_logprob": logp_b.gather(-1, rl_token[:, None]).squeeze(-1),
        "rl_logprob": logp_r.gather(-1, rl_token[:, None]).squeeze(-1),
        "base_logprob_token": logp_b.gather(-1, targets[:, None]).squeeze(-1),
        "rl_logprob_token": logp_r.gather(-1, targets[:, None]).squeeze(-1),
        "base_entropy": base_entropy,
        "rl_entropy": rl_entropy,
        "kl": kl,
        "base_topk_ids": bi,
        "base_topk_logprobs": bv,
        "rl_topk_ids": ri,
        "rl_topk_logprobs": rv,
    }


def head_vocab(model) -> int:
    return int(body_and_head(model)[2].weight.shape[0])


def default_chunk_bytes(device) -> int:
    """LM-head chunk budget: 256 MiB on CPU (bounded host memory), 1 GiB on a GPU, where the per-token
    statistics over the vocabulary are launch-bound in small chunks (1 GiB scored 1.4x faster than
    256 MiB on an H100 with a 152k vocabulary: benchmarks/scaling.py, docs/results.md)."""
    return (2**30) if torch.device(device).type == "cuda" else 256 * 2**20


def default_chunk_tokens(vocab: int, max_chunk_bytes: int = 256 * 2**20) -> int:
    """Positions per chunk so that ~8 float32 [chunk x vocab] temporaries fit ``max_chunk_bytes``."""
    return max(1, max_chunk_bytes // (vocab * 4 * 8))


@torch.no_grad()
def score_pairs(base, rl, prompt_ids: Sequence[list[int]], response_ids: Sequence[list[int]], *,
                list_k: int = MIN_LIST_K, batch_tokens: int = 8192, chunk_tokens: int | None = None,
                max_chunk_bytes: int | None = None, progress: Callable[[int], None] | None = None,
                rl_prompt_ids: Sequence[list[int]] | None = None, fused: bool | None = None) -> list[PairScores]:
    """Teacher-force each prompt+response through both :class:`~forklens.policy.Policy` objects.

    Sequences are sorted by length and batched up to ``batch_tokens`` padded tokens (right padding).
    Each model body runs once per batch; the response positions' hidden states then go through both
    LM heads ``chunk_tokens`` rows at a time, keeping only the per-position statistics.
    ``rl_prompt_ids`` (one per response) gives the RL side its own prompts (a scaffold: skill text or
    template), so both policies are scored on the same response tokens in different contexts;
    by default both read ``prompt_ids``. ``fused`` takes the compiled statistics kernel
    (:mod:`forklens.analysis.diff_fused`); ``None`` decides by ``FORKLENS_FUSED_STATS`` and the device.
    """
    if len(prompt_ids) != len(response_ids):
        raise ValueError("prompt_ids and response_ids must have the same length")
    if rl_prompt_ids is not None and len(rl_prompt_ids) != len(response_ids):
        raise ValueError("rl_prompt_ids and response_ids must have the same length")
    sides = (prompt_ids, rl_prompt_ids if rl_prompt_ids is not None else prompt_ids)
    longest = [max(len(a), len(b)) + len(y) for a, b, y in zip(*sides, response_ids)]
    vocab = head_vocab(base.model)
    if chunk_tokens is None:
        chunk_tokens = default_chunk_tokens(vocab, max_chunk_bytes or default_chunk_bytes(base.device))
    if fused is None:
        fused = use_fused(base.device, float(sum(len(y) for y in response_ids)) * vocab)
    results: list[PairScores | None] = [None] * len(prompt_ids)
    models = (base, rl)
    training = [p.model.training for p in models]
    for p in models:
        p.model.eval()
    checked = False
    try:
        for pb in pack_for_scoring(prompt_ids, response_ids, base.pad_id, batch_tokens, group_lengths=longest):
            batch, targets = pb.rows, pb.targets
            hidden = []
            for side, pol in enumerate(models):
                if side == 1 and rl_prompt_ids is not None:
                    pb = pad_rows(batch, rl_prompt_ids, response_ids, base.pad_id)
                ids, attn, sel = pb.input_ids, pb.attention_mask, pb.predicts_response
                dev = pol.device
                if not checked:
                    try:
                        verify_head(pol.model, ids.to(dev), attn.to(dev))
                    except ValueError as exc:
                        raise ModelLoadError(f"{pol.path or 'model'}: {exc}") from None
                h = hidden_states(pol.model, ids.to(dev), attn.to(dev))
                hidden.append(h[sel.to(dev)])
                del h
            checked = True
            parts: dict[str, list[torch.Tensor]] = {k: [] for k in _STAT_KEYS}
            n = hidden[0].shape[0]
            for s in range(0, n, chunk_tokens):
                lb = head_logits(base.model, hidden[0][s:s + chunk_tokens])
                lr = head_logits(rl.model, hidden[1][s:s + chunk_tokens])
                stats = pair_stats(lb, lr, targets[s:s + chunk_tokens], list_k, fused=fused)
                del lb, lr
                for k, v in stats.items():
                    parts[k].append(v.cpu())
            del hidden
            cat = {k: torch.cat(v) for k, v in parts.items()}
            offset = 0
            for j in batch:
                t = len(response_ids[j])
                cut = slice(offset, offset + t)
                results[j] = PairScores(token_ids=torch.tensor(list(response_ids[j]), dtype=torch.long),
                                        **{k: v[cut] for k, v in cat.items()})
                offset += t
            if progress is not None:
                progress(len(batch))
    finally:
        for p, was in zip(models, training):
            p.model.train(was)
    return results  # type: ignore[return-value]
