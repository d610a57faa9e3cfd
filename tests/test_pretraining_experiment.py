"""`forklens experiment pretraining`: arms at matched FLOPs, and the records and paired contrasts it writes."""

import json

import pytest

from forklens.cli import main
from forklens.errors import ConfigError
from forklens.experiments.pretraining import ARMS, PretrainingConfig, arm_organism, block_params, run_pretraining


def test_arms_are_flop_matched_and_controls_differ_only_where_they_should():
    cfg = PretrainingConfig()
    orgs = {a: arm_organism(cfg, a, 0, 30.0) for a in ARMS}
    flops = {a: c["flops"] for a, (_, c) in orgs.items()}
    for a, f in flops.items():
        assert f == pytest.approx(cfg.flops_budget, rel=0.01), a
    steps = {a: c["steps"] for a, (_, c) in orgs.items()}
    assert steps["transformer-response-prefix"] == pytest.approx(4 * steps["recurrent-response-prefix"], rel=0.01)
    assert steps["recurrent-depth1"] == steps["transformer-response-prefix"]  # 2 blocks applied, like the transformer
    assert steps["transformer-flops"] == steps["recurrent-response-prefix"]  # 8 blocks applied, like the recurrent
    params = {a: c["params"] for a, (_, c) in orgs.items()}
    assert params["recurrent-response-prefix"] == params["transformer-response-prefix"] == params["recurrent-depth1"]
    assert params["transformer-flops"] == 4 * params["recurrent-response-prefix"] == 8 * block_params(cfg)
    rec = orgs["recurrent-depth1"][0].model
    assert (rec.architecture, rec.h_cycles, rec.l_cycles, rec.attention, rec.loss) == ("recurrent", 1, 1, "prefix",
                                                                                       "response")
    px = orgs["transformer-sequence-causal"][0].model
    assert (px.architecture, px.loss, px.attention, px.num_hidden_layers) == ("transformer", "sequence", "causal", 2)


def test_unknown_arm_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown arm"):
        run_pretraining(PretrainingConfig(arms=["mlp"]), tmp_path / "x")


def test_quick_run_writes_records_and_contrasts(tmp_path, monkeypatch):
    monkeypatch.setenv("FORKLENS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    arms = "[recurrent-response-prefix, transformer-response-prefix]"
    assert main(["experiment", "pretraining", "--quick", "--out", str(out), "--seeds", "2", "--set", f"arms={arms}",
                 "--set", "flops_budget=2e9", "--set", "eval_problems=4", "--set", "diff_prompts=3",
                 "--set", "rl.train.max_steps=1", "--set", "rl.sampling.max_new_tokens=24"]) == 0
    records = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert [(r["arm"], r["seed"]) for r in records] == [("recurrent-response-prefix", 0),
                                                        ("transformer-response-prefix", 0),
                                                        ("recurrent-response-prefix", 1),
                                                        ("transformer-response-prefix", 1)]
    s = json.loads((out / "summary.json").read_text())
    assert set(s["arms"]) == {"recurrent-response-prefix", "transformer-response-prefix"}
    assert set(s["contrasts"]) == {"recurrent-vs-transformer"}
    gain = s["contrasts"]["recurrent-vs-transformer"]["base_accuracy"]
    by = {(r["arm"], r["seed"]): r["base_accuracy"] for r in records}
    want = sum(by[("recurrent-response-prefix", k)] - by[("transformer-response-prefix", k)] for k in (0, 1)) / 2
    assert gain["n"] == 2 and gain["mean"] == pytest.approx(want)
    for r in records:
        assert r["rl_gain"] == pytest.approx(r["tuned_accuracy"] - r["base_accuracy"])
        assert r["forks_per_response"] >= 0
    cfg = json.loads((out / "recurrent-response-prefix" / "seed-0" / "base" / "config.json").read_text())
    assert cfg["model_type"] == "forklens-recurrent" and cfg["prefix_lm"] is True
    # --resume: every (arm, seed) record is reused, nothing is retrained
    (out / "recurrent-response-prefix" / "seed-0" / "base").rename(tmp_path / "moved")
    assert main(["experiment", "pretraining", "--quick", "--resume", "--out", str(out), "--seeds", "2", "--set", f"arms={arms}",
                 "--set", "flops_budget=2e9", "--set", "eval_problems=4", "--set", "diff_prompts=3",
                 "--set", "rl.train.max_steps=1", "--set", "rl.sampling.max_new_tokens=24"]) == 0
    assert not (out / "recurrent-response-prefix" / "seed-0" / "base").exists()
    assert json.loads((out / "summary.json").read_text())["contrasts"] == s["contrasts"]


def test_a_pipe_in_prediction_text_stays_in_its_table_cell(tmp_path):
    from forklens.report.predictions import load_predictions, verdict_table

    path = tmp_path / "p.yaml"
    path.write_text("experiment: x\nartifact: results/x\npredictions:\n  - id: a\n    claim: P(a|q) beats P(x)\n"
                    "    metric: gain of P(a|q)\n    field: summary.g\n    direction: '>'\n    threshold: 0\n")
    table = verdict_table(load_predictions(path), {"stamp": {}, "summary": {"g": 0.5}})
    row = table.splitlines()[2]
    assert row.startswith("| P(a\\|q) beats P(x) | gain of P(a\\|q) > 0")
    assert len(row.replace("\\|", "").split("|")) == 6  # four cells
