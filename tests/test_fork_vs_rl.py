"""`forklens experiment fork-vs-rl` as a compute-matched comparison (issue 14): validation split,
plateau stopping, counted search cost, and the summary fields the pre-registered predictions name."""

import json
from pathlib import Path

import pytest

from forklens.analysis.curves import stop_index, Curve
from forklens.errors import ConfigError
from forklens.experiments.compute_matched import comparisons, validation_split
from forklens.tasks import get_task
from forklens.tasks.base import Problem

ROOT = Path(__file__).resolve().parents[1]


def test_validation_split_is_disjoint_from_test_and_from_training():
    task = get_task("arith")
    train, test = task.problems("train"), task.problems("test")
    val, fit = validation_split(train, test, 200)
    val_prompts = {p.prompt for p in val}
    assert len(val) == 200 and len(val_prompts) == 200
    assert not val_prompts & {p.prompt for p in test}
    assert not val_prompts & {p.prompt for p in fit}
    # only the problems carrying a validation prompt are removed (repeats of a prompt included)
    assert len(fit) == sum(1 for p in train if p.prompt not in val_prompts)
    assert len(fit) >= len(train) - 200 - 50
    assert [p.prompt for p in val] == [p.prompt for p in validation_split(train, test, 200)[0]]  # deterministic


def test_validation_split_repeats_and_leaks():
    mk = [Problem(f"p{i}", f"{a}+1=", str(a + 1)) for i, a in enumerate([1, 2, 3, 2, 4])]
    val, fit = validation_split(mk, [], 2)
    assert [p.prompt for p in val] == ["2+1=", "4+1="]  # the last two distinct prompts, in order
    assert [p.id for p in fit] == ["p0", "p2"]  # both copies of "2+1=" removed
    with pytest.raises(ConfigError, match=r"overlap the test split \(1 shared prompts, e.g. '4\+1='\)"):
        validation_split(mk, [Problem("t", "4+1=", "5")], 2)
    with pytest.raises(ConfigError, match="only 4 distinct prompts"):
        validation_split(mk, [], 5)


def _record(flops, acc):
    return {"flops": flops, "accuracy": acc, "steps": list(range(1, len(acc) + 1))}


def test_search_cost_is_counted_in_the_total_and_the_ratio():
    records = {"grpo": {s: _record([1e10, 2e10, 3e10, 4e10], [0.5, 0.85, 0.95, 0.95]) for s in range(3)},
               "fork-contrast": {s: _record([1e9, 2e9, 3e9], [0.6, 0.82, 0.83]) for s in range(3)}}
    out = comparisons(records, "grpo", {"grpo": 0.0, "fork-contrast": 6e9}, within=0.01, fixed_target=0.8)
    fixed = out["comparison_fixed"]
    fc = fixed["methods"]["fork-contrast"]
    assert fc["flops_to_target"]["mean"] == pytest.approx(2e9)
    assert fc["search_flops"] == 6e9 and fc["total_flops"] == pytest.approx(8e9)
    ratio = fixed["ratios"]["fork-contrast/grpo"]
    assert ratio["without_search"]["mean"] == pytest.approx(2e9 / 2e10)
    assert ratio["with_search"]["mean"] == pytest.approx(8e9 / 2e10)
    best = out["comparison"]
    assert best["target"] == pytest.approx(0.94)
    assert best["methods"]["fork-contrast"]["n_unreached"] == 3 and best["ratios"]["fork-contrast/grpo"]["with_search"] is None
    assert best["plateau_difference"]["fork-contrast-grpo"]["mean"] == pytest.approx(0.83 - 0.95)
    assert comparisons({"fork-contrast": records["fork-contrast"]}, "grpo", {}, 0.01, 0.8) == {}


@pytest.mark.slow
def test_fork_vs_rl_end_to_end_tiny(tmp_path, monkeypatch):
    """Tiny organism (3 pretraining steps): validation curves, GRPO and fork-contrast stopped by the
    plateau rule well before their caps, the lr search counted, the artifact stamped, every field the
    pre-registered predictions name present."""
    from forklens.cli import main
    from forklens.report.artifacts import load_artifact
    from forklens.report.predictions import load_predictions, verdict

    monkeypatch.setenv("FORKLENS_CACHE", str(tmp_path / "cache"))
    out, art = tmp_path / "run", tmp_path / "results" / "fork-vs-rl"
    sets = ["organism.pretrain.max_steps=120", "organism.model.num_hidden_layers=1", "rl.train.max_steps=12",
            "rl.sampling.prompts_per_step=2", "rl.sampling.group_size=3", "fork.train.max_steps=12",
            "fork.data.problems=8", "fork.data.rollouts_per_problem=8", "fork.data.batch_size=8",
            "fork_lr_grid=[0.0001,0.001]", "val_problems=8", "eval.limit=8", "intervene=false", "seeds=2",
            "methods=[grpo,fork-contrast]", "patience=2", f"artifact={art}"]
    args = ["experiment", "fork-vs-rl", "--out", str(out), "--no-progress"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["validation"]["n_problems"] == 8 and summary["validation"]["test_prompt_overlap"] == 0
    for method, cap in (("grpo", 12), ("fork-contrast", 12)):
        assert sorted(summary["curves"][method]) == ["0", "1"]
        for rec in summary["curves"][method].values():
            curve = Curve(tuple(rec["flops"]), tuple(rec["accuracy"]))
            # stopped by the rule at exactly the evaluation where PlateauStopper(2, 0.005) says so
            assert rec["steps"] == list(range(1, len(rec["steps"]) + 1))
            assert rec["stopped_early"] and rec["steps"][-1] < cap
            assert stop_index(curve, 2, 0.005) == len(rec["steps"]) - 1
            assert 0.0 <= rec["test_accuracy"] <= 1.0
    search = summary["search"]["fork-contrast"]
    assert [r["learning_rate"] for r in search["runs"]] == [1e-4, 1e-3]
    assert summary["search_flops"] == {"grpo": 0.0, "fork-contrast": pytest.approx(sum(r["flops"] for r in search["runs"]))}
    assert search["chosen_learning_rate"] == max(search["runs"], key=lambda r: r["best_val_accuracy"])["learning_rate"]
    fc = summary["comparison"]["methods"]["fork-contrast"]
    assert fc["search_flops"] == summary["search_flops"]["fork-contrast"]
    assert fc["total_flops"] == pytest.approx(fc["flops_to_target"]["mean"] + fc["search_flops"])
    chosen = summary["curves"]["fork-contrast"]["0"]
    chosen_run = [r for r in search["runs"] if r["learning_rate"] == search["chosen_learning_rate"]][0]
    assert chosen["flops"][-1] == chosen_run["flops"]  # seed 0's run is the search run at the chosen rate
    artifact = load_artifact(art)
    assert artifact.stamp["seeds"] == [0, 1] and (art / "plots" / "accuracy_vs_flops.png").is_file()
    assert {"seed-0_grpo", "seed-1_grpo", "seed-1_fork-contrast", "search_lr-0.0001"} <= \
        {p.stem for p in (art / "metrics").iterdir()}
    preds = load_predictions(ROOT / "results" / "predictions" / "fork-vs-rl.yaml")
    for p in preds.predictions:
        v = verdict(p, artifact)  # the field exists; a target no run reached is null (missing), never absent
        assert v.outcome != "missing" or "is null" in v.reason, (p.id, v.reason)
