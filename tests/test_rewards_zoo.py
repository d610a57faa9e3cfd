"""`forklens experiment rewards --set family=shortcut`: one tiny run of both shortcut variants; the summary
holds every field the pre-registered predictions name, gains and paired differences are what the
per-seed rows say, and bad settings fail before anything trains."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from forklens.cli import main
from forklens.errors import ConfigError
from forklens.experiments import rewards as rw
from forklens.experiments.rewards_zoo import GAINS, METRICS, cue_probability, summarise_variant, variant_contrast
from forklens.report.artifacts import load_artifact, lookup
from forklens.report.predictions import load_predictions, verdict

ROOT = Path(__file__).resolve().parents[1]
TINY = ["organism=[model.hidden_size=16,model.intermediate_size=32,model.num_hidden_layers=1,"
        "pretrain.max_steps=3,batch_size=8,task.max_steps=2,task.teacher_max_steps=2]",
        "zoo_rl.train.max_steps=2", "zoo_rl.sampling.prompts_per_step=2", "zoo_rl.sampling.group_size=2",
        "eval_problems=4", "confidence_m=1", "seeds=1"]


def _tiny_run(tmp_path_factory, name: str, config: str, extra: list[str]):
    """The experiment at a tiny size in its own folder and cache: (folder, summary)."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp(name)
    mp.setenv("FORKLENS_CACHE", str(root / "cache"))
    mp.chdir(root)
    try:
        args = ["experiment", "rewards", "--config", str(ROOT / "src/forklens/configs" / config),
                "--out", str(root / "run"), "--set", "artifact=results/tiny"]
        for t in [*TINY, *extra]:
            args += ["--set", t]
        assert main(args) == 0
    finally:
        mp.undo()
    return root, json.loads((root / "run" / "summary.json").read_text())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return _tiny_run(tmp_path_factory, "rewards-zoo", "rewards-shortcut.yaml", [])


def test_summary_has_both_variants_every_run_and_the_predicted_fields(tiny_run):
    root, s = tiny_run
    assert s["family"] == "shortcut" and s["seeds"] == [0]
    assert list(s["runs"]) == ["outcome", "outcome+confidence", "outcome+mar"]
    assert {v: e["role"] for v, e in s["variants"].items()} == {"cue": "precondition", "no-cue": "control"}
    art = load_artifact(root / "results" / "tiny")
    assert art.stamp["seeds"] == [0] and (root / "results" / "tiny" / "plots" / "guess_rate.png").is_file()
    preds = load_predictions(ROOT / "results" / "predictions" / "shortcut-rewards.yaml")
    for p in preds.predictions:  # every field the registered predictions read exists and is judged
        value = lookup({"summary": art.summary}, p.field)  # raises if the experiment does not write it
        # a tiny model may answer nothing right, leaving the wrong-fact rate undefined (null)
        assert verdict(p, art).outcome in ("supported", "refuted", "inconclusive") or (
            value is None and "wrong_fact" in p.field)
    for e in s["variants"].values():
        assert e["eval_problems"] == 4 and e["max_new_tokens"] == 11 * 2 + 4 + 8
        assert e["base"]["guess_prob"] is None or 0.0 <= e["base"]["guess_prob"] <= 1.0
        for name, run in e["runs"].items():
            assert [r["seed"] for r in run["per_seed"]] == [0] and all(r["steps"] == 2 for r in run["per_seed"])
            gains = [r["guess_rate"] - e["base"]["guess_rate"] for r in run["per_seed"]]
            assert run["guess_rate_gain"]["mean"] == pytest.approx(sum(gains), abs=1e-12)
        probe = [r["probe_tokens"] for r in e["runs"]["outcome+confidence"]["per_seed"]]
        assert all(t > 0 for t in probe) and all(r["probe_tokens"] == 0 for r in e["runs"]["outcome"]["per_seed"])
    # each reward component is logged per step
    metrics = json.loads((root / "results" / "tiny" / "metrics" / "cue_outcome_mar_seed-0.json").read_text())
    assert {"reward/shortcut_verifier", "reward/kmr", "reward/rmr"} <= set(metrics[0])
    assert "| cue | outcome+mar-outcome (paired) |" in (root / "run" / "report.md").read_text()


def test_differences_are_paired_by_seed():
    base = {"accuracy": 0.2, "guess_rate": 0.1}

    def row(seed, acc, guess, wrong):
        return {"seed": seed, "accuracy": acc, "guess_rate": guess, "wrong_fact_rate_when_right": wrong,
                "right_with_wrong_facts": 0.0, "kmr_mean": 0.5, "rmr_mean": 0.5}

    per_run = {"outcome": [row(0, 0.5, 0.4, 0.5), row(1, 0.3, 0.2, None)],
               "outcome+mar": [row(0, 0.4, 0.1, 0.25), row(1, 0.3, 0.3, 0.0)]}
    s = summarise_variant(base, per_run)
    d = s["differences"]["outcome+mar-outcome"]
    assert d["guess_rate"]["mean"] == pytest.approx(((0.1 - 0.4) + (0.3 - 0.2)) / 2)
    assert d["wrong_fact_rate_when_right"]["mean"] == pytest.approx(-0.25) and d["wrong_fact_rate_when_right"]["n"] == 1
    assert s["runs"]["outcome"]["wrong_fact_rate_when_right"]["n"] == 1
    assert s["runs"]["outcome"]["guess_rate_gain"]["mean"] == pytest.approx(0.2)
    assert set(s["runs"]["outcome"]) == {*METRICS, *(f"{m}_gain" for m in GAINS), "per_seed"}
    assert {"guess_rate_gain", "guess_prob_gain", "accuracy_gain"} <= set(s["runs"]["outcome"])  # the old names
    assert s["runs"]["outcome"]["guess_prob"] is None and s["runs"]["outcome"]["guess_prob_gain"] is None
    assert s["runs"]["outcome"]["sampled_guess_rate"] is None  # not measured (zoo_samples = 0)


def test_variant_contrast_is_the_precondition_effect_minus_the_control_effect_paired_by_seed():
    def row(seed, guess, wrong):
        return {"seed": seed, "sampled_guess_rate": guess, "sampled_right_with_wrong_facts": wrong}

    def variant(role, base_guess, outcome, mar):
        per_run = {"outcome": [row(s, *x) for s, x in enumerate(outcome)],
                   "outcome+mar": [row(s, *x) for s, x in enumerate(mar)]}
        return {"role": role, "base": {"sampled_guess_rate": base_guess, "sampled_right_with_wrong_facts": None},
                **summarise_variant({"sampled_guess_rate": base_guess}, per_run)}

    summary = {"runs": {"outcome": ["outcome"], "outcome+mar": ["outcome", "kmr", "rmr"]}, "variants": {
        "pre": variant("precondition", 0.3, [(0.6, 0.4), (0.5, 0.3)], [(0.2, 0.1), (0.3, 0.2)]),
        "ctl": variant("control", 0.3, [(0.1, 0.05), (0.2, 0.0)], [(0.1, 0.0), (0.1, 0.0)])}}
    c = variant_contrast(summary)
    assert (c["precondition"], c["control"]) == ("pre", "ctl")
    # outcome - base: pre +0.3, +0.2; ctl -0.2, -0.1 -> paired contrasts 0.5, 0.3
    assert c["outcome-base"]["sampled_guess_rate"]["mean"] == pytest.approx(0.4)
    assert c["outcome-base"]["sampled_guess_rate"]["n"] == 2
    # mar - outcome on right-with-wrong: pre -0.3, -0.1; ctl -0.05, 0.0 -> -0.25, -0.1
    assert c["outcome+mar-outcome"]["sampled_right_with_wrong_facts"]["mean"] == pytest.approx(-0.175)
    assert c["outcome-base"]["sampled_right_with_wrong_facts"] is None  # the base does not define it
    summary["variants"]["ctl"]["role"] = "precondition"
    assert variant_contrast(summary) is None  # needs one precondition and one control


def _cfg(**kw):
    return replace(rw.RewardsExperimentConfig(family="shortcut", runs=["outcome", "outcome+mar"]), **kw)


@pytest.mark.parametrize("kw, match", [
    ({"variants": ["cue", "nope"]}, "nope"),
    ({"runs": ["outcome", "outcome+milestones"]}, "milestones"),
    ({"runs": ["outcome+mar"]}, "must include 'outcome'"),
    ({"runs": ["outcome", "typo"]}, "typo"),
    ({"family": "addv"}, "grades chains"),
    ({"family": "nope"}, "nope"),
])
def test_bad_settings_fail_before_training(tmp_path, kw, match):
    with pytest.raises(ConfigError, match=match):
        rw.run_rewards(_cfg(**kw), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_cue_probability_is_the_teacher_forced_probability_of_the_cue_after_the_chain(tiny_run):
    import math

    from forklens.policy import Policy
    from forklens.tasks.base import Problem

    root, _ = tiny_run
    policy = Policy.load(root / "run" / "cue" / "base")
    p = Problem("q", "05+7*02?26=", "19", meta={})
    chain = "02:05+7=12;01:12+7=19;"
    ids = policy.encode_prompt(p.prompt + chain + "A=")
    want = math.exp(float(sum(policy.score([ids], [policy.tokenizer("26", add_special_tokens=False)["input_ids"]])[0].logprob)))
    assert 0.0 < want < 1.0
    assert cue_probability(policy, [p], [chain + "A=19"]) == pytest.approx(want, rel=1e-6)
    # a cue equal to the chain's result is not a guess: no problem qualifies
    q = Problem("r", "05+7*02?19=", "19", meta={})
    assert cue_probability(policy, [q], [chain + "A=19"]) is None
    # an answer that is not written yet: the chain is the whole text
    assert cue_probability(policy, [p], [chain]) == pytest.approx(want, rel=1e-6)


@pytest.fixture(scope="module")
def premature_run(tmp_path_factory):
    return _tiny_run(tmp_path_factory, "rewards-premature", "rewards-shortcut-premature.yaml", ["zoo_samples=2"])


def test_premature_run_writes_the_sampled_measures_the_contrast_and_every_predicted_field(premature_run):
    root, s = premature_run
    assert {v: e["role"] for v, e in s["variants"].items()} == {"premature": "precondition",
                                                                "premature-no-cue": "control"}
    art = load_artifact(root / "results" / "tiny")
    preds = load_predictions(ROOT / "results" / "predictions" / "shortcut-rewards-premature.yaml")
    for p in preds.predictions:
        value = lookup({"summary": art.summary}, p.field)  # raises if the experiment does not write it
        assert verdict(p, art).outcome in ("supported", "refuted", "inconclusive") or (
            value is None and "wrong_fact" in p.field)
    assert s["contrast"]["precondition"] == "premature" and s["contrast"]["control"] == "premature-no-cue"
    for e in s["variants"].values():
        b = e["base"]
        assert 0.0 <= b["sampled_premature_rate"] <= 1.0 and 0.0 <= b["sampled_guess_rate"] <= 1.0
        for run in e["runs"].values():
            r = run["per_seed"][0]
            assert run["sampled_guess_rate_gain"]["mean"] == pytest.approx(r["sampled_guess_rate"] - b["sampled_guess_rate"])
    # the contrast of the outcome run's gain is the precondition's gain minus the control's (one seed)
    pre, ctl = (s["variants"][v]["runs"]["outcome"]["sampled_guess_rate_gain"]["mean"]
                for v in ("premature", "premature-no-cue"))
    assert s["contrast"]["outcome-base"]["sampled_guess_rate"]["mean"] == pytest.approx(pre - ctl, abs=1e-12)
