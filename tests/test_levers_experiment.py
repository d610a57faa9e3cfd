"""`forklens experiment levers` end to end on tiny organisms (pretrained for 3 steps into a temp cache)."""

import json

import pytest

from forklens.cli import main


@pytest.mark.slow
def test_levers_experiment_end_to_end_tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("FORKLENS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    sets = ["arith.pretrain.max_steps=3", "agent.pretrain.max_steps=3", "arith.model.num_hidden_layers=1",
            "agent.model.num_hidden_layers=1", "arith_rl.train.max_steps=2", "agent_rl.train.max_steps=2",
            "agent_rl.sampling.prompts_per_step=2", "arith_rl.sampling.prompts_per_step=2",
            "agent_rl.sampling.group_size=3", "arith_rl.sampling.group_size=3", "agent_sft.batch_size=4",
            "agent_sft.train.max_steps=1", "eval_arith_problems=4", "eval_agent_problems=3", "seeds=1",
            "levers.stage2_start=1", "levers.mi_proxy_every=1", "levers.explore.task_steps=1"]
    args = ["experiment", "levers", "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    runs = summary["runs"]
    expected = {f"arith/{n}" for n in ("base", "grpo", "snr", "top_entropy")} | {
        f"agent/{n}" for n in ("base", "grpo", "snr", "top_entropy", "echo", "explore", "staged_replay")} | {
        f"agent_sft/{n}" for n in ("shuffle", "reverse_perplexity", "perplexity")}
    assert set(runs) == expected
    for name, r in runs.items():
        assert 0.0 <= r["accuracy_mean"] <= 1.0 and r["accuracy_std"] >= 0.0
        assert (r["coverage"] is None) == name.startswith("arith/")
        if not name.endswith("/base"):
            assert r["seeds"] == 1 and r["flops"] > 0
    assert runs["agent/snr"]["delta_vs"] == "agent/grpo"
    assert runs["agent_sft/reverse_perplexity"]["delta_vs"] == "agent_sft/shuffle"
    # the pre-pass of top_entropy and the exploration steps cost FLOPs; the logged diagnostics are there
    assert runs["arith/top_entropy"]["flops"] > runs["arith/grpo"]["flops"]
    assert runs["agent/explore"]["flops"] > runs["agent/grpo"]["flops"]
    assert "train_mi_proxy_acc" in runs["arith/grpo"] and "train_coverage_explore" in runs["agent/explore"]
    assert "train_replayed" in runs["agent/staged_replay"]
    metrics = [json.loads(x) for x in (out / "seed0" / "agent-explore" / "metrics.jsonl").read_text().splitlines()]
    assert [m["explore_step"] for m in metrics] == [0.0, 1.0, 0.0, 1.0]  # 2 task steps, 1:1 interleaving
    assert (out / "report.md").read_text().startswith("# Training-loop levers")
