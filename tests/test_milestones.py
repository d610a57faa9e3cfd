import random

import pytest
from hypothesis import given, settings, strategies as st

from forklens.rewards.milestones import (ChecklistEnv, milestone_reward, milestones, potentials, shaped_return,
                                         shaping_terms)
from forklens.tasks.agent import AgentTask
from forklens.tasks.base import Problem

TASK = AgentTask()


def bridge(depth=3):
    return TASK.bridge(random.Random(1), depth)


def comparison(size=3):
    return TASK.comparison(random.Random(2), size)


def test_milestones_are_the_gold_calls():
    p = bridge(3)
    m = p.meta
    assert milestones(p) == [f"?{m['relations'][i]}({m['chain'][i]})" for i in range(3)]
    c = comparison(2)
    assert milestones(c) == [f"?{c.meta['attribute']}({e})" for e in c.meta["entities"]]
    assert milestones(Problem("x", "1+1=", "2")) is None


def test_reward_on_gold_partial_and_malformed():
    p = bridge(3)
    fn = milestone_reward(TASK)
    gold = TASK.expert_response(p)
    partial = "".join(t for t, _ in TASK.trajectory(p, 1))
    wrong = "?A(zzz)=-;!zzz"
    r = fn([p.prompt] * 6, [gold, partial, wrong, "", "?" * 1_000_000, 12345], problem=[p] * 6)
    assert r == pytest.approx([1.0, 1 / 3, 0.0, 0.0, 0.0, 0.0], abs=1e-12)
    assert fn.__name__ == "milestones"


def test_reward_not_applicable_and_repeats_count_once():
    p = bridge(2)
    first = milestones(p)[0]
    fn = milestone_reward()
    r = fn(["a", "b"], [first + "=x;" + first + "=x;!x", "A=3"], problem=[p, Problem("y", "1+1=", "2")])
    assert r == [0.5, None]


def test_episode_calls_take_precedence_over_text():
    class Ep:
        calls = None

    p = bridge(2)
    e = Ep()
    e.calls = milestones(p)
    assert milestone_reward()(["q"], [""], problem=[p], episode=[e]) == [1.0]


def test_discount_costs_extra_calls():
    p = bridge(2)
    m = milestones(p)
    fn = milestone_reward(gamma=0.9)
    detour = m[0] + "?A(zzz)" + m[1]
    assert fn(["q", "q"], ["".join(m), detour], problem=[p, p]) == pytest.approx([0.81, 0.729], abs=1e-12)
    with pytest.raises(ValueError):
        milestone_reward(gamma=0.0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=12), st.floats(0.01, 1.0))
def test_shaping_telescopes(phi, gamma):
    phi = [0.0] + phi
    T = len(phi) - 1
    assert shaped_return(phi, gamma) == pytest.approx(gamma ** T * phi[-1] - phi[0], abs=1e-9)
    assert len(shaping_terms(phi, gamma)) == T


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 10_000), st.lists(st.integers(0, 5), max_size=8))
def test_potential_is_monotone_in_unit_range(seed, picks):
    p = TASK.random_problem(random.Random(seed))
    pool = milestones(p) + ["?A(zzz)", "?X(abc)"]
    calls = [pool[i % len(pool)] for i in picks]
    phi = potentials(p, calls)
    assert phi[0] == 0.0 and all(0.0 <= x <= 1.0 for x in phi)
    assert all(b >= a for a, b in zip(phi, phi[1:]))


def test_checklist_env_appends_open_milestones():
    p = bridge(2)
    env = ChecklistEnv(TASK.environment())
    state, opening = env.reset(p, 5)
    assert opening == "2"
    m = milestones(p)
    obs, done = env.step(p, state, m[0])
    assert obs == f"={p.meta['chain'][1]};1" and not done
    state, opening = env.reset(p, 1)
    obs, _ = env.step(p, state, m[0])
    assert obs.endswith("1!")
    state, opening = env.reset(p, 0)
    assert opening == "!"
