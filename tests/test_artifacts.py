"""Stamped artifacts, predictions verdicts and docs tables rendered from artifacts."""

import json
import re
from datetime import datetime, timezone

import pytest

from forklens.report.artifacts import (ArtifactError, load_artifact, lookup, make_stamp, validate_stamp,
                                       write_artifact)
from forklens.report.predictions import PredictionError, load_predictions, verdict, verdict_table
from forklens.report.tables import SpecError, check_text, format_value, load_specs, render_text

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)


def _stamp(**over):
    s = make_stamp("demo", [0, 1], command="python -m forklens.cli demo --quick", now=NOW)
    s.update(commit="a" * 40, dirty=False)
    s.update(over)
    return s


def test_stamp_records_provenance():
    s = make_stamp("x", [3, 4], command="forklens demo", now=NOW)
    assert s["timestamp"] == "2026-11-29T12:00:00+00:00" and s["seeds"] == [3, 4] and s["command"] == "forklens demo"
    assert re.fullmatch(r"[0-9a-f]{40}", s["commit"])  # the tests run inside the forklens git work tree
    assert isinstance(s["dirty"], bool)
    assert s["hardware"]["cpu_cores"] >= 1 and s["hardware"]["cpu_model"]
    assert s["versions"]["torch"] and s["versions"]["python"].count(".") == 2
    validate_stamp(s, "here")


@pytest.mark.parametrize("over, message", [
    ({"commit": "abc"}, "40-hex"), ({"timestamp": "yesterday"}, "ISO 8601"),
    ({"timestamp": "2026-11-29T12:00:00+02:00"}, "UTC"), ({"seeds": ["0"]}, "list of integers"),
    ({"command": "  "}, "empty"), ({"dirty": "no"}, "dirty"), ({"schema": 2}, "schema"),
    ({"hardware": {"cpu_model": "x"}}, "cpu_cores"), ({"versions": {"python": "3"}}, "torch"),
])
def test_invalid_stamps_are_refused_with_the_key(over, message):
    with pytest.raises(ArtifactError, match=message):
        validate_stamp(_stamp(**over), "results/demo/artifact.json")


def test_write_and_load_round_trip(tmp_path):
    folder = write_artifact(tmp_path, "demo", {"acc": 0.5}, seeds=[0], metrics={"seed-0": [{"step": 1, "x": 2}]},
                            stamp=_stamp())
    art = load_artifact(folder)
    assert art.summary == {"acc": 0.5} and art.stamp["commit"] == "a" * 40 and art.name == "demo"
    assert art.metrics("seed-0") == [{"step": 1, "x": 2}]
    assert (folder / "metrics" / "seed-0.json").read_text() == '[\n{"step": 1, "x": 2}\n]\n'  # a step per line
    assert load_artifact(folder / "artifact.json").summary == {"acc": 0.5}
    with pytest.raises(ArtifactError, match="letters, digits"):
        write_artifact(tmp_path, "../escape", {}, seeds=[], stamp=_stamp())


def test_load_refuses_missing_or_unstamped_files(tmp_path):
    with pytest.raises(ArtifactError, match="no such artifact"):
        load_artifact(tmp_path / "nothing")
    (tmp_path / "a.json").write_text('{"summary": {}}')
    with pytest.raises(ArtifactError, match="'stamp' and 'summary'"):
        load_artifact(tmp_path / "a.json")
    (tmp_path / "b.json").write_text('{"stamp": {},\n "summary": {}')
    with pytest.raises(ArtifactError, match=r"b.json:2: not valid JSON"):
        load_artifact(tmp_path / "b.json")
    (tmp_path / "c.json").write_text(json.dumps({"stamp": {"schema": 1}, "summary": {}}))
    with pytest.raises(ArtifactError, match="c.json: stamp lacks 'name'"):
        load_artifact(tmp_path / "c.json")
    bad = tmp_path / "m" / "metrics"
    write_artifact(tmp_path, "m", {}, seeds=[0], stamp=_stamp())
    bad.mkdir()
    (bad / "r.json").write_text('[\n{"a": 1},\n{"a": 2\n]\n')
    with pytest.raises(ArtifactError, match=r"r.json:4: not valid JSON"):
        load_artifact(tmp_path / "m").metrics("r")
    (bad / "r.json").write_text('[{"a": 1}, [1]]')
    with pytest.raises(ArtifactError, match=r"r.json: expected a JSON array of objects"):
        load_artifact(tmp_path / "m").metrics("r")


def test_lookup_paths():
    data = {"a": {"b.c": [1, {"d": 2}]}}
    assert lookup(data, "a.[b.c].1.d") == 2 and lookup(data, "a.[b.c].-2") == 1
    with pytest.raises(ArtifactError, match="no field 'a.x'"):
        lookup(data, "a.x")
    with pytest.raises(ArtifactError, match="out of range"):
        lookup(data, "a.[b.c].5")


INTERVAL = {"mean": 0.3, "low": 0.2, "high": 0.4, "n": 5, "level": 0.95}


def _predictions(tmp_path, entries):
    p = tmp_path / "p.yaml"
    import yaml

    p.write_text(yaml.safe_dump({"experiment": "e", "artifact": "results/e", "predictions": entries}))
    return load_predictions(p)


@pytest.mark.parametrize("direction, threshold, outcome", [
    ("<", 0.5, "supported"), ("<", 0.2, "refuted"), ("<", 0.3, "inconclusive"),
    (">", 0.1, "supported"), (">", 0.4, "refuted"), (">", 0.25, "inconclusive"),
    ("between", [0.1, 0.5], "supported"), ("between", [0.5, 0.9], "refuted"), ("between", [0.25, 0.9], "inconclusive"),
])
def test_verdicts(tmp_path, direction, threshold, outcome):
    preds = _predictions(tmp_path, [{"id": "p", "claim": "c", "metric": "m", "field": "summary.r",
                                     "direction": direction, "threshold": threshold, "ci": 95}])
    assert verdict(preds.predictions[0], {"summary": {"r": INTERVAL}}).outcome == outcome


def test_missing_fields_and_point_predictions(tmp_path):
    preds = _predictions(tmp_path, [
        {"id": "a", "claim": "ratio below one", "metric": "m", "field": "summary.r", "direction": "<",
         "threshold": 1, "ci": 95},
        {"id": "b", "claim": "most miss", "metric": "n", "field": "summary.n", "direction": ">", "threshold": 2},
        {"id": "c", "claim": "gone", "metric": "m", "field": "summary.nothing", "direction": "<", "threshold": 1,
         "ci": 95}])
    data = {"summary": {"r": None, "n": 3}}
    assert [verdict(p, data).outcome for p in preds.predictions] == ["missing", "supported", "missing"]
    table = verdict_table(preds, data)
    assert "| most miss | n > 2 (point value) | 3 | supported |" in table
    assert "| ratio below one | m < 1 (95% CI) | — | missing |" in table
    with pytest.raises(PredictionError, match="judged at 90%"):
        verdict(_predictions(tmp_path, [{"id": "x", "claim": "c", "metric": "m", "field": "summary.r",
                                         "direction": "<", "threshold": 1, "ci": 90}]).predictions[0],
                {"summary": {"r": INTERVAL}})


LB = {"mean": 1.6, "low": 1.2, "high": 2.0, "n": 5, "level": 0.95, "lower_bound": True, "n_exact": 3,
      "n_censored": 2, "n_reference_unreached": 0, "censored_min": 1.5}


@pytest.mark.parametrize("over, direction, threshold, outcome", [
    ({}, ">", 1, "supported"),  # low and every censored seed's bound exceed 1
    ({"censored_min": 0.9}, ">", 1, "inconclusive"),  # a censored seed's bound does not yet exceed 1
    ({"n_reference_unreached": 1}, ">", 1, "inconclusive"),  # a seed without any value
    ({"low": 0.5, "high": 0.8, "censored_min": 0.6}, ">", 1, "inconclusive"),  # a lower bound never refutes ">"
    ({}, "<", 1.1, "refuted"),  # the bound already lies above: the true ratio does too
    ({}, "<", 1.3, "inconclusive"),
    ({}, "<", 3, "inconclusive"),  # a lower bound never supports "<"
    ({}, "between", [0.5, 1.1], "refuted"),
    ({}, "between", [0.5, 3], "inconclusive"),
    ({"n_censored": 0, "censored_min": None, "low": 0.5, "high": 0.8}, ">", 1, "refuted"),  # exact: ordinary rule
    ({"n_censored": 0, "censored_min": None}, "<", 3, "supported"),
])
def test_censored_lower_bounds_are_judged_by_what_a_bound_can_show(tmp_path, over, direction, threshold, outcome):
    preds = _predictions(tmp_path, [{"id": "p", "claim": "c", "metric": "m", "field": "summary.r",
                                     "direction": direction, "threshold": threshold, "ci": 95}])
    v = verdict(preds.predictions[0], {"summary": {"r": {**LB, **over}}})
    assert v.outcome == outcome
    if over.get("n_censored") != 0:
        assert "censored seed(s)" in v.reason


@pytest.mark.parametrize("entry, message", [
    ({"direction": "<="}, "direction must be one of"), ({"threshold": "big"}, "finite number"),
    ({"direction": "between", "threshold": [2, 1]}, "low 2.0 > high"), ({"ci": 100}, "percentage"),
    ({"colour": "red"}, "unknown key"),
])
def test_bad_predictions_are_refused(tmp_path, entry, message):
    base = {"id": "p", "claim": "c", "metric": "m", "field": "f", "direction": "<", "threshold": 1, "ci": 95}
    with pytest.raises(PredictionError, match=message):
        _predictions(tmp_path, [{**base, **entry}])
    with pytest.raises(PredictionError, match="duplicate id"):
        _predictions(tmp_path, [base, base])


def test_committed_predictions_files_load():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "results" / "predictions"
    files = sorted(root.glob("*.yaml"))
    assert {f.stem for f in files} >= {"fork-vs-rl", "sft-then-rl"}
    # a consistency check of the optimiser (GRPO on the true utility itself), registered on its own: one prediction
    consistency_only = {"rubrics-oracle", "rubrics-oracle-lr3e-4"}
    for f in files:  # every other file registers at least a claim and its control's contrast
        assert len(load_predictions(f).predictions) >= (1 if f.stem in consistency_only else 2), f.name


def test_formats():
    assert format_value(0.955, "pct1", "w") == "95.5%" and format_value(1.66e12, "sci", "w") == "1.66e12"
    assert format_value(4.1022, "x2", "w") == "4.10x" and format_value(12345.6, "int", "w") == "12,346"
    assert format_value(INTERVAL, "ci:pct1", "w") == "30.0% [20.0%, 40.0%]"
    assert format_value(None, "ci:pct1", "w") == "—"  # an interval the experiment could not compute
    with pytest.raises(SpecError, match="needs an interval"):
        format_value(0.3, "ci:pct1", "w")
    assert format_value([0.3, 0.35], "list:pct1", "w") == "30.0% / 35.0%"
    assert format_value([3.4, 4.2, 3.8], "range:x2", "w") == "3.40x-4.20x"
    with pytest.raises(SpecError, match="unknown format"):
        format_value(1.0, "pct9", "w")
    with pytest.raises(SpecError, match="needs a number"):
        format_value("x", "f1", "w")


def _setup(tmp_path):
    write_artifact(tmp_path / "results", "demo", {"aggregate": {"acc": INTERVAL}, "per_seed": {"acc": [0.2, 0.4]}},
                   seeds=[0, 1], stamp=_stamp())
    (tmp_path / "results" / "tables.yaml").write_text(
        "demo:\n  artifact: results/demo\n  header: [measure, value, seeds]\n"
        "  rows:\n    - [accuracy, '{summary.aggregate.acc:ci:pct1}', '{summary.per_seed.acc:list:pct1}']\n"
        "line:\n  artifact: results/demo\n  text: accuracy {summary.aggregate.acc.mean:pct0} on average.\n")
    return load_specs(tmp_path / "results" / "tables.yaml")


def test_render_and_check_blocks(tmp_path):
    specs = _setup(tmp_path)
    doc = "# T\n\n<!-- results:demo -->\nold\n<!-- /results:demo -->\n\nSee <!-- results:line -->\n<!-- /results:line -->\n"
    rendered = render_text(doc, specs)
    assert "| accuracy | 30.0% [20.0%, 40.0%] | 20.0% / 40.0% |" in rendered
    assert "accuracy 30% on average." in rendered
    assert "commit aaaaaaaaaa, 2026-11-29T12:00:00+00:00" in rendered and "`python -m forklens.cli demo --quick`" in rendered
    assert check_text(rendered, specs) == []
    assert render_text(rendered, specs) == rendered  # idempotent
    edited = rendered.replace("| 30.0% [20.0%", "| 31.0% [20.0%")
    problems = check_text(edited, specs, "doc.md")
    assert len(problems) == 1 and "doc.md:6: block 'demo' disagrees" in problems[0] and "31.0%" in problems[0]


def test_markers_and_specs_are_checked(tmp_path):
    specs = _setup(tmp_path)
    assert "never closed" in check_text("<!-- results:demo -->\n", specs)[0]
    assert "without its opening" in check_text("<!-- /results:demo -->\n", specs)[0]
    assert "no spec" in check_text("<!-- results:zzz -->\n<!-- /results:zzz -->\n", specs)[0]
    (tmp_path / "bad.yaml").write_text("t:\n  artifact: results/demo\n  text: a\n  rows: []\n")
    with pytest.raises(SpecError, match="exactly one of"):
        load_specs(tmp_path / "bad.yaml")
    (tmp_path / "bad2.yaml").write_text("t:\n  artifact: results/demo\n  text: '{summary.nope:f1}'\n")
    problems = check_text("<!-- results:t -->\n<!-- /results:t -->\n", load_specs(tmp_path / "bad2.yaml", tmp_path))
    assert "no field 'summary.nope'" in problems[0]


def test_strict_mode_flags_unbacked_numbers_and_loose_tables(tmp_path):
    specs = _setup(tmp_path)
    ok = "# Results (issue 14)\n\nThe demo ran on 5 seeds.\n\nMean 30.0% (`results/demo/artifact.json`).\n"
    assert check_text(ok, specs, "r.md", strict=True, root=tmp_path) == []
    loose = ok + "\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    assert "r.md:7: a table outside" in check_text(loose, specs, "r.md", strict=True, root=tmp_path)[0]
    prose = ok + "\nGRPO took 17.7 s per run.\n"
    assert "r.md:7: number '17.7' in prose cites no existing artifact" in check_text(
        prose, specs, "r.md", strict=True, root=tmp_path)[0]
    fake = ok + "\nGRPO took 17.7 s (`results/other/artifact.json`).\n"
    assert check_text(fake, specs, "r.md", strict=True, root=tmp_path)  # the cited file does not exist
    code = ok + "\n```bash\nforklens demo --set lr=1e-4\n```\n"
    assert check_text(code, specs, "r.md", strict=True, root=tmp_path) == []


def test_benchmark_json_renders_with_its_own_stamp_and_unstamped_files_must_say_so(tmp_path):
    bench = tmp_path / "benchmarks" / "results"
    bench.mkdir(parents=True)
    (bench / "new.json").write_text(json.dumps({"stamp": _stamp(command="python benchmarks/sampling.py --quick"),
                                                "ratio": 1.43}))
    (bench / "old.json").write_text(json.dumps({"ratio": 1.5}))
    (tmp_path / "t.yaml").write_text(
        "new:\n  artifact: benchmarks/results/new.json\n  text: 'ratio {ratio:x2}'\n"
        "old:\n  artifact: benchmarks/results/old.json\n  text: 'ratio {ratio:x2}'\n"
        "legacy:\n  artifact: benchmarks/results/old.json\n  unstamped: true\n  text: 'ratio {ratio:x2}'\n")
    specs = load_specs(tmp_path / "t.yaml", tmp_path)
    new = render_text("<!-- results:new -->\n<!-- /results:new -->", specs)
    assert "ratio 1.43x" in new and "`benchmarks/results/new.json`: commit aaaaaaaaaa" in new
    assert "`python benchmarks/sampling.py --quick`" in new
    with pytest.raises(SpecError, match="has no stamp"):
        render_text("<!-- results:old -->\n<!-- /results:old -->", specs)
    legacy = render_text("<!-- results:legacy -->\n<!-- /results:legacy -->", specs)
    assert "ratio 1.50x" in legacy and "written before the results harness" in legacy
    (bench / "new.json").write_text(json.dumps({"stamp": _stamp(commit="zz"), "ratio": 1.0}))
    with pytest.raises(ArtifactError, match="40-hex"):
        render_text("<!-- results:new -->\n<!-- /results:new -->", specs)


def test_a_predictions_block_shows_each_prediction_beside_its_outcome(tmp_path):
    write_artifact(tmp_path / "results", "exp", {"comparison": {"ratio": INTERVAL}}, seeds=[0, 1], stamp=_stamp())
    (tmp_path / "results" / "predictions").mkdir()
    (tmp_path / "results" / "predictions" / "exp.yaml").write_text(
        "experiment: exp\nartifact: results/exp\npredictions:\n"
        "  - {id: cheap, claim: Cheaper than the reference., metric: flops ratio, field: summary.comparison.ratio,"
        " direction: '<', threshold: 0.5, ci: 95}\n"
        "  - {id: cheaper, claim: Much cheaper., metric: flops ratio, field: summary.comparison.ratio,"
        " direction: '<', threshold: 0.1, ci: 95}\n")
    (tmp_path / "results" / "tables.yaml").write_text(
        "exp-predictions:\n  artifact: results/exp\n  predictions: results/predictions/exp.yaml\n")
    out = render_text("<!-- results:exp-predictions -->\n<!-- /results:exp-predictions -->",
                      load_specs(tmp_path / "results" / "tables.yaml"))
    assert "| Cheaper than the reference. | flops ratio < 0.5 (95% CI) | 0.3 [0.2, 0.4] | supported |" in out
    assert "| Much cheaper. | flops ratio < 0.1 (95% CI) | 0.3 [0.2, 0.4] | refuted |" in out
    assert "Rendered from `results/exp/artifact.json`: commit aaaaaaaaaa" in out


def test_verdict_command_prints_predictions_beside_outcomes(tmp_path, capsys):
    from forklens.cli import main

    folder = write_artifact(tmp_path, "exp", {"ratio": INTERVAL}, seeds=[0], stamp=_stamp())
    preds = tmp_path / "p.yaml"
    preds.write_text("experiment: exp\nartifact: results/exp\npredictions:\n"
                     "  - {id: a, claim: Cheaper., metric: ratio, field: summary.ratio, direction: '<', threshold: 1,"
                     " ci: 95}\n")
    assert main(["results", "verdict", str(preds), "--artifact", str(folder)]) == 0
    assert "| Cheaper. | ratio < 1 (95% CI) | 0.3 [0.2, 0.4] | supported |" in capsys.readouterr().out
    assert main(["results", "verdict", str(preds), "--artifact", str(tmp_path / "none")]) == 2
    assert "no such artifact" in capsys.readouterr().err


def test_claims_table_across_predictions_files(tmp_path):
    import yaml

    preds_dir = tmp_path / "results" / "predictions"
    preds_dir.mkdir(parents=True)
    rule = {"metric": "gain", "field": "summary.pre", "direction": ">", "threshold": 0.1, "ci": 95}
    (preds_dir / "e1.yaml").write_text(yaml.safe_dump({"experiment": "e1", "artifact": "results/e1", "predictions": [
        {"id": "pre", "claim": "gain where it can act", **rule},
        {"id": "ctrl", "claim": "no gain in the control", **{**rule, "field": "summary.ctrl", "direction": "<"}}]}))
    (preds_dir / "e2.yaml").write_text(yaml.safe_dump({"experiment": "e2", "artifact": "results/e2", "predictions": [
        {"id": "pre", "claim": "x", **rule}]}))
    write_artifact(tmp_path / "results", "e1", {"pre": {**INTERVAL}, "ctrl": {"mean": 0.0, "low": -0.05, "high": 0.05,
                                                                          "level": 0.95}}, seeds=[0], stamp=_stamp())
    (tmp_path / "results" / "tables.yaml").write_text(yaml.safe_dump({"claims": {"claims": [
        {"claim": "E1 (arXiv 1.2)", "predictions": "results/predictions/e1.yaml", "precondition": "pre",
         "control": ["ctrl"]},
        {"claim": "E2 (arXiv 3.4)", "predictions": "results/predictions/e2.yaml", "precondition": ["pre"]}]}}))
    specs = load_specs(tmp_path / "results" / "tables.yaml")
    doc = render_text("<!-- results:claims -->\n<!-- /results:claims -->\n", specs)
    assert "| E1 (arXiv 1.2) | gain > 0.1: 0.3 [0.2, 0.4], supported | gain < 0.1: 0 [-0.05, 0.05], supported " \
           "| holds; control as predicted |" in doc
    assert "| E2 (arXiv 3.4) | pre-registered in `results/predictions/e2.yaml`; not run | — | not measured |" in doc
    assert "results/e1/artifact.json`: commit aaaaaaaaaa" in doc
    assert check_text(doc, specs) == []
    (tmp_path / "results" / "tables.yaml").write_text(yaml.safe_dump({"claims": {"claims": [
        {"claim": "E1", "predictions": "results/predictions/e1.yaml", "precondition": "nope"}]}}))
    problems = check_text(doc, load_specs(tmp_path / "results" / "tables.yaml"))
    assert "has no prediction 'nope'" in problems[0]


def test_claims_on_an_organism_that_fails_its_own_check_are_not_evidence(tmp_path):
    """A claim row whose organism check is not supported reads "not evidence", whatever its other predictions say."""
    import yaml

    preds_dir = tmp_path / "results" / "predictions"
    preds_dir.mkdir(parents=True)
    rule = {"metric": "gain", "field": "summary.pre", "direction": ">", "threshold": 0.1, "ci": 95}
    (preds_dir / "e1.yaml").write_text(yaml.safe_dump({"experiment": "e1", "artifact": "results/e1", "predictions": [
        {"id": "pre", "claim": "gain where it can act", **rule},
        {"id": "base-ok", "claim": "the base can carry the claim", **{**rule, "field": "summary.base"}}]}))
    write_artifact(tmp_path / "results", "e1", {"pre": {**INTERVAL}, "base": {"mean": 0.05, "low": 0.0, "high": 0.08,
                                                                          "level": 0.95}}, seeds=[0], stamp=_stamp())

    def render(organism):
        row = {"claim": "E1", "predictions": "results/predictions/e1.yaml", "precondition": "pre", "organism": organism}
        (tmp_path / "results" / "tables.yaml").write_text(yaml.safe_dump({"claims": {"claims": [row]}}))
        return render_text("<!-- results:claims -->\n<!-- /results:claims -->\n",
                           load_specs(tmp_path / "results" / "tables.yaml"))

    assert "| not evidence: the organism's own check base-ok is not supported |" in render(["base-ok"])
    assert "| holds (no control prediction) |" in render([])
