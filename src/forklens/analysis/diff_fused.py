"""The per-token diff statistics as one compiled kernel (issue 17): each logit row is read in a few
fused loops instead of one memory pass per statistic.

:func:`fused_pair_stats` writes every statistic of
:func:`~forklens.analysis.diff_scores.chunk_pair_stats` through the log-sum-exp, never forming the
``[c, V]`` log-softmax arrays:

* ``lse = m + log sum exp(z - m)`` per row and side (``m`` the row maximum);
* entropy ``H = (lse - m) - sum e^(z-m) (z - m) / sum e^(z-m)``, the same as ``-sum p log p``;
* ``KL(b || r) = E_b[(z_b - m_b) - (z_r - m_r)] - (lse_b - m_b) + (lse_r - m_r)``;
* log-probs of the RL token, of the response token and of each side's top-k as ``z - lse``
  (the top-k of the logits and of the log-probs are the same ids).

Compiled with ``torch.compile`` (inductor: Triton on a GPU, C++ on a CPU), the reductions over a row
fuse into a handful of loops. The first call compiles (seconds to tens of seconds); when a compile
fails, :func:`~forklens.analysis.diff_scores.score_pairs` warns once and uses the eager
:func:`~forklens.analysis.diff_scores.chunk_pair_stats`. Rows with a non-finite logit are recomputed
by the elementwise reference, as in the eager path.

Which path :func:`~forklens.analysis.diff_scores.score_pairs` takes: ``FORKLENS_FUSED_STATS=1``
(always compiled), ``0`` (never), unset or ``auto``: compiled on a CUDA device when Triton is importable,
and on a CPU (with a C++ compiler) when the diff scores at least :data:`CPU_MIN_ELEMENTS` positions x
vocabulary entries, where the compile (seconds) pays for itself: the kernel's time against the few-pass
path's and the compile time are measured by ``benchmarks/scoring_stats.py``
(``benchmarks/results/scoring_stats.json``); a short diff stays eager.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import torch

_COMPILED = None
_FAILED = False


def _stats(zb: torch.Tensor, zr: torch.Tensor, targets: torch.Tensor, k: int):
    zb = zb.float()
    zr = zr.float()
    mb = zb.amax(-1, keepdim=True)
    mr, rl_token = zr.max(-1, keepdim=True)
    db = zb - mb
    dr = zr - mr
    eb = db.exp()
    er = dr.exp()
    sb = eb.sum(-1, keepdim=True)
    sr = er.sum(-1, keepdim=True)
    lb = sb.log()  # lse - m
    lr = sr.log()
    base_entropy = lb - (eb * db).sum(-1, keepdim=True) / sb
    rl_entropy = lr - (er * dr).sum(-1, keepdim=True) / sr
    kl = (eb * (db - dr)).sum(-1, keepdim=True) / sb - lb + lr
    ref = zb.gather(-1, rl_token)
    rank = 1 + (zb > ref).sum(-1)
    lse_b = mb + lb
    lse_r = mr + lr
    tgt = targets[:, None]
    bv, bi = zb.topk(k, dim=-1)
    rv, ri = zr.topk(k, dim=-1)
    return (rl_token.squeeze(-1), rank, (ref - lse_b).squeeze(-1), (zr.gather(-1, rl_token) - lse_r).squeeze(-1),
            (zb.gather(-1, tgt) - lse_b).squeeze(-1), (zr.gather(-1, tgt) - lse_r).squeeze(-1),
            base_entropy.squeeze(-1), rl_entropy.squeeze(-1), kl.squeeze(-1), bi, bv - lse_b, ri, rv - lse_r)


_KEYS = ("rl_token", "rank_under_base", "base_logprob", "rl_logprob", "base_logprob_token", "rl_logprob_token",
         "base_entropy", "rl_entropy", "kl", "base_topk_ids", "base_topk_logprobs", "rl_topk_ids",
         "rl_topk_logprobs")


CPU_MIN_ELEMENTS = 5e8  # positions x vocabulary above which the compile pays off on a CPU (scoring_stats.json)


def use_fused(device, elements: float = 0.0) -> bool:
    """Whether :func:`~forklens.analysis.diff_scores.score_pairs` should take the compiled path on ``device``
    for ``elements`` = scored positions x vocabulary."""
    mode = os.environ.get("FORKLENS_FUSED_STATS", "auto").strip().lower()
    if mode in ("1", "true", "yes", "on"):
        return not _FAILED
    if mode in ("0", "false", "no", "off"):
        return False
    if mode != "auto":
        raise ValueError(f"FORKLENS_FUSED_STATS={mode!r}: expected 1, 0 or auto")
    if _FAILED:
        return False
    if torch.device(device).type == "cuda":
        return importlib.util.find_spec("triton") is not None
    return torch.device(device).type == "cpu" and elements >= CPU_MIN_ELEMENTS and shutil.which("g++") is not None


@torch.no_grad()
def fused_pair_stats(base_logits: torch.Tensor, rl_logits: torch.Tensor, targets: torch.Tensor, list_k: int, *,
                     compiled: bool = True) -> dict[str, torch.Tensor]:
    """The statistics of :func:`~forklens.analysis.diff_scores.chunk_pair_stats` from one compiled function
    (``compiled=False`` runs the same formulas eagerly, for tests). Rows with a non-finite logit come
    back non-finite: the caller recomputes them by the reference. A failed compile raises
    :class:`FusedCompileError` and marks the compiled path failed for this process."""
    global _COMPILED, _FAILED
    zr = rl_logits.to(base_logits.device)
    targets = targets.to(base_logits.device)
    k = min(list_k, base_logits.shape[-1])
    if not compiled:
        return dict(zip(_KEYS, _stats(base_logits, zr, targets, k)))
    if _COMPILED is None:
        _COMPILED = torch.compile(_stats, dynamic=True)
    try:
        values = _COMPILED(base_logits, zr, targets, k)
    except Exception as exc:  # noqa: BLE001 - any compiler failure: the caller uses the eager path from now on
        _FAILED = True
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise FusedCompileError(f"compiling the fused diff statistics failed ({type(exc).__name__}: {first})") from exc
    return dict(zip(_KEYS, values))


class FusedCompileError(RuntimeError):
    """``torch.compile`` could not build the fused statistics on this machine."""


def compiled_failed() -> bool:
    """True once a compile of the fused statistics has failed in this process (the eager path is used)."""
    return _FAILED
