"""fork-vs-rl on organism-zoo variants (`forklens experiment fork-contrast-zoo`, issue 15 item 5): the
generalised path end to end at tiny sizes, the letters-only verifier of the control, the no-contrast
outcome and the best-validation weights."""

from __future__ import annotations

import json
import zlib
from dataclasses import replace
from pathlib import Path

import pytest

from forklens.analysis.evaluate import EvalConfig
from forklens.errors import ConfigError
from forklens.experiments.fork_contrast_zoo import ForkContrastZooConfig, run_fork_contrast_zoo, variant_runs
from forklens.experiments.fork_vs_rl import ForkVsRLConfig, fork_vs_rl_runs
from forklens.organisms import get_family
from forklens.organisms.negctl import negctl_task
from forklens.tasks.addv import AddvTask
from forklens.tasks.arith_notation import NotationArithTask, to_letters

ROOT = Path(__file__).resolve().parents[1]
TINY = [f"{fam}:{pre}{key}" for fam, pre in (("addv", ""), ("negctl", "base.")) for key in
        ("model.hidden_size=32", "model.intermediate_size=64", "model.num_attention_heads=2",
         "model.num_hidden_layers=1", "pretrain.max_steps=4")] + ["addv:addv.max_digits=2", "negctl:base.arith.digits=2"]


def test_letters_only_verifier_rewards_the_expert_notation_only():
    either = NotationArithTask(expert_notation="letters")
    strict = NotationArithTask(expert_notation="letters", reward_notation="expert")
    p = strict.problems("test")[0]
    gold = strict.expert_response(p)  # letters throughout
    digits = NotationArithTask().expert_response(p)
    assert gold == to_letters(digits) and "A=" in gold
    assert either.verify(p, gold) == either.verify(p, digits) == 1.0
    assert strict.verify(p, gold) == 1.0 and strict.verify(p, digits) == 0.0
    mixed = digits.replace("A=", "A=" + to_letters(p.answer[:1]) + "|")  # a letter, then junk: not the answer
    assert strict.verify(p, mixed) == 0.0
    wrong = gold[: gold.index("A=") + 2] + to_letters(str(int(p.answer) + 1))
    assert strict.verify(p, wrong) == 0.0
    with pytest.raises(ConfigError, match="reward notation 'letter'"):
        NotationArithTask(reward_notation="letter")


def test_notation_strict_shares_the_notation_base_and_only_changes_the_reward():
    fam = get_family("negctl")
    strict, long = fam.variant_config("notation-strict"), fam.variant_config("notation-long")
    assert fam.variant("notation-strict").role == "negative-control"
    assert strict.base == long.base and strict.tune == long.tune and strict.notation == long.notation == "letters"
    assert (strict.reward, long.reward) == ("expert", "either")
    assert negctl_task(strict).reward_notation == "expert" and negctl_task(long).reward_notation == "either"


def test_bad_variants_fail_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match="is not FAMILY/VARIANT"):
        variant_runs(ForkContrastZooConfig(variants=["addv"]))
    with pytest.raises(ConfigError, match="has no variant 'nope'"):
        variant_runs(ForkContrastZooConfig(variants=["addv/nope"]))
    with pytest.raises(ConfigError, match="is not FAMILY:KEY=VALUE"):
        variant_runs(ForkContrastZooConfig(family_overrides=["addv.pretrain.max_steps=3"]))
    cfg = ForkVsRLConfig(keep_best=True)
    cfg.rl.lora.enabled = True
    with pytest.raises(ConfigError, match="keep_best restores full weights"):
        fork_vs_rl_runs(cfg, tmp_path / "a")
    with pytest.raises(ConfigError, match="is not FAMILY/VARIANT"):
        fork_vs_rl_runs(ForkVsRLConfig(variant="addv-undertrained"), tmp_path / "b")
    with pytest.raises(ConfigError, match="set `variant`"):
        fork_vs_rl_runs(ForkVsRLConfig(variant_overrides=["seed=1"]), tmp_path / "c")


def test_fork_contrast_zoo_end_to_end_tiny(tmp_path, monkeypatch):
    """Both default variants at tiny sizes through the zoo: validation disjoint from test, best-validation
    weights reported, fork-contrast trained where outcomes are mixed and a no-op where nothing can be
    contrasted (the control), the stamped artifact with every field the predictions name."""
    from forklens.report.artifacts import load_artifact
    from forklens.report.predictions import load_predictions, verdict

    monkeypatch.setenv("FORKLENS_CACHE", str(tmp_path / "cache"))
    # a tiny addv base is never right; a fixed pseudo-random verdict gives it mixed outcomes to contrast
    monkeypatch.setattr(AddvTask, "verify", lambda self, p, text: float(zlib.crc32(text.encode()) % 2))
    art = tmp_path / "results" / "fork-contrast-zoo"
    run = replace(ForkContrastZooConfig().run, seeds=2, val_problems=6, eval=EvalConfig(limit=6), patience=1,
                  fork_lr_grid=[1e-4, 1e-3], token_margin=2)
    run.rl.train = replace(run.rl.train, max_steps=2)
    run.rl.sampling = replace(run.rl.sampling, prompts_per_step=2, group_size=3)
    run.fork.train = replace(run.fork.train, max_steps=2)
    run.fork.data = replace(run.fork.data, problems=3, rollouts_per_problem=4)
    cfg = ForkContrastZooConfig(run=run, family_overrides=TINY, artifact=str(art))
    s = run_fork_contrast_zoo(cfg, tmp_path / "run", progress=False)
    assert list(s["variants"]) == ["addv/undertrained-mid", "negctl/notation-strict"]
    for v in s["variants"].values():
        assert v["validation"]["n_problems"] == 6 and v["validation"]["test_prompt_overlap"] == 0
        assert v["eval"]["n_problems"] == 6 and v["eval"]["test_model"] == "best-validation weights"
        assert v["comparison_base"]["target"] == pytest.approx(v["base"]["val_accuracy"] + 0.03)
    addv = s["variants"]["addv/undertrained-mid"]
    task = AddvTask(get_family("addv").variant_config("undertrained-mid", overrides=["addv.max_digits=2"]).addv)
    assert addv["base"]["role"] == "precondition" and addv["base"]["max_new_tokens"] == max(
        len(task.expert_response(p)) for p in task.problems("test")) + 2
    for m in ("grpo", "fork-contrast"):
        for rec in addv["curves"][m].values():
            best = rec["accuracy"].index(max(rec["accuracy"]))
            assert rec["best_step"] == rec["steps"][best]  # the first evaluation with the best accuracy
            assert 0.0 <= rec["test_accuracy_at_stop"] <= 1.0
    fc = addv["methods"]["fork-contrast"]["per_seed"]
    assert all(r["steps"] >= 1 and r["rollouts_kept"] > 0 for r in fc)
    gain = addv["gains"]["fork-contrast"]["test"]
    assert gain["mean"] == pytest.approx(sum(r["accuracy"] for r in fc) / 2 - addv["base"]["accuracy"])
    # the control: letters are never written, so nothing to contrast and no reward: the model stays the base
    ctl = s["variants"]["negctl/notation-strict"]
    assert ctl["base"]["val_accuracy"] == 0.0 and ctl["base"]["role"] == "negative-control"
    for r in ctl["methods"]["fork-contrast"]["per_seed"]:
        assert r["no_contrast"] and r["steps"] == 0 and r["accuracy"] == ctl["base"]["accuracy"] and r["flops"] > 0
    assert ctl["gains"]["fork-contrast"]["test"]["mean"] == 0.0 and ctl["gains"]["fork-contrast"]["val"]["high"] == 0.0
    assert [r["learning_rate"] for r in ctl["search"]["fork-contrast"]["runs"]] == [1e-4, 1e-3]
    artifact = load_artifact(art)
    assert artifact.stamp["seeds"] == [0, 1] and (art / "plots" / "accuracy_vs_flops.png").is_file()
    assert {"addv-undertrained-mid_seed-0_grpo", "addv-undertrained-mid_seed-1_fork-contrast",
            "negctl-notation-strict_seed-1_grpo"} <= {p.stem for p in (art / "metrics").iterdir()}
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["variants_done"] == 2
    preds = load_predictions(ROOT / "results" / "predictions" / "fork-contrast-zoo.yaml")
    for p in preds.predictions:
        v = verdict(p, artifact)  # the field exists; a target no run reached is null (missing), never absent
        assert v.outcome != "missing" or "is null" in v.reason, (p.id, v.reason)
