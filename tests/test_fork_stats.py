"""forklens.analysis.fork_stats: statistics at a diff's disagreements, on hand-made rows."""

from __future__ import annotations

import math

import pytest

from forklens.analysis.fork_stats import RANK_BUCKETS, fork_stats, mean_rank_distribution, rank_bucket
from forklens.errors import DataError


def row(rank, ent, p_rl, topk_probs, prompt=0):
    return {"prompt_index": prompt, "sample_id": 0, "rank_under_base": rank, "base_entropy": ent,
            "base_logprob": math.log(p_rl), "base_topk_logprobs": [math.log(p) for p in topk_probs]}


def test_stats_at_disagreements():
    rows = [row(1, 0.0 + 1e-9, 0.99, [0.99, 0.004, 0.003, 0.002, 0.001]),
            row(1, 0.1, 0.9, [0.9, 0.05, 0.03, 0.01, 0.01]),
            row(2, 1.0, 0.3, [0.4, 0.3, 0.2, 0.06, 0.04], prompt=1),
            row(7, 2.0, 0.01, [0.5, 0.2, 0.1, 0.1, 0.08], prompt=1)]
    s = fork_stats(rows, top_k=5, branch_p=0.05)
    assert s["n_tokens"] == 4 and s["n_responses"] == 2 and s["n_disagreement"] == 2
    assert s["disagreements_per_response"] == 1.0
    assert s["share_in_topk"] == 0.5 and s["share_shifted"] == 0.5
    assert s["rank_counts"] == {"2": 1, "3": 0, "4": 0, "5": 0, "6-10": 1, ">10": 0}
    assert s["mean_rank"] == 4.5
    assert s["entropy_ratio"] == pytest.approx(1.5 / ((1e-9 + 0.1 + 1.0 + 2.0) / 4))
    assert s["base_prob_rl_token_mean"] == pytest.approx(0.155)
    # branches > 0.05: {0.4, 0.3, 0.2, 0.06} = 4 and {0.5, 0.2, 0.1, 0.1, 0.08} = 5
    assert s["branches_mean"] == 4.5 and s["share_multi_branch"] == 1.0
    assert s["base_top1_prob_mean"] == pytest.approx(0.45)


def test_no_disagreement_gives_none_not_nan():
    s = fork_stats([row(1, 0.2, 0.9, [0.9, 0.1, 1e-3, 1e-3, 1e-3])])
    assert s["n_disagreement"] == 0
    assert s["share_in_topk"] is None and s["entropy_ratio"] is None and s["branches_mean"] is None
    assert mean_rank_distribution([s["rank_distribution"]]) == {b: None for b in RANK_BUCKETS}


def test_bad_input():
    with pytest.raises(DataError):
        fork_stats([])
    with pytest.raises(ValueError):
        fork_stats([row(2, 1.0, 0.3, [0.4, 0.3, 0.2, 0.06, 0.04])], branch_p=1.5)
    with pytest.raises(ValueError):
        rank_bucket(1)


def test_rank_buckets_and_mean_distribution():
    assert [rank_bucket(r) for r in (2, 3, 5, 6, 10, 11, 500)] == ["2", "3", "5", "6-10", "6-10", ">10", ">10"]
    a = {"2": 1.0, "3": 0.0, "4": 0.0, "5": 0.0, "6-10": 0.0, ">10": 0.0}
    b = {"2": 0.5, "3": 0.0, "4": 0.0, "5": 0.0, "6-10": 0.0, ">10": 0.5}
    m = mean_rank_distribution([a, b, {k: None for k in a}])
    assert m["2"] == 0.75 and m[">10"] == 0.25
