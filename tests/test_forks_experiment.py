"""experiments/forks.py: variant parsing, family overrides, the per-seed aggregation and the test-split offset."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

import forklens.experiments.forks as forks_mod
from forklens.analysis.intervene import gate_keys, random_reference
from forklens.config import load_config, packaged_config
from forklens.errors import ConfigError
from forklens.experiments.forks import (METRICS, ForksConfig, OffsetTask, aggregate, check_gates, grpo_problems,
                                       grpo_rewards, recovered, run_forks, variant_config)
from forklens.organisms import get_family
from forklens.organisms.zoo import Variant
from forklens.report.predictions import load_predictions
from forklens.tasks.addv import AddvConfig, AddvTask
from forklens.tasks.arith import ArithTask


def test_variant_config_applies_family_then_variant_overrides():
    fam, name, cfg = variant_config("addv/undertrained", ["addv:pretrain.max_steps=999", "addv:model.hidden_size=64",
                                                          "arith:pretrain.max_steps=7"])
    assert (fam.name, name) == ("addv", "undertrained")
    assert cfg.model.hidden_size == 64  # family override
    assert cfg.pretrain.max_steps == 160  # the variant's own override wins
    _, _, arith = variant_config("arith/planted", ["arith:pretrain.max_steps=7"])
    assert arith.pretrain.max_steps == 7 and arith.arith.p_drop_carry == 0.6


@pytest.mark.parametrize("spec,overrides", [("addv", []), ("addv/nope", []), ("nope/x", []),
                                            ("addv/capacity", ["addv-pretrain.max_steps=3"])])
def test_bad_specs(spec, overrides):
    with pytest.raises(ConfigError):
        variant_config(spec, overrides)


def test_aggregate_skips_undefined_seeds():
    recs = [{"base_accuracy": 0.3, "tuned_accuracy": 0.9, "gain": 0.6,
             "forks": {"share_in_topk": 1.0, "entropy_ratio": 4.0},
             "recovered": {"oracle": 1.0, "random": 0.1, "entropy": None}},
            {"base_accuracy": 0.3, "tuned_accuracy": 0.3, "gain": 0.0,
             "forks": {"share_in_topk": 0.5, "entropy_ratio": 2.0},
             "recovered": {"oracle": None, "random": None, "entropy": None}}]
    agg = aggregate(recs)
    assert set(agg) == set(METRICS)
    assert agg["share_in_topk"]["mean"] == 0.75 and agg["share_in_topk"]["n"] == 2
    assert agg["oracle_recovered"]["mean"] == 1.0 and agg["oracle_recovered"]["n"] == 1
    assert agg["entropy_recovered"] is None and agg["branches"] is None


def test_recovered_only_where_the_tuned_model_gains():
    gr = {"oracle": 3.0, "random": 0.5, "entropy": 1.0}
    assert recovered({"accuracy": {"base": 0.3, "rl": 0.2}, "gain_recovered": gr}) == dict.fromkeys(gr)
    assert recovered({"accuracy": {"base": 0.3, "rl": 0.3}, "gain_recovered": dict.fromkeys(gr)}) == dict.fromkeys(gr)
    assert recovered({"accuracy": {"base": 0.2, "rl": 0.6}, "gain_recovered": gr}) == gr


def test_offset_task_starts_the_test_split_at_the_offset():
    task = AddvTask(AddvConfig(n_test=20))
    sliced = OffsetTask(task, 15)
    assert [p.id for p in sliced.problems("test")] == [p.id for p in task.problems("test")[15:]]
    assert [p.id for p in sliced.problems("train")[:50]] == [p.id for p in task.problems("train")[:50]]
    p = task.problems("test")[0]
    assert sliced.verify(p, task.expert_response(p)) == task.verify(p, task.expert_response(p)) > 0
    for bad in (20, 99):
        with pytest.raises(ConfigError, match="problem_offset"):
            OffsetTask(task, bad)


def test_run_forks_with_an_offset_uses_the_later_problems(tmp_path, monkeypatch):
    monkeypatch.setenv("FORKLENS_CACHE", str(tmp_path / "cache"))
    tiny = ["negctl:base.model.hidden_size=32", "negctl:base.model.intermediate_size=64",
            "negctl:base.model.num_attention_heads=2", "negctl:base.pretrain.max_steps=10", "negctl:tune.max_steps=2"]
    cfg = ForksConfig(variants=["negctl/same-notation"], family_overrides=tiny, seeds=1, seed=7, eval_problems=4,
                      diff_prompts=2, intervene_problems=3, problem_offset=190)
    out = run_forks(cfg, tmp_path / "run", progress=False)
    v = out["variants"]["negctl/same-notation"]
    assert v["n_seeds"] == 1 and v["per_seed"][0]["tuned_by"] == "sft"
    _, _, vcfg = variant_config("negctl/same-notation", tiny)
    task = get_family("negctl").task(vcfg)
    assert v["max_new_tokens"] == max(len(task.expert_response(p)) for p in task.problems("test")) + 8
    rows = (tmp_path / "run" / "negctl-same-notation" / "seed-7" / "diff" / "responses.jsonl").read_text()
    assert [json.loads(line)["prompt_id"] for line in rows.splitlines()] == \
        [p.id for p in task.problems("test")[190:192]]


def test_grpo_rewards_digits_scores_answers_and_logs_the_verifier(tmp_path):
    task = AddvTask(AddvConfig(n_test=20))
    assert grpo_rewards("verifier", task) == {}
    kw = grpo_rewards("digits", OffsetTask(task, 5))
    digits, verifier = kw["reward_fns"]
    assert kw["reward_weights"] == [1.0, 0.0]
    p = task.problems("test")[0]
    wrong = str(int(p.answer) + 1)
    texts = [task.expert_response(p), f"A={wrong}", "A="]
    assert digits([p.prompt] * 3, texts, problem=[p] * 3) == [1.0, task.digit_reward(p, texts[1]), 0.0]
    assert 0 < digits([p.prompt], texts[1:2], problem=[p])[0] < 1
    assert verifier([p.prompt] * 3, texts, problem=[p] * 3) == [1.0, 0.0, 0.0]
    with pytest.raises(ConfigError, match="no per-digit reward"):
        grpo_rewards("digits", ArithTask())
    with pytest.raises(ConfigError, match="reward"):
        run_forks(ForksConfig(variants=["arith/planted"], reward="digits"), tmp_path / "run", progress=False)


def test_grpo_problems_keeps_the_training_problems_the_base_gets_wrong(monkeypatch):
    task = AddvTask(AddvConfig(max_digits=2))
    train = task.problems("train")
    assert grpo_problems("all", None, task, 20) == (None, {"train_on": "all"})
    monkeypatch.setattr(forks_mod, "evaluate", lambda base, t, ev: {
        "accuracy": 0.5, "per_problem": [{"correct": i % 2} for i in range(len(train))]})
    kept, info = grpo_problems("base-wrong", None, task, 20)
    assert [p.id for p in kept] == [p.id for p in train[::2]]
    assert info == {"train_on": "base-wrong", "train_problems": len(train), "kept": len(kept), "base_train_accuracy": 0.5}
    monkeypatch.setattr(forks_mod, "evaluate", lambda base, t, ev: {
        "accuracy": 1.0, "per_problem": [{"correct": 1}] * len(train)})
    with pytest.raises(ConfigError, match="nothing to train on"):
        grpo_problems("base-wrong", None, task, 20)
    with pytest.raises(ConfigError, match="train_on"):
        grpo_problems("hard", None, task, 20)


def tiny_mid(tmp_path, monkeypatch) -> list[str]:
    """Family overrides of a tiny addv organism, with a tiny stand-in for addv/undertrained-mid (its own 240
    pretraining steps would win over a family override) and a fresh organism cache."""
    monkeypatch.setenv("FORKLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(get_family("addv").variants, "undertrained-mid",
                        Variant("precondition", "tiny stand-in", overrides=("pretrain.max_steps=5",)))
    return ["addv:addv.max_digits=1", "addv:model.hidden_size=32", "addv:model.intermediate_size=64",
            "addv:model.num_attention_heads=2"]


def test_run_forks_digits_reward_on_base_wrong_problems_end_to_end(tmp_path, monkeypatch):
    tiny = tiny_mid(tmp_path, monkeypatch)
    cfg = ForksConfig(variants=["addv/undertrained-mid"], family_overrides=tiny, seeds=1, seed=3, eval_problems=4,
                      diff_prompts=2, intervene_problems=3, reward="digits", train_on="base-wrong")
    cfg.rl.train.max_steps, cfg.rl.train.mini_batches = 2, 2
    cfg.rl.sampling.prompts_per_step, cfg.rl.sampling.group_size = 2, 4
    v = run_forks(cfg, tmp_path / "run", progress=False)["variants"]["addv/undertrained-mid"]
    _, _, vcfg = variant_config("addv/undertrained-mid", tiny)
    n_train = len(get_family("addv").task(vcfg).problems("train"))
    picked = v["grpo_problems"]
    assert picked["train_on"] == "base-wrong" and picked["train_problems"] == n_train
    assert picked["kept"] == round(n_train * (1 - picked["base_train_accuracy"]))
    rows = [json.loads(line) for line in
            (tmp_path / "run" / "addv-undertrained-mid" / "seed-3" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(0 <= r["reward/addv_verifier"] <= r["reward_mean"] <= 1 for r in rows)


def test_check_gates():
    assert [g.spec for g in check_gates(["oracle", "random", "entropy:0.5"], 0.0)] == ["oracle", "random", "entropy:0.5"]
    both = ["oracle", "random", "entropy:0.5", "entropy:0.5+sample", "random+sample"]
    assert len(check_gates(both, 1.0)) == 5
    with pytest.raises(ConfigError, match="decode_temperature"):
        check_gates(both, 0.0)
    for bad in (["oracle", "random"], ["oracle", "random", "entropy:0.5", "oracle"],
                ["oracle", "random", "entropy:0.5", "random+sample"]):
        with pytest.raises(ConfigError):
            check_gates(bad, 1.0)


def test_run_forks_sampled_decoding_end_to_end(tmp_path, monkeypatch):
    tiny = tiny_mid(tmp_path, monkeypatch)
    cfg = ForksConfig(variants=["addv/undertrained-mid"], family_overrides=tiny, seeds=2, seed=3, eval_problems=6,
                      diff_prompts=2, intervene_problems=5, decode_temperature=1.0, decode_samples=3,
                      intervene_gates=["oracle", "random", "entropy:0.5", "entropy:0.5+sample", "random+sample",
                                       "oracle+base", "entropy:0.5+base"])
    cfg.rl.train.max_steps = 1
    cfg.rl.sampling.prompts_per_step, cfg.rl.sampling.group_size = 2, 2
    out = run_forks(cfg, tmp_path / "run", progress=False)
    assert out["decoding"]["mode"] == "sampled" and out["decoding"]["samples_per_problem"] == 3
    v = out["variants"]["addv/undertrained-mid"]
    _, _, vcfg = variant_config("addv/undertrained-mid", tiny)
    task = get_family("addv").task(vcfg)
    base = forks_mod.Policy.load(tmp_path / "run" / "addv-undertrained-mid" / "base")
    ev = forks_mod.EvalConfig(max_new_tokens=v["max_new_tokens"], limit=6, temperature=1.0, n=3)
    for r in v["per_seed"]:
        # base pass@1 drawn with the seed's own generator seed, 3 draws per problem (a multiple of 1/18)
        assert r["base_accuracy"] == forks_mod.evaluate(base, task, replace(ev, seed=r["seed"]))["accuracy"]
        assert r["gain"] == pytest.approx(r["tuned_accuracy"] - r["base_accuracy"], abs=1e-12)
        assert abs(r["tuned_accuracy"] * 18 - round(r["tuned_accuracy"] * 18)) < 1e-9
        acc = r["intervention"]["accuracy"]
        assert list(acc) == ["base", "rl", "oracle", "random", "random+sample", "oracle+base", "entropy",
                             "entropy+base", "entropy+sample"]
        assert all(abs(a * 15 - round(a * 15)) < 1e-9 for a in acc.values())  # 5 problems x 3 draws
        assert set(r["recovered"]) == set(acc) - {"base", "rl"}
        assert r["rl_minus_base_argmax"] == {"oracle": acc["oracle"] - acc["oracle+base"],
                                             "entropy": acc["entropy"] - acc["entropy+base"]}
    assert v["base_accuracy"] == pytest.approx(sum(r["base_accuracy"] for r in v["per_seed"]) / 2)
    for name in ("entropy_sample_recovered", "random_sample_recovered", "oracle_sample_recovered",
                 "entropy_rl_minus_base_argmax", "oracle_base_recovered"):
        assert name in v["ci"]


@pytest.mark.parametrize("name", ["forks-oracle-sampled", "forks-oracle-sampled-quick", "forks-oracle-sampled-twins"])
def test_sampled_configs_load_and_name_valid_gates(name):
    cfg = load_config(ForksConfig, packaged_config(name))
    assert cfg.decode_temperature == 1.0 and cfg.decode_samples >= 2
    keys = gate_keys(check_gates(cfg.intervene_gates, cfg.decode_temperature))
    expect = {"random+sample": "entropy+sample", "random+base": "oracle+base"}
    assert any(name in keys for name in expect)
    for name, ref in expect.items():
        if name in keys:
            assert random_reference(keys, name) == ref


@pytest.mark.parametrize("name", ["forks-oracle-sampled", "forks-oracle-sampled-twins"])
def test_sampled_predictions_read_fields_the_experiment_writes(name):
    preds = load_predictions(f"results/predictions/{name}.yaml")
    assert preds.artifact == f"results/{name}"
    for p in preds.predictions:
        prefix = "summary.variants.[addv/undertrained-mid].ci."
        assert p.field.startswith(prefix) and p.field[len(prefix):] in METRICS, p.id
