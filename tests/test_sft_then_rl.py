"""`experiment sft-then-rl` as a compute-matched comparison (issue 14): validation held out from the
training split, one problem pool for every arm, RL stopped by the plateau rule, and the summary
fields the pre-registered predictions name."""

from dataclasses import replace
from pathlib import Path

import pytest

from forklens.analysis.curves import Curve, stop_index
from forklens.errors import ConfigError
from forklens.experiments import sft_then_rl as st
from forklens.organisms.arith import OrganismConfig
from forklens.report.artifacts import lookup
from forklens.report.predictions import load_predictions, verdict
from forklens.tasks import get_task
from forklens.train.sources import GRPOSource, InterleavedSFTSource, SFTSource

ROOT = Path(__file__).resolve().parents[1]
CAP = 5


def _tiny_config(**kw) -> st.SFTThenRLConfig:
    cfg = st.SFTThenRLConfig()
    organism = replace(cfg.organism, model=replace(cfg.organism.model, num_hidden_layers=1),
                       pretrain=replace(cfg.organism.pretrain, max_steps=3))
    rl = replace(cfg.rl, train=replace(cfg.rl.train, max_steps=CAP, save_every=0),
                 sampling=replace(cfg.rl.sampling, max_new_tokens=8))
    base = dict(organism=organism, rl=rl, sft=replace(cfg.sft, max_steps=2), sft_batch_size=8, pool_size=16,
                n_validation=6, eval_every=1, eval=replace(cfg.eval, limit=4), seeds=2,
                methods=["sft-then-rl", "luffy", "relift"],
                # min_delta above any possible gain: every evaluation after the start is stale, so each RL
                # phase must stop after exactly `patience` evaluations whatever the accuracies are
                patience=2, min_delta=2.0)
    return replace(cfg, **{**base, **kw})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny in-process run; records the data source of every training phase."""
    sources = []
    real_train = st.train

    def spy(policy, objective, objective_config, source, config, out_dir, **kw):
        sources.append((Path(out_dir).name, source))
        return real_train(policy, objective, objective_config, source, config, out_dir, progress=False,
                          **{k: v for k, v in kw.items() if k != "progress"})

    mp = pytest.MonkeyPatch()
    mp.setattr(st, "train", spy)
    mp.setenv("FORKLENS_CACHE", str(tmp_path_factory.mktemp("cache")))
    try:
        cfg = _tiny_config()
        out = tmp_path_factory.mktemp("sft-then-rl") / "run"
        summary = st.run_sft_then_rl(cfg, out)
    finally:
        mp.undo()
    return cfg, out, summary, sources


def test_validation_is_held_out_from_the_training_split_and_disjoint_from_test_and_pool():
    cfg = st.SFTThenRLConfig(pool_size=300, n_validation=200)
    task = get_task(cfg.organism.task, cfg.organism.arith)
    pool, validation = st.split_problems(task, cfg)
    assert len(pool) == 300 and len(validation) == 200
    train_prompts = [p.prompt for p in task.problems("train")]
    test_prompts = {p.prompt for p in task.problems("test")}
    val_prompts = {p.prompt for p in validation}
    assert val_prompts <= set(train_prompts)  # a slice of the training split, never the test split
    assert not val_prompts & test_prompts
    assert not val_prompts & {p.prompt for p in pool}
    assert [p.prompt for p in validation] == train_prompts[-200:]


def test_pool_plus_validation_larger_than_the_training_split_is_refused():
    cfg = st.SFTThenRLConfig(pool_size=4000, n_validation=200)
    task = get_task(cfg.organism.task, cfg.organism.arith)
    with pytest.raises(ConfigError, match=r"pool_size \(4000\) \+ n_validation \(200\) exceeds the 4096"):
        st.split_problems(task, cfg)


def test_unknown_or_empty_methods_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown method\(s\) \['ppo'\]"):
        st.run_sft_then_rl(_tiny_config(), tmp_path / "a", ["ppo"])
    with pytest.raises(ConfigError, match="no method to run"):
        st.run_sft_then_rl(_tiny_config(), tmp_path / "b", [])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # refused before writing


def test_every_arm_draws_from_the_same_pool(tiny_run):
    cfg, _, _, sources = tiny_run
    task = get_task(cfg.organism.task, cfg.organism.arith)
    pool, _ = st.split_problems(task, cfg)
    pool_prompts = [p.prompt for p in pool]
    by_kind = {}
    for name, source in sources:
        if isinstance(source, SFTSource):
            prompts = [prompt for prompt, _ in source.examples]
        else:
            rl = source.rl if isinstance(source, InterleavedSFTSource) else source
            assert isinstance(rl, GRPOSource)
            prompts = [p.prompt for p in rl.problems]
        by_kind.setdefault(name, []).append(prompts)
    # 2 seeds x (SFT correct, SFT offload-accum, sft-then-rl, luffy, relift)
    assert sorted(by_kind) == ["luffy", "relift", "sft-none", "sft-offload-accum", "sft-then-rl"]
    assert all(len(v) == 2 for v in by_kind.values())
    assert all(prompts == pool_prompts for v in by_kind.values() for prompts in v)


def test_the_plateau_rule_stops_every_rl_phase(tiny_run):
    cfg, _, summary, _ = tiny_run
    for name in ("sft-then-rl", "luffy", "relift"):
        for run in summary["methods"][name]["runs"]:
            # start + `patience` stale evaluations, one per step: stopped at step 2 of the 5-step cap
            assert run["rl_steps"] == cfg.patience == 2 < CAP and run["stopped_by_rule"] is True
            c = summary["curves"][name][str(run["seed"])]
            assert len(c["accuracy"]) == cfg.patience + 1
            assert stop_index(Curve(tuple(c["flops"]), tuple(c["accuracy"])), cfg.patience, cfg.min_delta) == 2


def test_sft_flops_are_the_starting_cost_of_the_sft_then_rl_curve(tiny_run):
    _, _, summary, _ = tiny_run
    for seed in summary["seeds"]:
        sft = summary["sft_only"]["none"]["per_seed"][str(seed)]
        c = summary["curves"]["sft-then-rl"][str(seed)]
        assert c["flops"][0] == sft["flops"] > 0 and c["accuracy"][0] == sft["validation_accuracy"]
        for arm in ("luffy", "relift"):
            assert summary["curves"][arm][str(seed)]["flops"][0] == 0.0
            assert summary["curves"][arm][str(seed)]["accuracy"][0] == summary["base"]["validation_accuracy"]


def test_summary_has_every_field_the_predictions_name(tiny_run):
    _, out, summary, _ = tiny_run
    preds = load_predictions(ROOT / "results" / "predictions" / "sft-then-rl.yaml")
    data = {"stamp": {}, "summary": summary}
    for p in preds.predictions:
        value = lookup(data, p.field)
        assert {"mean", "low", "high", "level"} <= set(value) and value["level"] == 0.95
        assert verdict(p, data).outcome in {"supported", "refuted", "inconclusive"}
    acc = {b: summary["sft_only"][b]["per_seed"] for b in ("none", "offload-accum")}
    diffs = [acc["offload-accum"][s]["validation_accuracy"] - acc["none"][s]["validation_accuracy"]
             for s in ("0", "1")]
    assert summary["sft_only"]["offload_bug_difference"]["mean"] == pytest.approx(sum(diffs) / 2, abs=1e-12)
    assert summary["comparison"]["target_rule"] == "best plateau over all runs - 0.01"
    for name in ("sft-then-rl", "luffy", "relift"):
        assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in summary["methods"][name]["runs"])
    assert (out / "summary.json").is_file() and (out / "table.md").is_file()
    assert (out / "accuracy_vs_flops.png").is_file()


def test_quick_recipe_loads_with_the_compared_arms_and_five_or_more_seeds():
    from forklens.config import load_config, packaged_config

    cfg = load_config(st.SFTThenRLConfig, packaged_config("sft-then-rl-quick"))
    assert cfg.seeds >= 5 and set(st.COMPARED) <= set(cfg.methods)
    assert (cfg.patience, cfg.min_delta) == (3, 0.005)
    assert isinstance(cfg.organism, OrganismConfig) and cfg.organism.pretrain.max_steps == 300
