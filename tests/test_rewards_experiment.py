"""`forklens experiment rewards --quick` end to end on a tiny agent organism."""

import json

from forklens.cli import main
from forklens.experiments.rewards import RUNS


def test_rewards_experiment_quick_tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("FORKLENS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    args = ["experiment", "rewards", "--quick", "--seeds", "2", "--out", str(out),
            "--set", "agent.pretrain.max_steps=3", "--set", "agent.model.num_hidden_layers=1",
            "--set", "rl.train.max_steps=1", "--set", "eval_problems=3",
            "--set", "runs=outcome,outcome+confidence,process-only"]
    assert main(args) == 0
    s = json.loads((out / "summary.json").read_text())
    assert list(s["runs"]) == ["outcome", "outcome+confidence", "process-only"]
    assert s["seeds"] == [0, 1]
    for name, r in s["runs"].items():
        assert r["reward_fns"] == RUNS[name]
        assert len(r["per_seed"]) == 2 and 0.0 <= r["accuracy_mean"] <= 1.0 and r["flops"] > 0
        accs = [x["accuracy"] for x in r["per_seed"]]
        assert r["accuracy_mean"] == sum(accs) / 2
    # the probe's forward passes are part of the FLOPs of the runs that use the confidence reward
    assert s["runs"]["outcome+confidence"]["per_seed"][0]["probe_tokens"] > 0
    assert s["runs"]["outcome"]["per_seed"][0]["probe_tokens"] == 0
    # every component is logged separately
    first = json.loads((out / "train" / "process-only-seed0" / "metrics.jsonl").read_text().splitlines()[0])
    assert {"reward/kmr", "reward/rmr", "reward/confidence", "reward/milestones"} <= set(first)
    assert (out / "models" / "outcome" / "config.json").is_file()
    assert "| outcome |" in (out / "report.md").read_text()


def test_rewards_experiment_rejects_unknown_runs(tmp_path, capsys):
    assert main(["experiment", "rewards", "--quick", "--out", str(tmp_path), "--set", "runs=nope"]) == 2
    assert "nope" in capsys.readouterr().err
