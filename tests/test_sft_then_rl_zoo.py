"""`experiment sft-then-rl-zoo` (issue 15 item 5): sft-then-rl on a zoo variant (built through the zoo) and
on the arith control, end to end at a tiny size, and the fields its pre-registered predictions name."""

from dataclasses import replace
from pathlib import Path

import pytest

from forklens.errors import ConfigError
from forklens.experiments import sft_then_rl as st
from forklens.experiments import sft_then_rl_zoo as zoo
from forklens.report.artifacts import lookup
from forklens.report.predictions import load_predictions, verdict
from forklens.tasks.lengths import PROMPT_RE

ROOT = Path(__file__).resolve().parents[1]


def _tiny(sub: st.SFTThenRLConfig, **kw) -> st.SFTThenRLConfig:
    rl = replace(sub.rl, train=replace(sub.rl.train, max_steps=1, save_every=0),
                 sampling=replace(sub.rl.sampling, prompts_per_step=2, group_size=2))
    return replace(sub, rl=rl, sft=replace(sub.sft, max_steps=2), sft_batch_size=2, pool_size=8, n_validation=4,
                   eval_every=1, eval=replace(sub.eval, limit=4), **kw)


def _tiny_zoo() -> zoo.SFTThenRLZooConfig:
    cfg = zoo.SFTThenRLZooConfig(seeds=2, seed=3)
    pre = _tiny(cfg.precondition, overrides=["pretrain.max_steps=2", "model.hidden_size=32",
                                             "model.intermediate_size=64", "model.num_hidden_layers=1"])
    pre = replace(pre, rl=replace(pre.rl, sampling=replace(pre.rl.sampling, max_new_tokens=16)))
    ctrl = cfg.control
    organism = replace(ctrl.organism, model=replace(ctrl.organism.model, num_hidden_layers=1),
                       pretrain=replace(ctrl.organism.pretrain, max_steps=2))
    # the control runs the settings of sft-then-rl-zoo-control.yaml: a fixed target, no offload-bug SFT arm
    ctrl = _tiny(ctrl, organism=organism, target=0.5, sft_only_bugs=["none"])
    ctrl = replace(ctrl, rl=replace(ctrl.rl, sampling=replace(ctrl.rl.sampling, max_new_tokens=8)))
    return replace(cfg, precondition=pre, control=ctrl)


@pytest.fixture(scope="module")
def tiny_zoo_run(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FORKLENS_CACHE", str(tmp_path_factory.mktemp("cache")))
        out = tmp_path_factory.mktemp("sft-then-rl-zoo") / "run"
        return out, zoo.run_sft_then_rl_zoo(_tiny_zoo(), out)


def test_both_sides_run_on_their_own_organism_with_the_shared_seeds(tiny_zoo_run):
    out, summary = tiny_zoo_run
    assert summary["seeds"] == [3, 4]
    assert summary["organisms"] == {"precondition": "lengths/varied", "control": "arith (arith)"}
    assert summary["precondition"]["organism"] == "lengths/varied" and summary["precondition"]["task"] == "lengths"
    for side in zoo.SIDES:
        assert summary[side]["seeds"] == [3, 4]
        assert set(summary[side]["methods"]) == set(st.COMPARED)
        assert (out / f"accuracy_vs_flops_{side}.png").is_file()
    # the zoo variant's base is a lengths organism: its pool prompts and the base's config say so
    base_cfg = (out / "precondition" / "base" / "organism.json").read_text()
    assert '"p_carry": 0.0' in base_cfg and '"hidden_size": 32' in base_cfg
    assert (out / "summary.json").is_file() and "## precondition: lengths/varied" in (out / "table.md").read_text()


def test_zoo_pool_is_the_variants_training_split():
    cfg = _tiny_zoo().precondition
    task = st.organism_task(cfg)
    pool, validation = st.split_problems(task, cfg)
    assert all(PROMPT_RE.match(p.prompt) for p in pool + validation)
    assert [p.prompt for p in validation] == [p.prompt for p in task.problems("train")[-4:]]
    # the varied variant spans 1-11 steps; the equal control would fix 6
    assert {p.meta["steps"] for p in task.problems("train")[:11]} == set(range(1, 12))


def test_contrast_is_the_paired_difference_of_the_two_sides_gaps(tiny_zoo_run):
    _, summary = tiny_zoo_run

    def gaps(side: str, method: str) -> dict[int, float]:
        plateau = {m: {r["seed"]: r["validation_plateau"] for r in summary[side]["methods"][m]["runs"]}
                   for m in (method, "sft-then-rl")}
        return {s: plateau[method][s] - plateau["sft-then-rl"][s] for s in plateau[method]}

    for method in ("luffy", "relift"):
        pre, ctrl = gaps("precondition", method), gaps("control", method)
        expected = sum(pre[s] - ctrl[s] for s in pre) / len(pre)
        got = summary["contrast"]["plateau_difference"][f"{method}-sft-then-rl"]
        assert got["mean"] == pytest.approx(expected, abs=1e-12) and got["n"] == 2
        assert got["low"] <= got["mean"] <= got["high"]


@pytest.mark.parametrize("name", ["sft-then-rl-zoo.yaml", "sft-then-rl-zoo-control.yaml"])
def test_summary_has_every_field_the_predictions_name(tiny_zoo_run, name):
    _, summary = tiny_zoo_run
    preds = load_predictions(ROOT / "results" / "predictions" / name)
    data = {"stamp": {}, "summary": summary}
    for p in preds.predictions:
        value = lookup(data, p.field)
        if "ratio" in p.field and value is None:  # no seed of a method / the reference reached the target
            assert verdict(p, data).outcome == "missing"
            continue
        assert {"mean", "low", "high", "level"} <= set(value) and value["level"] == 0.95
        assert verdict(p, data).outcome in {"supported", "refuted", "inconclusive"}


def test_fixed_target_censored_ratios_and_sft_only_arms(tiny_zoo_run):
    _, summary = tiny_zoo_run
    ctrl, pre = summary["control"]["comparison"], summary["precondition"]["comparison"]
    assert ctrl["target"] == 0.5 and ctrl["target_rule"] == "fixed accuracy 0.5"
    assert pre["target_rule"].startswith("best plateau")
    assert set(summary["control"]["sft_only"]) == {"none"}  # no offload arm, so no bug difference either
    assert {"none", "offload-accum", "offload_bug_difference"} <= set(summary["precondition"]["sft_only"])
    for side in zoo.SIDES:
        comp = summary[side]["comparison"]
        curves = summary[side]["curves"]
        for m in ("luffy", "relift"):
            lb = comp["flops_to_target_ratio_lb"][f"{m}/sft-then-rl"]["with_search"]
            ref = comp["methods"]["sft-then-rl"]["per_seed"]
            mine = comp["methods"][m]["per_seed"]
            for s in ("3", "4"):
                if ref[s] is None:
                    expected = None
                else:  # the seed's FLOPs to the target, or its whole budget (last evaluation) when never reached
                    expected = (mine[s] if mine[s] is not None else curves[m][s]["flops"][-1]) / ref[s]
                got = None if lb is None else lb["per_seed"][s]["ratio_lb"]
                assert got == (None if expected is None else pytest.approx(expected, rel=1e-12))


def test_bad_sides_are_refused_before_anything_is_written(tmp_path):
    cfg = _tiny_zoo()
    with pytest.raises(ConfigError, match="control.methods must include sft-then-rl, luffy, relift"):
        zoo.run_sft_then_rl_zoo(replace(cfg, control=replace(cfg.control, methods=["sft-then-rl", "luffy"])),
                                tmp_path / "a")
    with pytest.raises(ConfigError, match="unknown organism family 'nope'"):
        zoo.run_sft_then_rl_zoo(replace(cfg, precondition=replace(cfg.precondition, family="nope")), tmp_path / "b")
    with pytest.raises(ConfigError, match="has no variant 'long'"):
        zoo.run_sft_then_rl_zoo(replace(cfg, precondition=replace(cfg.precondition, variant="long")), tmp_path / "c")
    for bugs in (["offload-accum"], ["none", "typo"]):
        with pytest.raises(ConfigError, match="sft_only_bugs must include none and only name none, offload-accum"):
            zoo.run_sft_then_rl_zoo(replace(cfg, control=replace(cfg.control, sft_only_bugs=bugs)), tmp_path / "d")
    assert not any((tmp_path / d).exists() for d in "abcd")


def test_variant_without_family_is_refused_and_arith_stays_the_default():
    with pytest.raises(ConfigError, match="variant and overrides need a family"):
        st.organism_task(st.SFTThenRLConfig(variant="varied"))
    with pytest.raises(ConfigError, match="family 'lengths' needs a variant; variants: varied, equal"):
        st.organism_task(st.SFTThenRLConfig(family="lengths"))
    default = st.SFTThenRLConfig()
    assert default.family == "" and st.organism_task(default).name == "arith"
    assert st.organism_name(default) == "arith (arith)"


def test_recipes_load_with_the_registered_settings():
    from forklens.config import load_config, packaged_config
    from forklens.organisms.arith import OrganismConfig, organism_key

    cfg = load_config(zoo.SFTThenRLZooConfig, packaged_config("sft-then-rl-zoo"))
    assert (cfg.seeds, cfg.seed) == (5, 10)
    pre, ctrl = cfg.precondition, cfg.control
    assert (pre.family, pre.variant, pre.sft.max_steps, pre.pool_size, pre.within) == ("lengths", "varied", 198, 528, 0.05)
    assert pre.rl.sampling.max_new_tokens >= 126  # the longest expert response (11 steps) fits
    assert (ctrl.family, ctrl.organism.pretrain.max_steps, ctrl.n_validation, ctrl.rl.train.max_steps) == ("", 300, 256, 30)
    quick = load_config(zoo.SFTThenRLZooConfig, packaged_config("sft-then-rl-zoo-quick"))
    assert quick.seeds == 1 and quick.precondition.family == "lengths" and quick.control.family == ""
    # the control run overlays sft-then-rl-zoo.yaml (the recipe): the default arith organism, fixed 12 steps
    for name, size in (("sft-then-rl-zoo-control", "full"), ("sft-then-rl-zoo-control-quick", "tiny")):
        c = load_config(zoo.SFTThenRLZooConfig, ROOT / "src" / "forklens" / "configs" / f"{name}.yaml", base=cfg)
        for sub in (c.precondition, c.control):
            assert sub.sft_only_bugs == ["none"] and sub.patience * sub.eval_every > sub.rl.train.max_steps
        assert (c.precondition.target, c.control.target) == (0.25, 0.95)
        if size == "full":
            assert (c.seeds, c.seed) == (5, 20) and c.precondition.sft == cfg.precondition.sft
            assert organism_key(c.control.organism) == organism_key(OrganismConfig())
            assert c.control.sft == st.SFTThenRLConfig().sft and c.precondition.rl.train.max_steps == 16
        else:
            assert c.seeds == 1 and c.control.organism.pretrain.max_steps == 40
