"""Fork statistics at the disagreements of a token diff (rows of :func:`forklens.analysis.diff.run_diff`).

The sparse policy selection account (arXiv 2605.06241) says RL changes the
greedy token at few positions, that those positions are high-entropy "forks" of the base, and that the
RL token is already among the base's top candidates. On one (base, tuned) pair these numbers measure
each part of that account, restricted to the *disagreements* (positions whose RL token has base rank
> 1):

``n_disagreement`` / ``disagreements_per_response``
    how sparse the change is;
``share_in_topk`` (K = ``top_k``) and ``share_shifted``
    the share of disagreements whose RL token is within / beyond the base top-K (re-ranked vs shifted);
``rank_distribution``
    the share of disagreements at each base rank (2, 3, 4, 5, 6-10, > 10);
``entropy_ratio``
    mean base entropy at disagreements over the mean at every response token (> 1: forks are
    high-entropy);
``base_prob_rl_token_mean`` / ``_median``
    the base probability of the token RL chose there;
``branches_mean`` / ``share_multi_branch``
    how many candidates have base probability > ``branch_p`` at a disagreement (from the base top-k
    list the diff stores, at least 5 long), and the share of disagreements with more than two;
``base_top1_prob_mean``
    how confident the base was in its own choice there.

Undefined values (no disagreement) are ``None``.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, Iterable, Sequence

from forklens.errors import DataError

RANK_BUCKETS = ("2", "3", "4", "5", "6-10", ">10")


def rank_bucket(rank: int) -> str:
    """The :data:`RANK_BUCKETS` label of a base rank > 1."""
    if rank < 2:
        raise ValueError(f"rank {rank} is not a disagreement (rank must be >= 2)")
    if rank <= 5:
        return str(rank)
    return "6-10" if rank <= 10 else ">10"


def _mean(xs: Sequence[float]) -> float | None:
    return math.fsum(xs) / len(xs) if xs else None


def fork_stats(rows: Sequence[dict[str, Any]], *, top_k: int = 5, branch_p: float = 0.05) -> dict[str, Any]:
    """Statistics of the disagreements among per-token diff ``rows`` (pure)."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if not 0 < branch_p < 1:
        raise ValueError(f"branch_p must be in (0, 1), got {branch_p}")
    if not rows:
        raise DataError("fork_stats: no token rows (the diff scored no response)")
    dis = [r for r in rows if int(r["rank_under_base"]) > 1]
    n_dis = len(dis)
    responses = {(r["prompt_index"], r["sample_id"]) for r in rows}
    ent_all = _mean([r["base_entropy"] for r in rows if r["base_entropy"] is not None])
    ent_dis = _mean([r["base_entropy"] for r in dis if r["base_entropy"] is not None])
    probs = [math.exp(r["base_logprob"]) for r in dis if r["base_logprob"] is not None]
    branches = [sum(1 for lp in r["base_topk_logprobs"] if lp is not None and math.exp(lp) > branch_p) for r in dis]
    top1 = [math.exp(r["base_topk_logprobs"][0]) for r in dis if r["base_topk_logprobs"][0] is not None]
    counts = {b: 0 for b in RANK_BUCKETS}
    for r in dis:
        counts[rank_bucket(int(r["rank_under_base"]))] += 1
    share = (lambda k: k / n_dis) if n_dis else (lambda k: None)
    return {
        "n_tokens": len(rows),
        "n_responses": len(responses),
        "n_disagreement": n_dis,
        "disagreement_frac": n_dis / len(rows),
        "disagreements_per_response": n_dis / len(responses),
        "top_k": top_k,
        "share_in_topk": share(sum(1 for r in dis if int(r["rank_under_base"]) <= top_k)),
        "share_shifted": share(sum(1 for r in dis if int(r["rank_under_base"]) > top_k)),
        "rank_counts": counts,
        "rank_distribution": {b: share(c) for b, c in counts.items()},
        "mean_rank": _mean([float(r["rank_under_base"]) for r in dis]),
        "entropy_mean_all": ent_all,
        "entropy_mean_disagreement": ent_dis,
        "entropy_ratio": ent_dis / ent_all if ent_dis is not None and ent_all else None,
        "base_prob_rl_token_mean": _mean(probs),
        "base_prob_rl_token_median": statistics.median(probs) if probs else None,
        "branch_p": branch_p,
        "branches_mean": _mean([float(b) for b in branches]),
        "share_multi_branch": share(sum(1 for b in branches if b > 2)),
        "base_top1_prob_mean": _mean(top1),
    }


def read_token_rows(path: str | Path) -> list[dict[str, Any]]:
    """The per-token rows a diff wrote (``tokens.jsonl``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no token rows at {path}: run the diff with an output folder (tokens_format jsonl)")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def mean_rank_distribution(dists: Iterable[dict[str, float | None]]) -> dict[str, float | None]:
    """The mean of per-seed rank distributions, bucket by bucket (seeds without disagreements skipped)."""
    kept = [d for d in dists if all(d.get(b) is not None for b in RANK_BUCKETS)]
    return {b: (_mean([d[b] for d in kept]) if kept else None) for b in RANK_BUCKETS}
