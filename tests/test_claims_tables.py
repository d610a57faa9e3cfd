"""Claims tables (results/tables.yaml `claims:`): a row's control can come from the control variant's own
predictions file, judged on its own artifact."""

from __future__ import annotations

import pytest
import yaml

from forklens.report.artifacts import write_artifact
from forklens.report.tables import SpecError, load_specs, render_claims

STAMP = {"schema": 1, "name": "x", "commit": "0" * 40, "dirty": False, "timestamp": "2026-11-29T00:00:00+00:00",
         "command": "forklens experiment x", "seeds": [0, 1],
         "hardware": {"cpu_model": "cpu", "cpu_cores": 1, "memory_gib": 1.0, "gpu": None, "platform": "p"},
         "versions": {"python": "3", "torch": "2", "transformers": "5", "forklens": "0"}}


def _predictions(root, name, artifact, rows):
    (root / "results" / "predictions").mkdir(parents=True, exist_ok=True)
    preds = [{"id": i, "claim": f"claim {i}", "metric": f"metric {i}", "field": f, "direction": d, "threshold": t}
             for i, f, d, t in rows]
    (root / "results" / "predictions" / f"{name}.yaml").write_text(
        yaml.safe_dump({"experiment": "x", "artifact": artifact, "registered": "2026-11-29", "predictions": preds}))


def _specs(root, row):
    (root / "results" / "tables.yaml").write_text(yaml.safe_dump({"c": {"claims": [row]}}))
    return load_specs(root / "results" / "tables.yaml", root=root)


def test_control_from_the_control_variants_own_file(tmp_path):
    _predictions(tmp_path, "pre", "results/pre", [("gain", "summary.gain", ">", 0.1), ("own", "summary.own", "<", 1.0)])
    _predictions(tmp_path, "ctl", "results/ctl", [("tie", "summary.gain", "between", [-0.05, 0.05])])
    write_artifact(tmp_path / "results", "pre", {"gain": 0.4, "own": 0.5}, seeds=[0, 1], stamp=STAMP)
    row = {"claim": "the claim", "predictions": "results/predictions/pre.yaml", "precondition": ["gain"],
           "organism": ["own"], "control": ["tie"], "control_predictions": "results/predictions/ctl.yaml"}
    table, sources = render_claims(_specs(tmp_path, row)["c"])
    assert "pre-registered in `results/predictions/ctl.yaml`; not run | not measured |" in table
    assert "metric gain > 0.1: 0.4, supported" in table and len(sources) == 1
    write_artifact(tmp_path / "results", "ctl", {"gain": 0.01}, seeds=[0, 1], stamp=STAMP)
    table, sources = render_claims(_specs(tmp_path, row)["c"])
    assert "metric tie between (-0.05, 0.05): 0.01, supported | holds; control as predicted |" in table
    assert len(sources) == 2  # both artifacts' provenance
    write_artifact(tmp_path / "results", "ctl", {"gain": 0.3}, seeds=[0, 1], stamp=STAMP)
    table, _ = render_claims(_specs(tmp_path, row)["c"])
    assert "0.3, refuted | holds, but the control did not behave as predicted |" in table
    # the control ids are looked up in the control's file, not the precondition's
    with pytest.raises(SpecError, match="ctl.yaml has no prediction 'gain'"):
        render_claims(_specs(tmp_path, {**row, "control": ["gain"]})["c"])
    with pytest.raises(SpecError, match="no control ids"):
        _specs(tmp_path, {**row, "control": []})
