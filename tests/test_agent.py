"""The agent organism: questions, per-question knowledge bases, the tool environment, trajectories, verifier."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forklens.tasks.agent import (
    ANSWER_MARKER,
    AgentConfig,
    AgentTask,
    ToolEnv,
    kb_entity,
    kb_value,
    lookup,
    parse_answer,
    tool_calls,
)


def run_env(task, problem, T, turns):
    """Drive the environment with scripted model turns; return the transcript and the final state."""
    env = task.environment()
    state, text = env.reset(problem, T)
    for turn in turns:
        text += turn
        obs, done = env.step(problem, state, turn)
        text += obs
        if done:
            break
    return text, state


def test_splits_are_fixed_stratified_and_disjoint():
    task = AgentTask(AgentConfig(n_train=40, n_test=24))
    train, test = task.problems("train"), task.problems("test")
    assert [p.id for p in train] == [p.id for p in AgentTask(AgentConfig(n_train=40, n_test=24)).problems("train")]
    assert [p.prompt for p in test] == [p.prompt for p in AgentTask(AgentConfig(n_train=40, n_test=24)).problems("test")]
    assert len(train) == 40 and len(test) == 24
    assert len({p.id for p in train + test}) == 64
    assert not {p.meta["kb_seed"] for p in train} & {p.meta["kb_seed"] for p in test}
    kinds = Counter((p.meta["type"], p.meta["depth"]) for p in test)
    # 24 questions: 3/4 bridge over 4 depths (4.5 each), 1/4 comparison over 2 sizes (3 each)
    assert kinds[("comparison", 2)] == 3 and kinds[("comparison", 3)] == 3
    assert sum(kinds[("bridge", d)] for d in (1, 2, 3, 4)) == 18
    assert all(kinds[("bridge", d)] in (4, 5) for d in (1, 2, 3, 4))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), depth=st.integers(1, 5))
def test_bridge_question_invariants(seed, depth):
    task = AgentTask()
    p = task.bridge(random.Random(seed), depth)
    m = p.meta
    assert p.prompt == m["start"] + "." + ".".join(m["relations"]) + ">"
    assert len(m["chain"]) == depth + 1 and len(set(m["chain"])) == depth + 1
    for i, r in enumerate(m["relations"]):  # every hop is one lookup in the question's own knowledge base
        assert lookup(m["kb_seed"], r, m["chain"][i]) == m["chain"][i + 1]
    assert p.answer == m["chain"][-1]
    assert p.answer not in p.prompt  # the answer is not in the question: it has to be looked up


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), size=st.integers(2, 4))
def test_comparison_question_invariants(seed, size):
    task = AgentTask()
    p = task.comparison(random.Random(seed), size)
    m = p.meta
    values = [kb_value(m["kb_seed"], m["attribute"], e) for e in m["entities"]]
    assert values == m["values"] and values.count(max(values)) == 1
    assert len(set(m["entities"])) == size
    assert p.answer == str(values.index(max(values)) + 1)  # the winner's 1-based position
    assert p.prompt == f"^{m['attribute']}(" + ",".join(m["entities"]) + ")>"


def test_knowledge_base_is_per_question():
    # the same (relation, entity) maps to different entities in different knowledge bases: nothing to memorise
    values = {kb_entity(seed, "A", "abc") for seed in range(50)}
    assert len(values) > 45
    assert kb_entity(7, "A", "abc") == kb_entity(7, "A", "abc")
    assert lookup(7, "X", "abc") in set("0123456789")
    assert lookup(7, "Q", "abc") is None and lookup(7, "A", "ab") is None and lookup(7, "A", "ABC") is None


def test_verifier():
    task = AgentTask()
    p = task.bridge(random.Random(1), 2)
    a = p.answer
    assert task.verify(p, f"?A(xyz)=abc;!{a}") == 1.0
    assert task.verify(p, f"!{a}") == 1.0
    assert task.verify(p, f"!{a} ") == 1.0  # trailing whitespace from decoding is ignored
    assert task.verify(p, f"!{a}x") == 0.0
    assert task.verify(p, f"!{a[:-1]}") == 0.0
    assert task.verify(p, f"!{a})") == 0.0
    assert task.verify(p, f"!{a};?A(abc)") == 0.0  # the answer must end the transcript
    assert task.verify(p, a) == 0.0  # no answer marker
    assert task.verify(p, "") == 0.0
    assert parse_answer("=zzz;!qwe") == "qwe" and parse_answer("=7;!2") == "2"
    assert parse_answer("!2a") is None
    q = task.comparison(random.Random(2), 3)
    assert task.verify(q, "?X(abc)=1;!" + q.answer) == 1.0
    assert task.verify(q, "!" + str(4 - int(q.answer) if q.answer != "2" else 1)) == 0.0
    assert tool_calls("?A(qwe)=rty;?B(rty)=-;!x") == ["?A(qwe)", "?B(rty)"]


def test_environment_appends_observations_and_forces_the_answer_at_the_cap():
    task = AgentTask()
    p = task.bridge(random.Random(3), 3)
    s, c = p.meta["start"], p.meta["chain"]
    r = p.meta["relations"]
    # T = 3: three lookups, the third observation carries the forced answer marker
    text, state = run_env(task, p, 3, [f"?{r[0]}({s})", f"?{r[1]}({c[1]})", f"?{r[2]}({c[2]})", c[3]])
    assert text == f"?{r[0]}({s})={c[1]};?{r[1]}({c[1]})={c[2]};?{r[2]}({c[2]})={c[3]};!{c[3]}"
    assert state.forced and len(state.calls) == 3
    assert task.verify(p, text) == 1.0
    # T = 1: the answer is forced after the first observation; a further call is taken as the answer turn
    text, state = run_env(task, p, 1, [f"?{r[0]}({s})", f"?{r[1]}({c[1]})"])
    assert text == f"?{r[0]}({s})={c[1]};!?{r[1]}({c[1]})"
    assert state.calls == [f"?{r[0]}({s})"]
    assert task.verify(p, text) == 0.0
    # T = 0: the marker follows the prompt, no tool
    env = task.environment()
    state, opening = env.reset(p, 0)
    assert opening == ANSWER_MARKER and state.forced
    assert env.step(p, state, "?A(abc)") == ("", True)
    # a voluntary answer before the cap ends the episode without an observation
    text, state = run_env(task, p, 5, [f"?{r[0]}({s})", f"!{c[1]}"])
    assert text == f"?{r[0]}({s})={c[1]};!{c[1]}" and not state.forced
    # malformed or unknown calls get the unknown observation and still count as a round
    text, state = run_env(task, p, 2, ["?Q(abc)", "?A(ab)"])
    assert text == "?Q(abc)=-;?A(ab)=-;!"
    with pytest.raises(ValueError):
        ToolEnv().reset(p, -1)


def test_trajectories_gold_and_teacher():
    task = AgentTask()
    rng = random.Random(0)
    p = task.bridge(rng, 3)
    gold = task.gold_trajectory(p)
    text = "".join(t for t, _ in gold)
    assert task.verify(p, text) == 1.0 and text == task.expert_response(p)
    assert [env for _, env in gold] == [False, True] * 3 + [False]
    assert len(tool_calls(text)) == 3
    # an early stop answers with the last entity seen (the sub-question's answer): wrong
    short = "".join(t for t, _ in task.trajectory(p, 1))
    assert short.endswith("!" + p.meta["chain"][1]) and task.verify(p, short) == 0.0
    q = task.comparison(rng, 3)
    assert task.verify(q, task.expert_response(q)) == 1.0
    assert tool_calls(task.expert_response(q)) == [f"?{q.meta['attribute']}({e})" for e in q.meta["entities"]]
    # the teacher: the full chain with probability p_continue ** depth, always self-consistent
    full = Counter()
    for _ in range(4000):
        segs = task.teacher_trajectory(p, rng)
        t = "".join(s for s, _ in segs)
        calls = tool_calls(t)
        assert calls == tool_calls(text)[: len(calls)]
        full[len(calls)] += 1
        assert task.verify(p, t) == float(len(calls) == 3)
    assert abs(full[3] / 4000 - 0.5 ** 3) < 0.025
    assert abs(full[0] / 4000 - 0.5) < 0.04
    # comparisons: listed order; an early stop answers with the position of the best entity seen (1 before any)
    calls = {tuple(tool_calls("".join(s for s, _ in task.teacher_trajectory(q, rng)))) for _ in range(400)}
    listed = tuple(f"?{q.meta['attribute']}({e})" for e in q.meta["entities"])
    assert calls == {listed[:m] for m in range(4)}
    vals = q.meta["values"]
    assert task.trajectory(q, 0)[-1][0] == "!1"
    assert task.trajectory(q, 1)[-1][0] == "!1"
    assert task.trajectory(q, 2)[-1][0] == "!" + ("1" if vals[0] >= vals[1] else "2")
    assert task.trajectory(q, 3)[-1][0] == "!" + q.answer


def test_trajectory_is_in_the_alphabet():
    task = AgentTask()
    rng = random.Random(5)
    for _ in range(50):
        prompt, segs = task.teacher_example(rng)
        assert set(prompt + "".join(s for s, _ in segs)) <= set(task.alphabet)
