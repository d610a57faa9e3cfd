"""The arithmetic organism task: traces, verifier, splits, and the noisy teacher's fork rates."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from forklens.tasks.arith import ArithConfig, ArithTask, gold_trace, n_carries, parse_answer, teacher_trace


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5), st.data())
def test_gold_trace_is_correct_and_fixed_width(digits, data):
    a = data.draw(st.integers(0, 10**digits - 1))
    b = data.draw(st.integers(0, 10**digits - 1))
    trace = gold_trace(a, b, digits)
    assert parse_answer(trace) == a + b
    steps = trace.split(";")[:-1]
    assert len(steps) == digits and all(len(s) == 8 for s in steps)
    assert len(trace) == 9 * digits + 2 + digits + 1


def test_worked_example():
    assert gold_trace(347, 485, 3) == "7+5+0=12;4+8+1=13;3+4+1=08;A=0832"
    assert n_carries(347, 485, 3) == 2
    assert n_carries(999, 1, 3) == 2
    assert n_carries(100, 200, 3) == 0


def test_dropped_carry_is_self_consistent_and_wrong():
    rng = random.Random(0)
    t = teacher_trace(347, 485, 3, rng, p_drop_carry=1.0, p_slip=0.0)
    assert t == "7+5+0=12;4+8+0=12;3+4+0=07;A=0722"  # every carry fork takes the wrong branch
    assert parse_answer(t) != 832


def test_teacher_fork_rates():
    rng = random.Random(1)
    drops = forks = 0
    for _ in range(4000):
        a, b = rng.randrange(1000), rng.randrange(1000)
        t = teacher_trace(a, b, 3, rng, p_drop_carry=0.6, p_slip=0.0)
        steps = t.split(";")[:-1]
        for prev, cur in zip(steps, steps[1:]):
            if prev[6] == "1":  # the previous written sum overflowed: a carry fork
                forks += 1
                drops += cur[4] == "0"
    assert abs(drops / forks - 0.6) < 0.03


def test_splits_are_disjoint_and_stable():
    task = ArithTask(ArithConfig(n_test=150))
    test = task.problems("test")
    train = set(p.id for p in task.problems("train"))
    assert len(test) == 150 and not train & {p.id for p in test}
    assert [p.id for p in ArithTask(ArithConfig(n_test=150)).problems("test")] == [p.id for p in test]


def test_verifier():
    task = ArithTask()
    p = task.make_problem(347, 485)
    assert task.verify(p, "7+5+0=12;4+8+1=13;3+4+1=08;A=0832") == 1.0
    assert task.verify(p, "...;A=0822") == 0.0
    assert task.verify(p, "no answer") == 0.0
