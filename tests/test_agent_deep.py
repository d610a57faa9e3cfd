"""The agent-deep family (E011): slips, train/test depth splits, the base's exact gold probability, and
the boundary-zoo experiment end to end on tiny settings."""

from __future__ import annotations

import json
import math
import random

import torch

from forklens.cli import main
from forklens.experiments.boundary_zoo import gold_probabilities, seed_metrics
from forklens.organisms import get_family
from forklens.organisms.agent import AgentOrganismConfig, agent_organism_key
from forklens.policy import Policy
from forklens.tasks.agent import AgentConfig, AgentTask, slip_relation
from forklens.tasks.base import Problem
from forklens.train.episode_source import trajectory_ids
from tests.conftest import make_tiny


def test_family_variants_and_splits():
    fam = get_family("agent-deep")
    assert {v: fam.variants[v].role for v in fam.variants} == {"deep": "precondition", "deeper": "precondition",
                                                               "coin": "control"}
    for v, p in (("deep", 0.2), ("deeper", 0.1), ("coin", 0.5)):
        cfg = fam.variant_config(v)
        assert cfg.agent.p_right == p and cfg.agent.p_continue == 1.0
        task = fam.task(cfg)
        train, test = task.problems("train"), task.problems("test")
        assert {q.meta["depth"] for q in train} == {1, 2, 3} and {q.meta["depth"] for q in test} == {4, 5, 6}
        assert all(q.meta["type"] == "bridge" for q in train + test)
        assert [sum(q.meta["depth"] == d for q in test) for d in (4, 5, 6)] == [20, 20, 20]
    # the precondition holds in the task: the all-right chain at test depths is far below 1/256 (deep) and
    # within reach of 64 samples (coin)
    assert 0.2 ** 4 < 1 / 256 / 2 and 0.5 ** 6 > 1 / 256


def test_default_agent_unchanged():
    task = AgentTask()
    assert task.kinds("train") == task.kinds("test") == task.kinds()
    # organisms built before p_right / train_depths / test_depths existed keep their cache entries
    assert agent_organism_key(AgentOrganismConfig()) == "494617b88f72d65b"
    a, b = random.Random(5), random.Random(5)
    explicit = AgentTask(AgentConfig(p_right=1.0, train_depths=[], test_depths=[]))
    assert [task.teacher_example(a) for _ in range(50)] == [explicit.teacher_example(b) for _ in range(50)]


def test_slip_relation():
    assert slip_relation("ABC", 0) == "B" and slip_relation("ABC", 1) == "A" and slip_relation("ABC", 2) == "B"
    assert slip_relation("AAB", 0) == "B" and slip_relation("A", 0) == "B" and slip_relation("F", 0) == "A"
    for rels in ("AAAA", "ABAB", "CDEFA"):
        assert all(slip_relation(rels, i) != rels[i] for i in range(len(rels)))


def test_teacher_shows_every_hop_and_rarely_the_full_chain():
    """The capability is taught at every hop index (right in a p_right share of lookups at hops 1-6),
    the all-right chain has probability p_right ** d."""
    task = AgentTask(get_family("agent-deep").variant_config("deep").agent)
    rng = random.Random(0)
    right = {i: [0, 0] for i in range(6)}
    full = {d: [0, 0] for d in range(1, 7)}
    for _ in range(6000):
        q = task.random_problem(rng)
        segs = task.teacher_trajectory(q, rng)
        calls = [t for t, env in segs if not env and t.startswith("?")]
        assert len(calls) == q.meta["depth"]  # p_continue = 1: every lookup is made
        ok = [c[1] == q.meta["relations"][i] for i, c in enumerate(calls)]
        for i, x in enumerate(ok):
            right[i][0] += x
            right[i][1] += 1
        correct = segs[-1][0] == "!" + q.answer
        assert correct == all(ok)
        full[q.meta["depth"]][0] += correct
        full[q.meta["depth"]][1] += 1
    for i, (k, n) in right.items():
        assert abs(k / n - 0.2) < 4 * math.sqrt(0.16 / n), (i, k, n)
    assert abs(full[1][0] / full[1][1] - 0.2) < 0.04
    assert sum(full[d][0] for d in (4, 5, 6)) <= 8  # expected ~ 1000 * (0.2^4 + 0.2^5 + 0.2^6) = 2


def test_gold_probabilities_match_a_manual_forward():
    task = AgentTask(get_family("agent-deep").variant_config("deep").agent)
    model, tok = make_tiny(alphabet=task.alphabet, max_pos=128)
    policy = Policy(model, tok)
    q = task.problems("test")[0]
    pre = gold_probabilities(policy, task, [q])
    p_ids, r_ids, env = trajectory_ids(policy, (q.prompt, task.gold_trajectory(q)))
    ids = torch.tensor([p_ids + r_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].double(), -1)
    lp = [logp[len(p_ids) - 1 + j, t] for j, t in enumerate(r_ids)]
    manual = math.exp(sum(float(x) for x, e in zip(lp, env) if not e))
    assert math.isclose(pre["gold_prob_mean"], manual, rel_tol=1e-4)
    assert sorted(pre["right_call_prob_by_hop"], key=int) == [str(i) for i in range(1, q.meta["depth"] + 1)]
    # hop 1's call is the first 7 response tokens
    hop1 = math.exp(sum(float(x) for x in lp[:7]))
    assert math.isclose(pre["right_call_prob_by_hop"]["1"], hop1, rel_tol=1e-4)
    assert pre["below_threshold_frac"] == float(manual < 1 / 256)


def test_seed_metrics_boundary_shares():
    qs = [Problem(id=f"q{i}", prompt="", answer="", meta={"depth": 4 + i % 2}) for i in range(4)]
    correct = {"base": [1, 0, 0, 0], "rl": [2, 3, 0, 0], "sft": [0, 0, 0, 4]}
    records = [{"problem_id": q.id, "model": m, "correct": j < c[i]}
               for m, c in correct.items() for i, q in enumerate(qs) for j in range(4)]
    out = seed_metrics(records, qs, 4)
    assert out["base"]["solved"] == 0.25 and out["rl"]["solved"] == 0.5 and out["sft"]["solved"] == 0.25
    assert out["rl_not_base"] == 0.25 and out["base_not_rl"] == 0.0
    assert out["sft_not_base"] == 0.25 and out["base_not_sft"] == 0.25
    assert out["rl"]["solved_by_depth"] == {"4": 0.5, "5": 0.5}
    assert math.isclose(out["rl"]["pass_at_k"]["1"], (2 / 4 + 3 / 4) / 4)
    assert out["correct"]["sft"] == [0, 0, 0, 4]


def test_boundary_zoo_end_to_end_tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("FORKLENS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    sets = ["overrides=pretrain.max_steps=2,model.num_hidden_layers=1,agent.n_train=8,agent.n_test=3",
            "rl.train.max_steps=1", "rl.sampling.prompts_per_step=2", "sft.train.max_steps=1", "passk.n=2",
            "seeds=2", "artifact=" + str(tmp_path / "results" / "bz")]
    args = ["experiment", "boundary-zoo", "--out", str(out), "--no-progress"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    art = json.loads((tmp_path / "results" / "bz" / "artifact.json").read_text())
    s = art["summary"]
    assert set(s["variants"]) == {"deep", "coin"} and s["seeds"] == [0, 1]
    deep = s["variants"]["deep"]
    assert deep["test"]["questions"] == 3 and deep["test"]["depths"] == [4, 5, 6]
    assert sum(deep["test"]["per_depth"].values()) == 3 and deep["train_depths"] == [1, 2, 3]
    assert len(deep["per_seed"]["rl_not_base"]) == 2 and set(deep["aggregate"]["rl_not_base"]) >= {"mean", "low"}
    assert len(deep["correct"]["0"]["rl"]) == 3
    assert s["contrast"]["precondition"] == "deep" and s["contrast"]["control"] == "coin"
    assert art["stamp"]["seeds"] == [0, 1]
    assert (tmp_path / "results" / "bz" / "plots" / "pass_at_k.png").is_file()
    assert (tmp_path / "results" / "bz" / "metrics" / "deep-rl-seed1.json").is_file()
