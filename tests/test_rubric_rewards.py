"""Rubric rewards (arXiv 2605.03871): weighted checks, the weak judge, the TRL-signature reward and the
temporal-contrast reward of the rubric generator."""

from __future__ import annotations

import pytest

from forklens.rewards.rubric import (Check, Judge, Rubric, TemporalContrastReward, fixed_rubrics, from_prompt_check,
                                     length_check, nondecreasing_check, position_check, position_rubric,
                                     rubric_reward)
from forklens.tasks.base import Problem


def test_rubric_validates_weights():
    c = position_check(0, "1")
    with pytest.raises(ValueError, match="one weight per check"):
        Rubric((c,), ())
    with pytest.raises(ValueError, match=">= 0"):
        Rubric((c, c), (1.0, -0.5))
    with pytest.raises(ValueError, match="all 0"):
        Rubric((c,), (0.0,))
    assert Rubric.equal([c, c, c, c]).weights == (0.25, 0.25, 0.25, 0.25)


def test_judge_scores_the_weighted_fraction_of_evaluable_checks():
    rubric = Rubric((position_check(0, "0"), position_check(1, "5"), length_check(3)), (0.5, 0.3, 0.2))
    judge = Judge()
    assert judge.score("x", "059", rubric) == pytest.approx(1.0)
    assert judge.score("x", "069", rubric) == pytest.approx(0.7)
    assert judge.score("x", "16", rubric) == pytest.approx(0.0)
    # a judge that can only evaluate position checks renormalises over them
    assert Judge(kinds=("position",)).score("x", "0599", rubric) == pytest.approx(1.0)
    assert Judge(kinds=("position",)).score("x", "069", rubric) == pytest.approx(0.5 / 0.8)
    assert Judge(kinds=("nothing",)).score("x", "059", rubric) == 0.0
    assert judge.score("x", "059", Rubric()) == 0.0
    assert judge.prefers("x", "059", "069", rubric) == 1.0
    assert judge.prefers("x", "069", "059", rubric) == 0.0
    assert judge.prefers("x", "059", "059", rubric) == 0.5


def test_judge_noise_flips_outcomes_at_its_rate():
    with pytest.raises(ValueError, match="noise"):
        Judge(noise=0.6)
    rubric = Rubric.equal([position_check(0, "1")])
    judge = Judge(noise=0.2, seed=3)
    mean = sum(judge.score("x", "1", rubric) for _ in range(5000)) / 5000
    assert mean == pytest.approx(0.8, abs=0.02)


def test_generic_checks():
    assert nondecreasing_check()("", "01159") and not nondecreasing_check()("", "0191")
    assert from_prompt_check(">")("391>", "139") and not from_prompt_check(">")("391>", "13>")
    assert length_check(2)("", "ab") and not length_check(2)("", "abc")
    with pytest.raises(ValueError):
        position_check(-1, "a")
    c = Check("always", lambda x, y: True)
    assert c("a", "b") is True and c.kind == "generic"


def test_position_rubric_reads_a_generator_sample():
    r = position_rubric("0x35", "0123456789")
    assert r.names() == ["at0=0", "at2=3", "at3=5"]
    assert r.weights == pytest.approx((1 / 3,) * 3)
    assert position_rubric("0123", "0123456789", max_checks=2).names() == ["at0=0", "at1=1"]
    assert position_rubric("", "0123456789").checks == ()


def test_rubric_reward_has_trl_signature_and_one_rubric_per_prompt():
    calls = []

    def rubrics_for(problems):
        calls.append([p.id for p in problems])
        return [position_rubric(p.answer, "0123456789") for p in problems]

    fn = rubric_reward(rubrics_for, Judge(), name="r")
    probs = [Problem("a", "21>", "12"), Problem("a", "21>", "12"), Problem("b", "93>", "39")]
    out = fn(["21>", "21>", "93>"], ["12", "13", [{"role": "assistant", "content": "39"}]], problem=probs)
    assert out == [1.0, 0.5, 1.0]
    assert calls == [["a", "b"]]
    assert fn.__name__ == "r" and set(fn.last_rubrics) == {"a", "b"}
    fixed = rubric_reward(fixed_rubrics(Rubric.equal([length_check(2)])), Judge())
    assert fixed(["21>"], ["123"], problem=probs[:1]) == [0.0]
    bad = rubric_reward(lambda problems: [], Judge())
    with pytest.raises(ValueError, match="0 rubrics for 1 problems"):
        bad(["21>"], ["12"], problem=probs[:1])


def test_temporal_contrast_rewards_rubrics_that_prefer_the_newer_answer():
    pairs = lambda problems: [("123", "129")] * len(problems)  # noqa: E731  (y+, y-)
    parse = lambda text: position_rubric(text, "0123456789")  # noqa: E731
    reward = TemporalContrastReward(pairs, Judge(), parse)
    probs = [Problem("p", "321>", "123")] * 4
    # a rubric the newer answer meets and the older does not: 1; the reverse: 0; a rubric blind to the
    # difference (a tie): 0
    assert reward(None, ["__3", "__9", "12", ""], problem=probs) == [1.0, 0.0, 0.0, 0.0]
    assert reward.stats == {"pairs": 1, "differ": 1}
    shuffled = TemporalContrastReward(pairs, Judge(), parse, shuffle=True, seed=1)
    got = [shuffled(None, ["__3"], problem=probs[:1])[0] for _ in range(2000)]
    assert sum(got) / len(got) == pytest.approx(0.5, abs=0.04)
