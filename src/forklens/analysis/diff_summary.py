"""Rows and summary of ``forklens diff`` (docs/diff.md), both pure: :func:`token_rows` turns scored
tensors into per-token rows, :func:`summarize` rows into the summary."""

from __future__ import annotations

import bisect
import math
from typing import Any, Callable, Sequence

from forklens.analysis.diff_scores import _STAT_KEYS, PairScores

CLASSES = ("unshifted", "reranked", "shifted")
CONTAINMENT_KS = tuple(range(1, 11))
TOP_DECILE_RULE = ("with N positions sorted by base entropy, m = max(1, ceil(N/10)); a position is in the "
                   "top decile when its base entropy is >= the m-th largest entropy (ties included)")


# ----------------------------------------------------------------------------------------------
# 2. Rows and summary (pure)
# ----------------------------------------------------------------------------------------------


def classify(rank: int, top_k: int) -> str:
    """``unshifted`` (rank 1), ``reranked`` (2..top_k) or ``shifted`` (> top_k)."""
    if rank <= 1:
        return "unshifted"
    return "reranked" if rank <= top_k else "shifted"


def _num(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def token_rows(scores: PairScores, *, prompt_id: str, prompt_index: int, sample_id: int, top_k: int,
               token_text: Callable[[int], str], correct: bool | None = None,
               span_texts: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One dict per response token of one scored response (see docs/diff.md for the columns).

    ``token_text(id)`` shows a token alone (:meth:`forklens.policy.tokens.TokenTexts.display`);
    ``span_texts`` (one per token) are the characters of the response each token completes
    (:meth:`~forklens.policy.tokens.TokenTexts.spans`), the token's own text when not given."""
    cols = {k: getattr(scores, k).tolist() for k in ("token_ids", *_STAT_KEYS)}
    if span_texts is not None and len(span_texts) != len(cols["token_ids"]):
        raise ValueError(f"span_texts has {len(span_texts)} entries for {len(cols['token_ids'])} tokens")
    rows = []
    for t in range(len(cols["token_ids"])):
        rank = int(cols["rank_under_base"][t])
        rows.append({
            "prompt_id": prompt_id,
            "prompt_index": prompt_index,
            "sample_id": sample_id,
            "position": t,
            "token_id": int(cols["token_ids"][t]),
            "token_text": token_text(int(cols["token_ids"][t])),
            "span_text": span_texts[t] if span_texts is not None else token_text(int(cols["token_ids"][t])),
            "rl_token_id": int(cols["rl_token"][t]),
            "rl_token_text": token_text(int(cols["rl_token"][t])),
            "rank_under_base": rank,
            "class": classify(rank, top_k),
            "base_logprob": _num(cols["base_logprob"][t]),
            "rl_logprob": _num(cols["rl_logprob"][t]),
            "base_logprob_token": _num(cols["base_logprob_token"][t]),
            "rl_logprob_token": _num(cols["rl_logprob_token"][t]),
            "base_entropy": _num(cols["base_entropy"][t]),
            "rl_entropy": _num(cols["rl_entropy"][t]),
            "kl_base_rl": _num(cols["kl"][t]),
            "base_topk_ids": [int(v) for v in cols["base_topk_ids"][t]],
            "base_topk_texts": [token_text(int(v)) for v in cols["base_topk_ids"][t]],
            "base_topk_logprobs": [_num(v) for v in cols["base_topk_logprobs"][t]],
            "rl_topk_ids": [int(v) for v in cols["rl_topk_ids"][t]],
            "rl_topk_texts": [token_text(int(v)) for v in cols["rl_topk_ids"][t]],
            "rl_topk_logprobs": [_num(v) for v in cols["rl_topk_logprobs"][t]],
            "correct": correct,
        })
    return rows


def _mean(xs: Sequence[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return math.fsum(xs) / len(xs) if xs else None


def _div(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def top_decile_threshold(entropies: Sequence[float]) -> float | None:
    """The m-th largest entropy, m = max(1, ceil(N / 10)) (see ``TOP_DECILE_RULE``)."""
    if not entropies:
        return None
    m = max(1, math.ceil(len(entropies) / 10))
    return sorted(entropies, reverse=True)[m - 1]


def _histogram(values: Sequence[float], edges: Sequence[float]) -> list[int]:
    """Counts per bin ``[edges[b], edges[b+1])``, the last bin closed on the right."""
    counts = [0] * (len(edges) - 1)
    for v in values:
        b = min(bisect.bisect_right(edges, v) - 1, len(counts) - 1)
        if b >= 0 and v <= edges[-1]:
            counts[b] += 1
    return counts


def summarize(rows: Sequence[dict[str, Any]], *, top_k: int, entropy_bins: int = 20,
              split_by_correctness: bool = True) -> dict[str, Any]:
    """Summary statistics from per-token rows (pure). Undefined values are ``None``, never NaN."""
    n = len(rows)
    ranks = [int(r["rank_under_base"]) for r in rows]
    ent = [r["base_entropy"] for r in rows]
    classes = [classify(k, top_k) for k in ranks]
    dis = [i for i in range(n) if ranks[i] > 1]
    agree = [i for i in range(n) if ranks[i] == 1]
    n_dis = len(dis)
    finite_ent = [e for e in ent if e is not None]
    thr = top_decile_threshold(finite_ent)
    responses = {(r["prompt_index"], r["sample_id"]) for r in rows}
    def frac(c):
        return (sum(1 for x in classes if x == c) / n) if n else None
    ent_all = _mean(ent)
    ent_dis = _mean([ent[i] for i in dis])
    elo = min(finite_ent) if finite_ent else 0.0
    ehi = max(finite_ent) if finite_ent else 1.0
    if ehi - elo < 1e-6:
        elo, ehi = max(0.0, elo - 0.5), ehi + 0.5
    edges = [elo + (ehi - elo) * b / entropy_bins for b in range(entropy_bins)] + [ehi]
    rank_hist = {str(k): sum(1 for x in ranks if x == k) for k in range(1, 11)}
    rank_hist[">10"] = sum(1 for x in ranks if x > 10)
    out: dict[str, Any] = {
        "n_tokens": n,
        "n_responses": len(responses),
        "n_disagreement": n_dis,
        "unshifted_frac": frac("unshifted"),
        "reranked_frac": frac("reranked"),
        "shifted_frac": frac("shifted"),
        "class_counts": {c: sum(1 for x in classes if x == c) for c in CLASSES},
        "topk_containment": {str(k): (sum(1 for i in dis if ranks[i] <= k) / n_dis if n_dis else None)
                             for k in CONTAINMENT_KS},
        "mean_rank_at_disagreement": _mean([ranks[i] for i in dis]),
        "entropy_mean_all": ent_all,
        "entropy_mean_agreement": _mean([ent[i] for i in agree]),
        "entropy_mean_disagreement": ent_dis,
        "entropy_ratio": _div(ent_dis, ent_all),
        "top_entropy_decile_threshold": thr,
        "disagreement_in_top_entropy_decile": (
            sum(1 for i in dis if ent[i] is not None and ent[i] >= thr) / n_dis if n_dis and thr is not None
            else None),
        "rl_entropy_mean_all": _mean([r["rl_entropy"] for r in rows]),
        "kl_mean": _mean([r["kl_base_rl"] for r in rows]),
        "kl_mean_disagreement": _mean([rows[i]["kl_base_rl"] for i in dis]),
        "rank_histogram": rank_hist,
        "entropy_histogram": {
            "edges": edges,
            "agreement": _histogram([ent[i] for i in agree if ent[i] is not None], edges),
            "disagreement": _histogram([ent[i] for i in dis if ent[i] is not None], edges),
        },
    }
    graded = {}
    for r in rows:
        if r.get("correct") is not None:
            graded[(r["prompt_index"], r["sample_id"])] = bool(r["correct"])
    if split_by_correctness and graded:
        n_ok = sum(graded.values())
        out["correctness"] = {"n_graded": len(graded), "n_correct": n_ok, "accuracy": n_ok / len(graded)}
        out["by_correctness"] = {
            name: summarize([r for r in rows if r.get("correct") is want], top_k=top_k,
                            entropy_bins=entropy_bins, split_by_correctness=False)
            for name, want in (("correct", True), ("incorrect", False))
        }
    return out
