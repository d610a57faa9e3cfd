"""Exploration interleaving: checkpoint coverage and the 5:1 schedule."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forklens.policy import Policy
from forklens.policy.episodes import Episode
from forklens.tasks.agent import (AgentConfig, AgentTask, checkpoints, coverage, coverage_reward,
                                  exploration_problem, kb_entity)
from forklens.train.sources import GRPOSource, SamplingConfig
from forklens.train.exploration import ExplorationConfig, ExplorationInterleavedSource, is_exploration_step
from tests.conftest import make_tiny

TASK = AgentTask(AgentConfig(n_train=12, n_test=4))


def test_coverage_hand_built_bridge_episode():
    p = TASK.bridge(random.Random(0), depth=2)
    start = p.meta["start"]
    assert len(checkpoints(p)) == 9  # 6 relations + 3 attributes of the one listed entity
    nxt = kb_entity(p.meta["kb_seed"], "A", start)
    calls = [f"?A({start})", f"?A({start})", f"?X({start})", f"?B({nxt})", f"?Q({start})", "?A(zz)"]
    # distinct checkpoints visited: A(start), X(start); the repeat, the second hop, an unknown name and a
    # malformed entity count for nothing
    assert coverage(p, calls) == pytest.approx(2 / 9)
    assert coverage(p, []) == 0.0
    every = [f"?{r}({start})" for r in "ABCDEFXYZ"]
    assert coverage(p, every) == 1.0


def test_coverage_hand_built_comparison_episode():
    p = TASK.comparison(random.Random(1), size=3)
    a, b, c = p.meta["entities"]
    assert len(checkpoints(p)) == 27
    assert coverage(p, [f"?X({a})", f"?Y({b})", f"?Y({b})", f"?F({c})"]) == pytest.approx(3 / 27)


def test_exploration_prompt_and_reward_use_executed_calls():
    p = TASK.comparison(random.Random(1), size=2)
    e = exploration_problem(p)
    a, b = p.meta["entities"]
    assert e.prompt == f"?{a},{b}>" and e.answer == "" and e.meta["kb_seed"] == p.meta["kb_seed"]
    assert set(e.prompt) <= set(TASK.alphabet)
    ep = Episode(problem_index=0, prompt_ids=[1], calls=[f"?X({a})"])
    text = f"?X({a})=3;?Y({b})=1;!1"  # the second call was written but (say) not executed
    assert coverage_reward([e.prompt], [text], problem=[e], episode=[ep]) == [pytest.approx(1 / 18)]
    assert coverage_reward([e.prompt], [text], problem=[e]) == [pytest.approx(2 / 18)]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), calls=st.lists(st.tuples(st.sampled_from("ABCDEFXYZQ"), st.integers(0, 3)),
                                                   max_size=12))
def test_coverage_equals_a_set_count(seed, calls):
    p = TASK.random_problem(random.Random(seed))
    ents = ([p.meta["start"]] if p.meta["type"] == "bridge" else p.meta["entities"]) + ["zzz"]
    text_calls = [f"?{name}({ents[min(i, len(ents) - 1)]})" for name, i in calls]
    points = set(checkpoints(p))
    seen = {(name, ents[min(i, len(ents) - 1)]) for name, i in calls} & points
    assert coverage(p, text_calls) == pytest.approx(len(seen) / len(points))


def test_schedule_is_five_task_steps_then_one_exploration_step():
    assert [is_exploration_step(s, 5) for s in range(12)] == [False] * 5 + [True] + [False] * 5 + [True]
    assert all(is_exploration_step(s, 0) for s in range(3))


def test_interleaved_source_logs_coverage_of_both_kinds():
    model, tok = make_tiny("llama", seed=2, alphabet=TASK.alphabet, hidden=32, max_pos=96)
    pol = Policy(model, tok)
    sc = SamplingConfig(prompts_per_step=2, group_size=2, T=2, turn_tokens=8)
    src = ExplorationInterleavedSource(GRPOSource(TASK, TASK.problems("train"), sc, seed=0),
                                       ExplorationConfig(task_steps=1, T=3))
    _, task_info = src.batch(0, pol)
    batch, explore_info = src.batch(1, pol)
    assert task_info["explore_step"] == 0.0 and "coverage_task" in task_info and "coverage_explore" not in task_info
    assert explore_info["explore_step"] == 1.0 and "coverage_explore" in explore_info
    chosen = src.explore_source.last_chosen
    assert all(p.prompt.startswith("?") and p.id.endswith("-explore") for p in chosen)
    eps = src.explore_source.last_samples.episodes
    expected = [coverage(chosen[i // 2], e.calls) for i, e in enumerate(eps)]
    assert batch.rewards.tolist() == pytest.approx(expected)
    assert explore_info["coverage_explore"] == pytest.approx(sum(expected) / len(expected))
    assert all(len(e.calls) <= 3 for e in eps)
