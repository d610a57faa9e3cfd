"""The skill optimiser (arXiv 2605.23904): bounded, gated edits of a skill text for a frozen model."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forklens.errors import ConfigError
from forklens.train.skill_opt import (Edit, SkillOptConfig, apply_edits, edit_budget, optimize_skill,
                                      random_skill)

TARGET = ["carry the one", "write digits right to left", "check the sum"]
NOISE = ["guess", "skip steps", "answer first"]


def score(skill: list[str]) -> float:
    """Rules present from TARGET, minus a penalty per line that is not a rule."""
    return sum(r in skill for r in TARGET) / len(TARGET) - 0.2 * sum(line not in TARGET for line in skill)


def helpful(skill, rejected, rng):
    """Failure-driven proposals: add a missing rule, delete a noise line, then a random noise line."""
    out = [Edit("add", len(skill), r) for r in TARGET if r not in skill]
    out += [Edit("delete", i) for i, line in enumerate(skill) if line not in TARGET][:1]
    out.append(Edit("add", 0, rng.choice(NOISE)))
    return [e for e in out if e not in rejected] or [Edit("add", 0, rng.choice(NOISE))]


def test_edit_budget_is_a_cosine_from_start_to_end():
    assert [edit_budget(s, 5, 4, 2) for s in range(5)] == [4, 4, 3, 2, 2]
    assert edit_budget(3, 5, None, None) is None and edit_budget(0, 1, 4, 2) == 4
    assert [edit_budget(s, 3, 2, None) for s in range(3)] == [2, 2, 2]


def test_gated_bounded_edits_reach_the_target():
    res = optimize_skill(["guess"], helpful, score, SkillOptConfig(steps=6, edits_start=2, edits_end=1))
    assert sorted(res.skill) == sorted(TARGET) and res.score == pytest.approx(1.0)
    scores = [h["score"] for h in res.history]
    assert scores == sorted(scores)  # the gate never lets the score fall
    assert all(h["applied"] <= h["budget"] for h in res.history)
    assert res.evaluations == 1 + sum(1 for h in res.history if h["applied"])


def test_without_the_gate_a_bad_edit_is_kept():
    def noisy(skill, rejected, rng):
        return [Edit("add", 0, "guess")]

    gated = optimize_skill(TARGET, noisy, score, SkillOptConfig(steps=3))
    open_gate = optimize_skill(TARGET, noisy, score, SkillOptConfig(steps=3, gate=False))
    assert gated.skill == TARGET and gated.accepted == 0
    assert open_gate.skill[:3] == ["guess"] * 3 and open_gate.score == pytest.approx(1 - 0.6)


def test_rejected_edits_come_back_as_negative_feedback():
    seen = []

    def proposer(skill, rejected, rng):
        seen.append(list(rejected))
        return [Edit("add", 0, f"noise {len(rejected)}")]

    optimize_skill(TARGET, proposer, score, SkillOptConfig(steps=3, edits_start=1, edits_end=1))
    assert seen == [[], [Edit("add", 0, "noise 0")], [Edit("add", 0, "noise 0"), Edit("add", 0, "noise 1")]]


def test_unbounded_edits_apply_every_proposal():
    res = optimize_skill([], lambda s, r, g: [Edit("add", 0, "a")] * 7, lambda s: len(s),
                         SkillOptConfig(steps=2, edits_start=None, edits_end=None))
    assert [h["applied"] for h in res.history] == [7, 7] and len(res.skill) == 14


@settings(max_examples=60, deadline=None)
@given(lines=st.lists(st.text(max_size=5), max_size=6), index=st.integers(0, 6), text=st.text(max_size=5))
def test_add_then_delete_is_the_identity(lines, index, text):
    i = min(index, len(lines))
    assert apply_edits(apply_edits(lines, [Edit("add", i, text)]), [Edit("delete", i)]) == lines
    if lines:
        j = min(index, len(lines) - 1)
        assert apply_edits(lines, [Edit("replace", j, text)])[j] == text


def test_bad_edits_and_configs_are_clear_errors():
    with pytest.raises(ConfigError, match="out of range for a skill of 1 line"):
        apply_edits(["x"], [Edit("delete", 1)])
    with pytest.raises(ConfigError, match="add, delete or replace"):
        Edit("move", 0)
    with pytest.raises(ConfigError, match="index must be >= 0"):
        Edit("add", -1)
    with pytest.raises(ConfigError, match="steps >= 1"):
        SkillOptConfig(steps=0)
    with pytest.raises(ConfigError, match="edits_start must be >= 1"):
        SkillOptConfig(edits_start=0)
    with pytest.raises(ConfigError, match="non-empty vocabulary"):
        random_skill([], 3, random.Random(0))
    assert random_skill(NOISE, 4, random.Random(1)) == random_skill(NOISE, 4, random.Random(1))
