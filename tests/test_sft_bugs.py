"""`experiment sft-bugs`: one tiny run of both lengths variants; the arms of a seed start from the same
base and see the same batches, the summary holds the fields the pre-registered predictions name, and
bad settings fail before anything trains."""

from dataclasses import replace
from pathlib import Path

import pytest

from forklens.errors import ConfigError
from forklens.experiments import sft_bugs as sb
from forklens.report.artifacts import lookup
from forklens.report.predictions import load_predictions

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.hidden_size=16", "model.intermediate_size=32", "model.num_hidden_layers=1", "pretrain.max_steps=3",
        "batch_size=8"]


def _tiny(**kw) -> sb.SFTBugsConfig:
    cfg = sb.SFTBugsConfig(organism=list(TINY), sft_batch_size=4, pool_size=8, n_validation=11, seeds=2)
    cfg = replace(cfg, sft=replace(cfg.sft, max_steps=2, micro_batch_size=1),
                  eval=replace(cfg.eval, max_new_tokens=16))
    return replace(cfg, **kw)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("FORKLENS_CACHE", str(tmp_path_factory.mktemp("cache")))
    try:
        out = tmp_path_factory.mktemp("sft-bugs") / "run"
        summary = sb.run_sft_bugs(_tiny(), out)
    finally:
        mp.undo()
    return out, summary


def test_summary_has_every_arm_cost_and_contrast(tiny_run):
    out, s = tiny_run
    assert s["seeds"] == [0, 1] and s["bugs"] == list(sb.BUGS)
    assert set(s["variants"]) == {"varied", "equal"}
    assert s["variants"]["varied"]["role"] == "precondition" and s["variants"]["equal"]["role"] == "control"
    eq = s["variants"]["equal"]["response_tokens"]
    assert eq["min"] == eq["max"] == 71
    for v in s["variants"].values():
        for bug in sb.BUGS:
            per_seed = v["sft"][bug]["per_seed"]
            assert set(per_seed) == {"0", "1"} and all(r["steps"] == 2 for r in per_seed.values())
            assert (out / per_seed["0"]["metrics"]).is_file()
        for bug in sb.BUGS[1:]:
            cost = v["bug_cost"][bug]
            acc = {b: [v["sft"][b]["per_seed"][k]["validation_accuracy"] for k in ("0", "1")] for b in ("none", bug)}
            assert cost["mean"] == pytest.approx(sum(a - b for a, b in zip(acc[bug], acc["none"])) / 2, abs=1e-12)
    assert set(s["contrast"]) == {"offload-accum", "mean-of-means"} and s["contrast_of"] == "varied - equal"
    assert (out / "accuracy_by_steps.png").is_file() and (out / "table.md").read_text().count("| varied") == 1


def test_same_seed_arms_share_batches_and_base(tiny_run):
    out, s = tiny_run
    import json

    def rows(v, bug, seed):
        return [json.loads(x) for x in (out / v / f"seed{seed}" / f"sft-{bug}" / "metrics.jsonl").read_text().splitlines()]

    for v in ("varied", "equal"):
        none, mom = rows(v, "none", 0), rows(v, "mean-of-means", 0)
        # step 0: same weights, same batch -> the same (global-mean) loss is logged whatever the bug
        assert none[0]["loss"] == pytest.approx(mom[0]["loss"], rel=1e-6)
        assert none[0]["trained_tokens"] == mom[0]["trained_tokens"]


def test_predictions_name_fields_of_the_summary(tiny_run):
    _, s = tiny_run
    path = ROOT / "results" / "predictions" / "sft-bugs.yaml"
    preds = load_predictions(path)
    for p in preds.predictions:
        lookup({"summary": s}, p.field)  # raises if the experiment does not write the field


def test_curriculum_arm_trains_in_reverse_perplexity_order(tmp_path, monkeypatch):
    monkeypatch.setenv("FORKLENS_CACHE", str(tmp_path / "cache"))
    seen = []
    real = sb.SFTSource

    def spy(*a, **kw):
        src = real(*a, **kw)
        seen.append(src)
        return src

    monkeypatch.setattr(sb, "SFTSource", spy)
    s = sb.run_sft_bugs(_tiny(family="curriculum", variants=["mixed", "uniform"], bugs=["none"], seeds=1,
                              orders=["reverse_perplexity"]), tmp_path / "run")
    assert set(s["variants"]["mixed"]["sft"]) == {"none", "reverse_perplexity"}
    assert set(s["variants"]["mixed"]["order_gain"]) == {"reverse_perplexity"} and "reverse_perplexity" in s["contrast"]
    rp = [src for src in seen if src.order == "reverse_perplexity"]
    assert len(rp) == 2  # one per variant
    for src in rp:  # trained from the highest to the lowest initial perplexity
        ppl = [src.perplexities[i] for i in src.ordered]
        assert ppl == sorted(ppl, reverse=True)


def test_bad_settings_fail_early(tmp_path):
    with pytest.raises(ConfigError, match="bugs"):
        sb.run_sft_bugs(_tiny(bugs=["none", "typo"]), tmp_path / "a")
    with pytest.raises(ConfigError, match="no variant"):
        sb.run_sft_bugs(_tiny(variants=["varied", "nope"]), tmp_path / "b")
    with pytest.raises(ConfigError, match="multiple"):
        sb.run_sft_bugs(_tiny(sft_batch_size=3, sft=replace(_tiny().sft, micro_batch_size=2)), tmp_path / "c")
    with pytest.raises(ConfigError, match="orders"):
        sb.run_sft_bugs(_tiny(orders=["backwards"]), tmp_path / "e")
    with pytest.raises(ConfigError, match="exceeds"):
        sb.run_sft_bugs(_tiny(pool_size=4090), tmp_path / "d")
