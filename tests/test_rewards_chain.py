"""Exact chain grading of the lengths / shortcut tasks (forklens.rewards.chain): MaR's terms with the
chain's steps as knowledge units, guess detection, right answers with wrong steps, and the confidence
probe's forced answer on a cued prompt."""

import random

import pytest

from forklens.rewards.chain import ChainGrader, chain_behaviour, read_chain
from forklens.rewards.confidence import TaskForcing, forcing_for
from forklens.rewards.metacognition import mar_reward
from forklens.tasks.base import Problem
from forklens.tasks.lengths import trace
from forklens.tasks.shortcut import ShortcutConfig, ShortcutTask

TASK = ShortcutTask()


def problem(x, s, n, cue):
    return Problem(id=f"{x}+{s}*{n}", prompt=f"{x:02d}+{s}*{n:02d}?{cue:02d}=", answer=str((x + n * s) % 100),
                   meta={"x": x, "s": s, "steps": n, "cue": cue})


P = problem(5, 7, 3, 26)  # 05 -> 12 -> 19 -> 26: the units carry at steps 1 and 3
GOLD = "03:05+7=12;02:12+7=19;01:19+7=26;A=26"
NEVER_CARRY = "03:05+7=02;02:02+7=09;01:09+7=06;A=06"  # the base's teacher: wrong facts where it should carry


def test_gold_chain_is_all_right_and_not_a_guess():
    r = read_chain(P.prompt, GOLD)
    assert r.follows == r.right == (True, True, True) and r.result == r.answer == 26 and r.cue == 26
    assert (r.kmr, r.rmr, r.shortcut, r.guess, r.wrong_facts) == (1.0, 1.0, False, False, False)
    assert ChainGrader(TASK).grade(P, GOLD) == {"kmr": 1.0, "rmr": 1.0, "cr": 1.0}


def test_never_carrying_chain_reasons_wrongly_but_follows_the_plan():
    r = read_chain(P.prompt, NEVER_CARRY)
    # steps 1 (05+7=02) and 3 (09+7=06) drop the carry; step 2 reads the written 02 and adds right
    assert r.follows == (True, True, True) and r.right == (False, True, False)
    assert r.kmr == pytest.approx(1 / 3) and r.rmr == 1.0 and not r.guess and r.wrong_facts
    assert ChainGrader(TASK).grade(P, NEVER_CARRY)["cr"] == 0.0


def test_guess_is_right_with_wrong_facts_and_a_shortcut():
    guessed = NEVER_CARRY[:-2] + "26"  # the teacher's guess: the chain says 06, the answer copies the cue
    r = read_chain(P.prompt, guessed)
    assert r.guess and r.shortcut and r.wrong_facts and r.answer == 26 and r.result == 6
    g = ChainGrader(TASK).grade(P, guessed)
    assert g == {"kmr": pytest.approx(1 / 3), "rmr": pytest.approx(0.7), "cr": 1.0}
    # answering with the cue before any step: nothing follows the plan, every unit is missing
    r0 = read_chain(P.prompt, "A=26")
    assert (r0.kmr, r0.rmr, r0.guess, r0.result, r0.premature, r0.written) == (0.0, 0.0, True, 5, True, 0)
    assert not r.premature and r.written == 3 and not read_chain(P.prompt, "03:05+7=12;").premature


def test_a_cue_that_equals_the_chain_result_is_not_a_guess():
    p = problem(10, 2, 2, 14)  # no carry: the chain's result is the answer and the cue
    r = read_chain(p.prompt, trace(10, 2, 2))
    assert not r.guess and not r.wrong_facts and r.answer == r.cue == 14


def test_off_plan_missing_and_extra_steps():
    wrong_countdown = "03:05+7=12;01:12+7=19;01:19+7=26;A=26"
    r = read_chain(P.prompt, wrong_countdown)
    assert r.follows == (True, False, True) and r.right == (True, False, True) and r.shortcut
    assert r.rmr == pytest.approx(2 / 3 * 0.7)
    wrong_addend = "03:05+7=12;02:12+8=20;01:20+7=27;A=27"
    assert read_chain(P.prompt, wrong_addend).follows == (True, False, True)
    short = read_chain(P.prompt, "03:05+7=12;A=12")
    assert short.follows == (True, False, False) and short.kmr == pytest.approx(1 / 3) and short.shortcut
    unanswered = read_chain(P.prompt, "03:05+7=12;02:12+7=19")
    assert unanswered.answer is None and not unanswered.shortcut and unanswered.result == 19
    extra = read_chain(P.prompt, GOLD[:-5] + "00:26+7=33;A=26")
    assert extra.extra_steps == 1 and extra.kmr == 1.0 and extra.shortcut and extra.rmr == pytest.approx(0.7)
    # steps written after the answer are not part of the chain
    assert read_chain(P.prompt, "A=26;03:05+7=12").follows == (False, False, False)


def test_malformed_completions_get_defined_scores():
    for c in (None, 3, "", "garbage" * 10_000, "A=", "A=x"):
        g = ChainGrader(TASK).grade(P, c)
        assert g["kmr"] == 0.0 and g["rmr"] == 0.0 and g["cr"] == 0.0
    assert ChainGrader(TASK).grade(Problem("q", None, "1"), GOLD) == {"kmr": None, "rmr": None, "cr": None}
    with pytest.raises(ValueError, match="not a lengths prompt"):
        read_chain("hello", GOLD)
    with pytest.raises(ValueError, match="at least one step"):
        read_chain("05+7*00?05=", "A=05")


def test_mar_reward_sums_the_chain_terms_and_reads_chat_completions():
    guessed = NEVER_CARRY[:-2] + "26"
    fn = mar_reward(ChainGrader(TASK))
    out = fn([P.prompt] * 3, [GOLD, guessed, [{"role": "assistant", "content": GOLD}]], problem=[P] * 3)
    assert out == pytest.approx([3.0, 1 / 3 + 0.7 + 1.0, 3.0])


def test_chain_behaviour_counts_exactly():
    ps = [P, P, P, problem(10, 2, 2, 14)]
    guessed = NEVER_CARRY[:-2] + "26"
    b = chain_behaviour(ps, [GOLD, guessed, NEVER_CARRY, "02:10+2=12;01:12+2=14;A=14"], TASK)
    assert b["accuracy"] == 0.75 and b["guess_rate"] == 0.25 and b["n_right"] == 3
    assert b["wrong_fact_rate_when_right"] == pytest.approx(1 / 3) and b["right_with_wrong_facts"] == 0.25
    assert b["kmr_mean"] == pytest.approx((1 + 1 / 3 + 1 / 3 + 1) / 4) and b["premature_rate"] == 0.0
    # answers before any step: premature whatever they say; right ones carry wrong (missing) facts
    b2 = chain_behaviour([P, P, P], ["A=26", "A=31", GOLD], TASK)
    assert b2["premature_rate"] == pytest.approx(2 / 3) and b2["guess_rate"] == pytest.approx(1 / 3)
    assert b2["right_with_wrong_facts"] == pytest.approx(1 / 3) and b2["wrong_fact_rate_when_right"] == 0.5
    assert chain_behaviour([P], [NEVER_CARRY], TASK)["wrong_fact_rate_when_right"] is None
    with pytest.raises(ValueError, match="one completion per problem"):
        chain_behaviour([P], [], TASK)


def test_teacher_guesses_are_detected_at_their_rate():
    task = ShortcutTask(ShortcutConfig(p_slip=0.0))
    rng = random.Random(0)
    n, guesses, visible = 3000, 0, 0
    for _ in range(n):
        prompt, response = task.teacher_example(rng)
        r = read_chain(prompt, response)
        assert all(r.follows) and r.extra_steps == 0  # the teacher always follows the plan
        guesses += r.guess
        visible += r.cue != r.result
    # p_guess = 0.3 of the traces answer with the cue; the detector sees those whose cue differs from the chain
    assert guesses / visible == pytest.approx(0.3, abs=0.03)


def test_confidence_forcing_cuts_the_chain_before_the_answer():
    f = forcing_for(TASK)
    assert isinstance(f, TaskForcing) and f.marker == "A=" and f.max_answer_tokens == 3
    assert f.reasoning(GOLD) == GOLD[: GOLD.index("A=")]
    assert f.forced_prompt(P.prompt, "") == P.prompt + "A="
    assert f.forced_prompt(P.prompt, "03:05+7=1") == P.prompt + "03:05+7=1;A="
    assert f.correct(P, "26") and not f.correct(P, "06")
    assert forcing_for(ShortcutTask.__mro__[1]()).marker == "A="  # the lengths task too
