"""Teams of adapters (forklens.train.team), the compose task and the `teams` experiment (E060)."""

from __future__ import annotations

import json
import random

import pytest
import torch
from conftest import make_tiny

from forklens.errors import ConfigError
from forklens.experiments.teams import ARMS, TeamsConfig, base_skills, lora_for, prompt_fn, run_teams
from forklens.organisms import get_family
from forklens.policy import Policy
from forklens.report.artifacts import load_artifact
from forklens.report.predictions import load_predictions, verdict
from forklens.tasks.compose import ComposeConfig, ComposeTask
from forklens.train.lora import LoraSettings
from forklens.train.team import Graph, Node, Team, TeamTrainConfig, majority

MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TEAM = Graph((Node("L", "L"), Node("R", "R"), Node("T", "T", ("L", "R"))))
SINGLE = Graph((Node("S", "S", (), max_new_tokens=4),))


def tiny_policy(seed: int = 0) -> Policy:
    model, tok = make_tiny(seed=seed, alphabet=ComposeTask.alphabet, max_pos=24)
    return Policy(model, tok)


def lora(r: int) -> LoraSettings:
    return LoraSettings(enabled=True, r=r, alpha=2 * r, target_modules=MODULES)


# --- the task ----------------------------------------------------------------------------------
def test_compose_answers_and_verifier():
    task = ComposeTask()
    probs = task.problems("test")
    assert len(probs) == 100 and len({p.id for p in probs}) == 100
    for p in probs:
        x1, x2 = p.meta["x1"], p.meta["x2"]
        assert int(p.answer) == (task.g[x1] + task.h[x2]) % 10
    assert sorted(task.g) == list(range(10)) and sorted(task.h) == list(range(10))
    assert all(d != r for d, r in zip(task.g_decoy, task.g))  # a decoy is never the right value
    p = probs[37]
    assert task.verify(p, f"12{p.answer}") == 1.0 and task.verify(p, p.answer) == 1.0
    assert task.verify(p, str((int(p.answer) + 1) % 10)) == 0.0 and task.verify(p, "") == 0.0
    table = ComposeTask(ComposeConfig(decomposable=False))
    assert [int(q.answer) for q in table.problems("test")] == [table.table[i][j] for i in range(10) for j in range(10)]
    with pytest.raises(ConfigError, match="exceeds 1"):
        ComposeTask(ComposeConfig(p_right=0.6, p_decoy=0.5))
    with pytest.raises(ConfigError, match="split"):
        task.problems("val")


def test_compose_teacher_frequencies():
    """Lookups are right at p_right, the decoy at p_decoy (+ uniform share); the combiner is exact."""
    task = ComposeTask()
    rng = random.Random(0)
    n, right, decoy, sums, n_sink = 0, 0, 0, 0, 0
    for _ in range(6000):
        prompt, resp = task.teacher_example(rng)
        x1 = int(prompt[1])
        if prompt[0] == "L":
            n += 1
            right += int(resp) == task.g[x1]
            decoy += int(resp) == task.g_decoy[x1]
        elif prompt[0] == "T":
            u, v = int(prompt[4]), int(prompt[5])
            n_sink += 1
            sums += int(resp) == (u + v) % 10
        elif prompt[0] == "S":
            assert len(resp) == 3 and int(resp[2]) == (int(resp[0]) + int(resp[1])) % 10
    assert abs(right / n - 0.37) < 0.03 and abs(decoy / n - 0.47) < 0.03  # + 0.2 / 10 uniform each
    assert n_sink > 1000 and sums == n_sink  # every sink document is exact
    blind = ComposeTask(ComposeConfig(sink_reads=False))
    rng = random.Random(1)
    docs = [blind.teacher_example(rng) for _ in range(3000)]
    sink = [(p, r) for p, r in docs if p[0] == "T"]
    reads = sum(int(r) == (int(p[4]) + int(p[5])) % 10 for p, r in sink) / len(sink)
    assert reads < 0.4  # the blind sink's answer agrees with the messages' sum far less often


# --- the graph and the team --------------------------------------------------------------------
def test_graph_validation():
    with pytest.raises(ConfigError, match="not earlier"):
        Graph((Node("T", "T", ("L",)), Node("L", "L")))
    with pytest.raises(ConfigError, match="twice"):
        Graph((Node("L", "L"), Node("L", "R")))
    with pytest.raises(ConfigError, match="at least one"):
        Graph(())
    assert TEAM.sink.name == "T" and TEAM.names == ["L", "R", "T"]


def test_budget_three_thirds_equal_one_whole():
    single = Team(tiny_policy(), SINGLE, lora(6), lambda p, n, m: "")
    team = Team(tiny_policy(), TEAM, lora(2), lambda p, n, m: "")
    assert single.budget()["total"] == team.budget()["total"] > 0
    assert len(set(team.budget()["per_node"].values())) == 1
    assert team.budget()["per_node"]["L"] * 3 == single.budget()["per_node"]["S"]
    cfg = TeamsConfig(rank=6)
    assert lora_for(cfg, TEAM).r == 2 and lora_for(cfg, SINGLE).r == 6 and lora_for(cfg, TEAM).alpha == 4
    with pytest.raises(ConfigError, match="evenly"):
        lora_for(TeamsConfig(rank=4), TEAM)


def test_sink_reads_parent_messages_and_noise_replaces_them():
    task = ComposeTask()
    probs = task.problems("test")[:3]
    seen = []

    def prompt(p, node, msgs):
        seen.append((node.name, list(msgs)))
        return prompt_fn(task)(p, node, msgs)

    team = Team(tiny_policy(), TEAM, lora(1), prompt)
    jr = team.rollout(probs, 2, 1.0, seed=0)
    sink = [m for name, m in seen if name == "T"]
    assert sink == [[jr.messages["L"][j], jr.messages["R"][j]] for j in range(6)]
    assert jr.samples["T"].prompt_ids[0][-1] == team.policy.tokenizer.convert_tokens_to_ids(">")
    noisy = Team(tiny_policy(), TEAM, lora(1), prompt, message_noise="0123456789", seed=3)
    seen.clear()
    jr = noisy.rollout(probs * 4, 2, 1.0, seed=0)
    heard = [m for name, m in seen if name == "T"]
    written = [[jr.messages["L"][j], jr.messages["R"][j]] for j in range(24)]
    assert len(heard) == 24 and all(len(h) == len(w) for hs, ws in zip(heard, written) for h, w in zip(hs, ws))
    assert all(set("".join(hs)) <= set("0123456789") for hs in heard)
    assert sum(hs != ws for hs, ws in zip(heard, written)) >= 20  # random digits, not what the workers wrote


def test_train_step_moves_only_adapters():
    task = ComposeTask()
    team = Team(tiny_policy(), TEAM, lora(1), prompt_fn(task), seed=0)
    frozen = {n: p.detach().clone() for n, p in team.model.named_parameters() if "lora_" not in n}
    adapters = {n: p.detach().clone() for n, p in team.model.named_parameters() if "lora_" in n}

    def reward(problem, answer):  # a learnable signal with variance inside groups
        return float(answer[-1:] in "02468") if answer else 0.0

    cfg = TeamTrainConfig(steps=2, problems_per_step=4, group_size=4)
    cfg.loss.mask_truncated_completions = False  # the random model rarely ends a message within its 2 tokens
    rows = team.train(task.problems("train"), reward, cfg, seed=0)
    assert [r["step"] for r in rows] == [1, 2] and all(r["trained_tokens"] > 0 for r in rows)
    for n, p in team.model.named_parameters():
        if "lora_" in n:
            continue
        assert torch.equal(p, frozen[n]), n
    for node in TEAM.nodes:
        moved = [not torch.equal(p, adapters[n]) for n, p in team.adapter_parameters(node)]
        assert any(moved), node.name  # every node's adapter is trained from the one reward


def test_grow_copies_a_trained_node():
    task = ComposeTask()
    small = Team(tiny_policy(), TEAM, lora(1), prompt_fn(task), seed=0)
    with torch.no_grad():
        for _, p in small.adapter_parameters(TEAM.nodes[0]):
            p.add_(0.3 * torch.randn_like(p))
    big_graph = Graph((Node("L", "L"), Node("L2", "L"), Node("R", "R"), Node("T", "T", ("L", "R"))))
    big = Team(tiny_policy(), big_graph, lora(1), prompt_fn(task), seed=1)
    big.grow_from(small, {"L": "L", "L2": "L", "R": "R", "T": "T"})
    ids = torch.tensor([big.policy.encode_prompt("L37|>")])
    small.use(TEAM.nodes[0])
    ref = small.model(input_ids=ids).logits
    for name in ("L", "L2"):
        big.use(big_graph.nodes[big_graph.names.index(name)])
        assert torch.allclose(big.model(input_ids=ids).logits, ref, atol=1e-6)
    with pytest.raises(ConfigError, match="unknown node"):
        big.grow_from(small, {"X": "L"})
    other_rank = Team(tiny_policy(), TEAM, lora(2), prompt_fn(task))
    with pytest.raises(ConfigError, match="rank or modules"):
        big.grow_from(other_rank, {"L": "L"})


def test_base_skills_match_the_model():
    task = ComposeTask()
    policy = tiny_policy()
    skills = base_skills(policy, task)
    assert set(skills) == {"L_right", "L_decoy", "R_right", "R_decoy", "sink_adds"}
    ids = torch.tensor([policy.encode_prompt(task.node_prompt("L", x1, x2, "")) for x1 in range(10) for x2 in range(10)])
    with torch.no_grad():
        probs = policy.model(input_ids=ids).logits[:, -1].softmax(-1)
    digit = [policy.tokenizer.convert_tokens_to_ids(str(task.g[x1])) for x1 in range(10) for _ in range(10)]
    expected = float(probs[torch.arange(100), torch.tensor(digit)].mean())
    assert skills["L_right"] == pytest.approx(expected, rel=1e-4)


def test_majority():
    assert majority(["3", "5", "3"]) == "3" and majority(["1", "2", "3"]) == "1" and majority(["", "4", "4"]) == "4"


# --- the organism families and the experiment end to end ---------------------------------------
def test_families_registered():
    assert get_family("compose").variant("sum").role == "precondition"
    assert get_family("compose").variant("blind").role == "control"
    assert get_family("entangled").variant_config("table").task.decomposable is False
    assert {f for f, _, _, _ in ARMS.values()} == {"compose", "entangled"}


def test_teams_experiment_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("FORKLENS_CACHE", str(tmp_path / "cache"))
    cfg = TeamsConfig(rank=3, seeds=1, eval_samples=3, artifact=str(tmp_path / "results" / "teams"))
    cfg.organism.model.hidden_size, cfg.organism.model.intermediate_size = 16, 32
    cfg.organism.model.num_hidden_layers = 1
    cfg.organism.pretrain.max_steps, cfg.organism.pretrain.warmup_steps, cfg.organism.batch_size = 8, 2, 16
    cfg.rl.steps, cfg.rl.problems_per_step, cfg.rl.group_size = 1, 2, 2
    summary = run_teams(cfg, tmp_path / "run")
    assert set(summary["arms"]) == set(ARMS) and summary["budget_matched"] is True
    assert all(0.0 <= v <= 1.0 for b in summary["bases"].values() for v in b["skills"].values())
    for arm, v in summary["arms"].items():
        assert 0.0 <= v["after"]["sampled"]["mean"] <= 1.0 and v["budget"]["total"] > 0
        ratio = v["tokens_per_rollout"] / summary["arms"]["single/sum"]["tokens_per_rollout"]
        assert (2.5 < ratio < 3.5) if arm.startswith("team") else (0.8 < ratio < 1.25)  # ~3x for a team
    art = load_artifact(tmp_path / "results" / "teams")
    assert art.stamp["seeds"] == [0]
    preds = load_predictions("results/predictions/teams.yaml")
    assert all(verdict(p, art).outcome != "missing" for p in preds.predictions)
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["contrasts"].keys() == summary["contrasts"].keys()
