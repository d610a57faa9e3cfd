"""The agent-horizon and agent-tools families and the flipped (noisy) reward: each variant builds its
questions and the property its role rests on holds."""

from __future__ import annotations

import math
import random

import pytest

from forklens.organisms import get_family
from forklens.organisms.agent import agent_organism_key
from forklens.organisms.agent_horizon import AgentHorizonOrganismConfig
from forklens.rewards.noise import flipped
from forklens.tasks.agent import SHIFT_KB, AgentConfig, AgentTask, ToolEnv, kb_entity, kb_value, lookup


def _success_rate(task, n=3000, seed=0):
    rng = random.Random(seed)
    ok = 0
    for _ in range(n):
        q = task.random_problem(rng)
        ok += task.teacher_trajectory(q, rng)[-1][0] == "!" + q.answer
    return ok / n


def test_horizon_variants():
    fam = get_family("agent-horizon")
    assert {v: r.role for v, r in fam.variants.items()} == {"long": "precondition", "noisy-reward": "precondition",
                                                             "short": "control", "long-mixed": "precondition",
                                                             "noisy-mixed": "precondition", "short-mixed": "control",
                                                             "sparse-hops": "precondition", "noisy-hops": "precondition",
                                                             "dense-hops": "control"}
    long_cfg, noisy, short = (fam.variant_config(v) for v in ("long", "noisy-reward", "short"))
    long_task, short_task = fam.task(long_cfg), fam.task(short_task_cfg := short)
    assert {q.meta["depth"] for q in long_task.problems("test")} == {6, 7, 8, 9, 10}
    assert {q.meta["depth"] for q in short_task.problems("test")} == {1, 2, 3, 4}
    assert short_task_cfg.agent.p_right == long_cfg.agent.p_right == 0.7
    # sparse outcome success in the precondition (a few percent: mean of 0.7^d, d = 6..10, is 6.6%), not in the control
    expected_long = sum(0.7 ** d for d in range(6, 11)) / 5
    assert abs(_success_rate(long_task) - expected_long) < 4 * math.sqrt(expected_long / 3000)
    assert _success_rate(short_task) > 0.35
    # the longest gold episode fits the context
    q = max(long_task.problems("test"), key=lambda q: q.meta["depth"])
    assert len(q.prompt) + len(long_task.expert_response(q)) + 2 <= long_cfg.model.max_position_embeddings
    # the noisy-reward variant is the same organism: only the reward the trainer sees changes
    assert noisy.reward_flip == 0.2 and long_cfg.reward_flip == 0.0
    strip = lambda c: agent_organism_key(type(c).__mro__[1](agent=c.agent, model=c.model, pretrain=c.pretrain))  # noqa: E731
    assert strip(noisy) == strip(long_cfg) != strip(short)
    assert isinstance(noisy, AgentHorizonOrganismConfig)


def test_tools_predictable_vs_random():
    fam = get_family("agent-tools")
    pred, rand = (fam.task(fam.variant_config(v)) for v in ("predictable", "random"))
    assert fam.variants["predictable"].role == "precondition" and fam.variants["random"].role == "control"
    pq, rq = pred.problems("test"), rand.problems("test")
    assert [q.prompt for q in pq] != [] and all(q.meta["kb_seed"] == SHIFT_KB for q in pq)
    assert len({q.meta["kb_seed"] for q in rq}) == len(rq)  # a private knowledge base per question
    # predictable: the observation is a function of the call alone, the same in every question
    assert kb_entity(SHIFT_KB, "A", "qwe") == "rxf" and kb_entity(SHIFT_KB, "F", "zzz") == "fff"
    assert kb_value(SHIFT_KB, "Y", "abc") == (0 + 1 + 2 + 1) % 10
    env = ToolEnv()
    obs = set()
    for q in pq[:20]:
        state, _ = env.reset(q, 5)
        obs.add(env.step(q, state, "?B(abc)")[0])
    assert obs == {"=cde;"}
    obs = set()
    for q in rq[:20]:
        state, _ = env.reset(q, 5)
        obs.add(env.step(q, state, "?B(abc)")[0])
    assert len(obs) > 15
    # the gold trajectories stay correct and answerable with the predictable tool
    for q in pq:
        assert pred.verify(q, pred.expert_response(q)) == 1.0
        if q.meta["type"] == "bridge":
            assert lookup(SHIFT_KB, q.meta["relations"][-1], q.meta["chain"][-2]) == q.answer
    # the same kinds of question in the same order as the random variant
    assert [(q.meta["type"], q.meta["depth"]) for q in pq] == [(q.meta["type"], q.meta["depth"]) for q in rq]


def test_flipped_reward():
    base = lambda prompts, completions, **_: [1.0 if c == "y" else 0.0 for c in completions]  # noqa: E731
    comps = ["y", "n"] * 5000
    assert flipped(base, 0.0)([""] * len(comps), comps) == base([""] * len(comps), comps)
    out = flipped(base, 0.2, seed=3)([""] * len(comps), comps)
    flips = sum(o != b for o, b in zip(out, base(None, comps)))
    assert abs(flips / len(comps) - 0.2) < 4 * math.sqrt(0.16 / len(comps))
    assert out == flipped(base, 0.2, seed=3)([""] * len(comps), comps)  # seeded
    assert flipped(base, 1.0)([""] * 2, ["y", "n"]) == [0.0, 1.0]
    assert flipped(lambda p, c, **_: [None, 1.0], 1.0)([""] * 2, ["a", "b"]) == [None, 0.0]
    with pytest.raises(ValueError, match="binary"):
        flipped(lambda p, c, **_: [0.5], 0.1)([""], ["a"])
    with pytest.raises(ValueError, match="p_flip"):
        flipped(base, 1.5)


def test_shift_kb_default_is_random():
    assert AgentConfig().kb == "random"
    assert AgentTask().problems("test")[0].meta["kb_seed"] != SHIFT_KB
