"""The tool's negative control (issue 15 part 2): forklens must say "no" when the tuned model's behaviour
is not in the base, and "yes" on a planted-fork pair built the same way, so the test fails if the tool
always says one thing.

Both pairs share one tiny base (the planted arith organism, carry dropped with p = 0.6, with the
letter-aware tokenizer of :mod:`forklens.tasks.arith_notation`); each tuned model is the base SFT'd
on gold traces, in letters (``notation``) or in digits (``same-notation``).
"""

from __future__ import annotations

import pytest

from forklens.analysis.diff import run_diff
from forklens.analysis.fork_stats import fork_stats, read_token_rows
from forklens.analysis.intervene import parse_gate, run_intervention
from forklens.organisms import get_family
from forklens.organisms.negctl import build_negctl_base, negctl_task, tune_negctl
from forklens.policy import Policy

pytestmark = pytest.mark.slow  # one base (300 steps) and two SFT runs (150 steps): 24 min on 2 heavily shared cores

TINY = ["base.model.hidden_size=64", "base.model.intermediate_size=128"]  # 300 pretraining + 150 SFT steps
MAX_NEW = 40


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("negctl")
    fam = get_family("negctl")
    out = {}
    for variant in ("notation", "same-notation"):
        cfg = fam.variant_config(variant, overrides=TINY)
        if not (root / "base").exists():
            build_negctl_base(cfg, root / "base", use_cache=False, progress=False)
        tune_negctl(cfg, root / "base", root / variant, seed=0)
        task = negctl_task(cfg)
        base, tuned = Policy.load(root / "base"), Policy.load(root / variant)
        test = task.problems("test")[:40]
        by_id = {p.id: p for p in test}
        records = [{"id": p.id, "prompt": p.prompt, "answer": p.answer} for p in test]

        def verify(rec, text, task=task, by_id=by_id):
            return task.verify(by_id[rec["id"]], text) > 0

        run_diff(base, tuned, records[:20], max_new_tokens=MAX_NEW, out_dir=root / f"diff-{variant}", progress=False,
                 verifier=verify)
        forks = fork_stats(read_token_rows(root / f"diff-{variant}" / "tokens.jsonl"))
        inter = run_intervention(base, tuned, records, verify, [parse_gate("oracle")], max_new_tokens=MAX_NEW)
        out[variant] = (forks, inter)
    return out


def test_notation_pair_is_shifted_and_oracle_recovers_little(pairs):
    forks, inter = pairs["notation"]
    acc = inter["accuracy"]
    assert acc["rl"] > acc["base"] + 0.2  # the tuned model does have a gain to recover
    assert forks["n_disagreement"] > 0
    assert forks["share_shifted"] > 0.7  # letters are far outside the base top-5
    assert inter["gain_recovered"]["oracle"] < 0.2


def test_same_notation_pair_is_reranked_and_oracle_recovers(pairs):
    forks, inter = pairs["same-notation"]
    acc = inter["accuracy"]
    assert acc["rl"] > acc["base"] + 0.2
    assert forks["share_in_topk"] > 0.85  # the right carry is the base's second choice
    assert forks["rank_counts"]["2"] / forks["n_disagreement"] > 0.8
    assert forks["entropy_ratio"] > 2.0
    assert inter["gain_recovered"]["oracle"] > 0.8


def test_the_two_verdicts_differ(pairs):
    """The discriminating check: the same tool, the same base, opposite verdicts."""
    (f_no, i_no), (f_yes, i_yes) = pairs["notation"], pairs["same-notation"]
    assert f_no["share_in_topk"] < 0.3 < 0.85 < f_yes["share_in_topk"]
    assert i_no["gain_recovered"]["oracle"] + 0.6 < i_yes["gain_recovered"]["oracle"]
