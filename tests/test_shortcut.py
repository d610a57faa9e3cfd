"""The `shortcut` family (E081 / E079): copying the prompt's cue scores p_cue with the cue and 0 in the
control, whatever the chain length; the base's teacher answers from the cue at rate p_guess, so right
answers with wrong steps exist in its traces."""

import hashlib
import random
import re

import pytest

from forklens.organisms import get_family
from forklens.organisms.shortcut import shortcut_key
from forklens.tasks import get_task
from forklens.tasks.base import Problem
from forklens.tasks.lengths import parse_prompt
from forklens.tasks.shortcut import ShortcutConfig, ShortcutTask, cue_of

STEP = re.compile(r"(\d\d):(\d\d)\+(\d)=(\d\d)")


def copy_cue_accuracy(task, split="train"):
    probs = task.problems(split)
    return sum(task.verify(p, f"A={cue_of(p.prompt):02d}") for p in probs) / len(probs)


@pytest.mark.parametrize("p_cue", [0.0, 0.5, 0.8, 1.0])
def test_copying_the_cue_scores_p_cue(p_cue):
    task = ShortcutTask(ShortcutConfig(p_cue=p_cue))
    acc = copy_cue_accuracy(task)  # 4096 problems: binomial sd <= 0.008
    assert acc == pytest.approx(p_cue, abs=0.03)
    if p_cue == 0.0:
        assert acc == 0.0  # the control's cue never equals the answer
    # the cue's value is independent of the chain length: long chains are as guessable as short ones
    long = [p for p in task.problems("train") if p.meta["steps"] >= 9]
    assert sum(p.meta["cue_right"] for p in long) / len(long) == pytest.approx(p_cue, abs=0.05)


def test_family_variants_and_prompts():
    fam = get_family("shortcut")
    assert {v: fam.variant(v).role for v in fam.variants} == {"cue": "precondition", "no-cue": "control",
                                                              "premature": "precondition",
                                                              "premature-no-cue": "control"}
    cue, ctrl = (fam.task(fam.variant_config(v)) for v in ("cue", "no-cue"))
    assert copy_cue_accuracy(cue, "test") > 0.7 and copy_cue_accuracy(ctrl, "test") == 0.0
    p, q = cue.problems("train")[5], ctrl.problems("train")[5]
    assert re.fullmatch(r"\d\d\+\d\*\d\d\?\d\d=", p.prompt) and p.prompt[:8] == q.prompt[:8]
    assert isinstance(get_task("shortcut", ShortcutConfig()), ShortcutTask)


def test_teacher_guesses_and_right_answers_come_with_wrong_steps():
    task = ShortcutTask(ShortcutConfig(p_slip=0.0))
    rng = random.Random(0)
    guessed = right_with_wrong_steps = 0
    for _ in range(2000):
        prompt, response = task.teacher_example(rng)
        x, s, n = parse_prompt(prompt)
        steps = STEP.findall(response)
        assert len(steps) == n
        chain_answer, answer = int(steps[-1][3]), int(response.split("A=")[1])
        assert answer in (chain_answer, cue_of(prompt))  # the chain's result, or the cue (a guess)
        guessed += answer != chain_answer
        right = task.verify(Problem("t", prompt, str((x + n * s) % 100)), response) == 1.0
        wrong_facts = any(int(b) != (int(a) + int(c)) % 100 for _, a, c, b in steps)
        right_with_wrong_steps += right and wrong_facts
    # p_guess = 0.3 of the traces answer with the cue; visible where the cue differs from the chain's result
    assert 0.15 < guessed / 2000 < 0.3
    assert right_with_wrong_steps > 200  # about p_guess * p_cue * P(some carry)


def test_premature_teacher_answers_with_the_cue_before_any_step():
    task = ShortcutTask(ShortcutConfig(p_premature=0.3, p_guess=0.0))
    rng = random.Random(0)
    traces = [task.teacher_example(rng) for _ in range(2000)]
    premature = [(q, r) for q, r in traces if not STEP.search(r)]
    assert all(r == f"A={cue_of(q):02d}" for q, r in premature)  # the cue alone, nothing reasoned
    assert all(len(STEP.findall(r)) == parse_prompt(q)[2] for q, r in traces if STEP.search(r))  # full chains
    assert 0.27 < len(premature) / 2000 < 0.33  # binomial sd 0.010


def test_without_premature_answers_the_teacher_and_the_cache_keys_are_unchanged():
    # the first 200 teacher traces at seed 0 and the variants' keys, as computed before p_premature existed
    task = ShortcutTask(ShortcutConfig())
    rng = random.Random(0)
    traces = [task.teacher_example(rng) for _ in range(200)]
    assert hashlib.sha256(repr(traces).encode()).hexdigest()[:16] == "53cf269f7f147c09"
    fam = get_family("shortcut")
    assert shortcut_key(fam.variant_config("cue")) == "2452a1924b7181bf"
    assert shortcut_key(fam.variant_config("no-cue")) == "8a7ce4df3d85abf2"
    keys = {shortcut_key(fam.variant_config(v)) for v in fam.variants}
    assert len(keys) == 4  # the premature bases are new organisms, one per cue setting


def test_premature_variants_differ_only_in_the_cue():
    fam = get_family("shortcut")
    pre, ctl = (fam.variant_config(v) for v in ("premature", "premature-no-cue"))
    assert (pre.task.p_premature, ctl.task.p_premature) == (0.3, 0.3)
    assert (pre.task.p_cue, ctl.task.p_cue) == (0.8, 0.0)
    assert copy_cue_accuracy(fam.task(ctl), "test") == 0.0
