"""The addv task (variable-length addition on gold traces) and its organism family."""

from __future__ import annotations

import random

import pytest

from forklens.errors import ConfigError
from forklens.organisms import get_family
from forklens.tasks import get_task
from forklens.tasks.addv import AddvConfig, AddvTask, digit_match, gold_trace, n_carries
from forklens.tasks.arith_notation import NotationArithTask, to_letters


def test_gold_trace_unpadded_and_correct():
    assert gold_trace(4739, 85) == "9+5+0=14;3+8+1=12;7+0+1=08;4+0+0=04;A=4824"
    assert gold_trace(5, 7) == "5+7+0=12;A=12"
    assert n_carries(4739, 85) == 2 and n_carries(5, 7) == 1 and n_carries(123, 456) == 0


def test_digit_match_is_dense_and_exact_only_at_the_answer():
    assert digit_match("4824", "4824") == 1.0 and digit_match("04824", "4824") == 1.0
    assert digit_match("4834", "4824") == 0.75  # one wrong digit of four
    assert digit_match("824", "4824") == 0.75 and digit_match("14824", "4824") == 0.8  # a missing / extra digit
    assert digit_match("1111", "4824") == 0.0 and digit_match("0", "0") == 1.0
    with pytest.raises(ValueError, match="non-negative integers"):
        digit_match("-3", "3")
    t = AddvTask(AddvConfig(n_test=20))
    p = t.problems("test")[0]
    assert t.digit_reward(p, t.expert_response(p)) == 1.0 == t.verify(p, t.expert_response(p))
    assert t.digit_reward(p, "no answer") == 0.0
    wrong = str(int(p.answer) + 1)
    assert t.verify(p, f"A={wrong}") == 0.0 < t.digit_reward(p, f"A={wrong}") == digit_match(wrong, p.answer) < 1.0


def test_lengths_splits_and_verifier():
    t = get_task("addv", AddvConfig(min_digits=2, max_digits=4, n_test=50))
    test, train = t.problems("test"), t.problems("train")
    assert len(test) == 50 and not {p.id for p in test} & {p.id for p in train}
    assert all(2 <= len(str(p.meta[k])) <= 4 for p in test + train for k in ("a", "b"))
    assert {p.meta["digits"] for p in train} == {2, 3, 4}
    p = test[0]
    assert t.verify(p, t.expert_response(p)) == 1.0
    assert t.verify(p, f"A={int(p.answer) + 1}") == 0.0 and t.verify(p, "no answer") == 0.0


def test_pretraining_lengths_are_separate():
    t = AddvTask(AddvConfig(min_digits=1, max_digits=5, pretrain_max_digits=3))
    rng = random.Random(0)
    ops = [t.teacher_example(rng)[0][:-1].split("+") for _ in range(300)]
    assert max(len(x) for pair in ops for x in pair) == 3
    with pytest.raises(ConfigError):
        AddvTask(AddvConfig(min_digits=4, max_digits=3))
    with pytest.raises(ConfigError):
        AddvTask(AddvConfig(pretrain_min_digits=4, pretrain_max_digits=2))


def test_notation_task_reads_both_notations():
    t = NotationArithTask(expert_notation="letters")
    p = t.problems("test")[0]
    assert set(t.expert_response(p)) <= set("abcdefghij+=;A")
    assert t.verify(p, t.expert_response(p)) == 1.0
    assert t.verify(p, "A=" + p.answer.zfill(4)) == 1.0 and t.verify(p, "A=" + to_letters(p.answer)) == 1.0
    with pytest.raises(ConfigError):
        NotationArithTask(expert_notation="roman")


def test_families_registered_with_roles():
    addv, neg = get_family("addv"), get_family("negctl")
    assert {v.role for v in addv.variants.values()} == {"precondition"}
    assert neg.variant("notation").role == "negative-control" and neg.variant("same-notation").role == "consistency"
    cfg = addv.variant_config("length-gen")
    assert cfg.addv.pretrain_range() == (1, 3) and (cfg.addv.min_digits, cfg.addv.max_digits) == (1, 5)
    assert neg.variant_config("unreachable").base.arith.p_drop_carry == 1.0
