"""GRPO over episodes, SFT on trajectories, strategy diversity, the boundary analysis and `passk --model`."""

from __future__ import annotations

import json
import random

import pytest
import torch

from forklens.analysis.diversity import diversity_table, distinct_strategies, strategy_overlap
from forklens.cli import main
from forklens.analysis.passk_samples import generate_samples
from forklens.experiments.boundary import analyse, crossing, markdown_report
from forklens.objectives.advantages import group_advantages
from forklens.tasks.agent import AgentConfig, AgentTask
from forklens.train.episode_source import EpisodeSFTSource
from forklens.train.sources import GRPOSource, SamplingConfig
from tests.test_episodes import scripted_policy

TASK = AgentTask(AgentConfig(n_train=6, n_test=6))


def two_way_policy(problems):
    """Per question: the gold episode or an immediate (wrong) answer, each with probability 1/2."""
    scripts = {}
    for p in problems:
        gold = TASK.expert_response(p)
        wrong = p.meta["start"] if p.meta["type"] == "bridge" else ("1" if p.answer != "1" else "2")
        scripts[p.prompt] = [gold, "!" + wrong]
    return scripted_policy(scripts)


def test_grpo_episode_source_groups_rewards_and_advantages():
    problems = [TASK.bridge(random.Random(i), 2, pid=f"q{i}") for i in range(5)]
    policy = two_way_policy(problems)
    cfg = SamplingConfig(prompts_per_step=4, group_size=8, T=5)
    source = GRPOSource(TASK, problems, cfg, seed=3)
    batch, info = source.batch(0, policy)
    assert len(batch) == 32
    assert batch.group_ids.tolist() == [g for g in range(4) for _ in range(8)]
    # deterministic in (seed, step)
    again, _ = GRPOSource(TASK, problems, cfg, seed=3).batch(0, policy)
    assert torch.equal(batch.input_ids, again.input_ids)
    # rewards: the verifier on each transcript; both branches occur
    texts = [policy.decode(batch.input_ids[i, int(batch.prompt_lens[i]):].tolist()) for i in range(32)]
    chosen = source.last_chosen
    expect = [TASK.verify(chosen[i // 8], t) for i, t in enumerate(texts)]
    assert batch.rewards.tolist() == expect
    assert 0 < sum(expect) < 32
    for i, t in enumerate(texts):  # gold episodes make 2 calls and are right; the shortcut is wrong
        assert expect[i] == float(t.startswith("?"))
    # advantages: group-relative, divided by the group std
    adv, _ = group_advantages(batch.rewards, batch.group_ids, "group")
    assert torch.allclose(batch.advantages, adv)
    for g in range(4):
        r = batch.rewards[g * 8:(g + 1) * 8]
        a = batch.advantages[g * 8:(g + 1) * 8]
        if r.std() > 0:
            assert torch.allclose(a, (r - r.mean()) / (r.std() + 1e-4), atol=1e-5)
        else:
            assert torch.all(a == 0)
    # the model's tokens are trained, the observations are not
    for i, t in enumerate(texts):
        own = int(batch.response_mask[i].sum())
        env = int(batch.tags["env_mask"][i].sum())
        if t.startswith("?"):
            assert env == 10 and own == len(t) - 10 + 1  # two "=xyz;" observations; + EOS
        else:
            assert env == 0 and own == 5
    assert torch.all(batch.response_mask * batch.tags["env_mask"] == 0)
    assert info["tool_calls_mean"] == pytest.approx(2 * sum(expect) / 32)
    assert info["reward_mean"] == pytest.approx(sum(expect) / 32)
    assert info["sampled_tokens"] > 0 and info["truncated_frac"] == 0.0


def test_episode_sft_source_trains_only_model_tokens():
    problems = TASK.problems("train")
    policy = scripted_policy({})
    data = [(p.prompt, TASK.gold_trajectory(p)) for p in problems]
    src = EpisodeSFTSource(data, batch_size=4, seed=0)
    batch, _ = src.batch(0, policy)
    assert len(batch) == 4
    for i in range(4):
        ids = batch.input_ids[i].tolist()
        start = int(batch.prompt_lens[i])
        n = int(batch.attention_mask[i].sum())
        text = policy.decode(ids[start:n])
        p = next(p for p in problems if policy.decode(ids[:start]) == p.prompt)
        assert text == TASK.expert_response(p) and ids[n - 1] == policy.tokenizer.eos_token_id
        env_text = policy.decode([t for t, m in zip(ids, batch.tags["env_mask"][i].tolist()) if m])
        assert env_text == "".join(s for s, e in TASK.gold_trajectory(p) if e)
        assert int(batch.response_mask[i].sum()) + int(batch.tags["env_mask"][i].sum()) == n - start
    # an epoch visits every example once
    firsts = set()
    for step in range(3):  # 6 examples, 4 per step: steps 0 and 1 cover epoch 0
        b, _ = src.batch(step, policy)
        firsts |= {policy.decode(b.input_ids[i, : int(b.prompt_lens[i])].tolist()) for i in range(len(b))}
    assert firsts == {p.prompt for p in problems}


def rec(model, T, pid, calls, correct=False):
    return {"model": model, "T": T, "problem_id": pid, "calls": list(calls), "correct": correct}


def test_diversity_hand_built():
    a, b, c = "?A(abc)", "?B(abc)", "?A(xyz)"
    records = [
        # base on p1: 4 episodes, 3 strategies ((), (a,), (a, c))
        rec("base", 1, "p1", []), rec("base", 1, "p1", [a]), rec("base", 1, "p1", [a, c], True),
        rec("base", 1, "p1", [a, c], True),
        # base on p2: 2 episodes, 1 strategy
        rec("base", 1, "p2", [b]), rec("base", 1, "p2", [b]),
        # rl: p1 has (a, c) x3 and (b,) x1; p2 has (b,) x2
        rec("rl", 1, "p1", [a, c], True), rec("rl", 1, "p1", [a, c], True), rec("rl", 1, "p1", [a, c], True),
        rec("rl", 1, "p1", [b]), rec("rl", 1, "p2", [b], True), rec("rl", 1, "p2", [b], True),
    ]
    d = distinct_strategies(records)
    assert d == {"base": {1: {"p1": 3, "p2": 1}}, "rl": {1: {"p1": 2, "p2": 1}}}
    table = diversity_table(records)
    assert table["base"][1]["distinct_strategies"] == 2.0
    assert table["rl"][1]["distinct_strategies"] == 1.5
    assert table["base"][1]["distinct_correct_strategies"] == 0.5  # p1: 1, p2: 0
    assert table["base"][1]["calls_per_episode"] == pytest.approx((0 + 1 + 2 + 2 + 1 + 1) / 6)
    assert table["rl"][1]["strategy_entropy"] == pytest.approx(
        (-(0.75 * torch.log(torch.tensor(0.75)) + 0.25 * torch.log(torch.tensor(0.25))).item() + 0.0) / 2)
    # rl's episodes with a strategy the base also used: p1 3/4 ((b,) never on p1 for base), p2 2/2
    assert strategy_overlap(records, "rl", "base", 1) == pytest.approx((0.75 + 1.0) / 2)
    assert strategy_overlap(records, "rl", "base", 1, weighted=False) == pytest.approx((0.5 + 1.0) / 2)
    assert strategy_overlap(records, "base", "rl", 1) == pytest.approx((0.5 + 1.0) / 2)
    assert strategy_overlap(records, "rl", "base", 3) is None


def test_crossing_and_analysis_of_records():
    assert crossing({1: 0.2, 2: 0.4, 4: 0.7}, {1: 0.3, 2: 0.4, 4: 0.5})["cross_k"] == 4
    assert crossing({1: 0.2, 2: 0.4}, {1: 0.3, 2: 0.5})["cross_k"] is None
    records = []
    outcomes = {  # (model, T, problem): correct flags over n = 4 samples
        ("base", 0, "a"): [1, 0, 0, 0], ("rl", 0, "a"): [1, 1, 1, 1],
        ("base", 0, "b"): [0, 0, 0, 1], ("rl", 0, "b"): [0, 0, 0, 0],
        ("base", 0, "c"): [0, 0, 0, 0], ("rl", 0, "c"): [0, 0, 1, 0],
    }
    for (m, T, pid), flags in outcomes.items():
        records += [{"model": m, "T": T, "problem_id": pid, "correct": bool(f), "calls": [],
                     "type": "bridge", "depth": 1} for f in flags]
    out, table = analyse(records, 4)
    assert out["ks"] == [1, 2, 4]
    b = out["boundary"]["0"]
    assert b["solved"] == {"base": 2, "rl": 2}
    assert b["rl_not_base"] == ["c"] and b["base_not_rl"] == ["b"]
    assert out["pass_at_k"]["rl"]["0"]["1"] == pytest.approx((1 + 0 + 0.25) / 3)
    assert out["by_kind"]["rl"]["0"]["bridge-1"]["solved"] == 2


def test_generate_samples_and_passk_generation_mode(tmp_path):
    problems = TASK.problems("test")[:3]
    policy = two_way_policy(problems)
    recs = generate_samples(policy, TASK, problems, "two-way", Ts=(0, 5), n=8, seed=1)
    assert len(recs) == 3 * 8 * 2
    assert {r["T"] for r in recs} == {0, 5}
    at0 = [r for r in recs if r["T"] == 0]
    assert all(r["calls"] == [] and r["response"].startswith("!") for r in at0)
    at5 = [r for r in recs if r["T"] == 5]
    assert all(r["correct"] == (len(r["calls"]) == r["depth"]) for r in at5)
    assert any(r["correct"] for r in at5) and not all(r["correct"] for r in at5)

    # `forklens passk --model DIR --task agent`: a saved random tiny model, two caps
    from tests.conftest import make_tiny

    model, tok = make_tiny("llama", alphabet=AgentTask.alphabet, max_pos=128)
    d = tmp_path / "tiny-agent"
    model.save_pretrained(str(d))
    tok.save_pretrained(str(d))
    out = tmp_path / "out"
    assert main(["passk", "--model", f"m={d}", "--task", "agent", "--n", "4", "--T", "0,1", "--limit", "3",
                 "--out", str(out)]) == 0
    lines = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == 3 * 4 * 2 and {x["model"] for x in lines} == {"m"}
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["pass_at_k"]["m"]) == {"0", "1"} and summary["ks"] == [1, 2, 4]
    assert main(["passk", "--model", str(d), "--task", "arith", "--T", "1", "--out", str(out)]) == 2
    assert main(["passk", "--model", str(d), "--out", str(out)]) == 2  # no --task
    with pytest.raises(SystemExit):
        main(["passk", "--samples", str(out / "samples.jsonl"), "--model", str(d)])


def test_markdown_report_renders():
    records = []
    for m in ("base", "rl", "sft"):
        for T in (0, 5):
            for pid in ("a", "b"):
                records += [{"model": m, "T": T, "problem_id": pid, "correct": (i + len(m) + T) % 3 == 0,
                             "calls": ["?A(abc)"] * (i % 2), "type": "bridge", "depth": 1} for i in range(4)]
    out, _ = analyse(records, 4)
    out["diversity"] = {m: {str(T): v for T, v in by_T.items()} for m, by_T in diversity_table(records).items()}
    out["strategy_overlap"] = {f"{m}_vs_base": {str(T): {"episodes": strategy_overlap(records, m, "base", T)}
                                                for T in (0, 5)} for m in ("rl", "sft")}
    text = markdown_report({"agent": out, "total_wall_s": 1.0})
    assert "Compositional tool use" in text and "| 5 |" in text


def test_experiment_end_to_end_tiny(tmp_path, monkeypatch):
    """The whole recipe on tiny settings: every stage runs and the outputs are consistent."""
    monkeypatch.setenv("FORKLENS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    sets = ["arith.pretrain.max_steps=3", "agent.pretrain.max_steps=3", "arith_rl.train.max_steps=1",
            "arith_rl.train.save_every=0", "agent_rl.train.max_steps=1", "agent_rl.sampling.prompts_per_step=2",
            "agent_sft.train.max_steps=1", "passk.n=2", "passk.T=0,2", "passk.arith_problems=4",
            "passk.agent_problems=3", "arith.model.num_hidden_layers=1", "agent.model.num_hidden_layers=1"]
    args = ["experiment", "boundary", "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["arith"]["pass_at_k"]) == {"base", "rl"}
    assert set(summary["agent"]["pass_at_k"]) == {"base", "rl", "sft"}
    assert set(summary["agent"]["pass_at_k"]["rl"]) == {"0", "2"}
    assert summary["agent"]["train"]["rl"]["T"] == 2  # GRPO trains at the largest cap of the grid
    assert json.loads((out / "agent" / "rl_train" / "metrics.jsonl").read_text().splitlines()[0])["step"] == 1
    agent_lines = (out / "samples_agent.jsonl").read_text().splitlines()
    assert len(agent_lines) == 3 * 3 * 2 * 2  # models x questions x n x T
    assert (out / "report.md").read_text().startswith("# Capability boundary")
    assert (out / "agent_pass_at_k_T2.png").is_file() and (out / "arith_pass_at_k.png").is_file()
