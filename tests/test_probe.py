"""The confidence probe: analysis on hand-built records, the CLI end to end on a tiny model, bad input."""

import json
import time

import pytest

from forklens.analysis.confidence import markdown_table, summarize
from forklens.cli import main
from forklens.rewards.confidence import POSITIONS, spearman


def rec(traj, correct):
    rho = spearman(traj, POSITIONS)
    return {"trajectory": traj, "correct": correct, "spearman": rho, "progressive": rho >= 0.4,
            "flat": len(set(traj)) == 1, "penalty": 0.0}


def test_summarize_exact():
    rs = [rec([0, 0, 0, 0, 0, 1.0], True), rec([0, 0.2, 0.4, 0.6, 0.8, 1.0], False),
          rec([1.0] * 6, True), rec([0.0] * 6, False)]
    s = summarize(rs)
    assert s["n"] == 4 and s["flat"] == 2 and s["progressive_frac"] == 0.5
    assert s["progressive"]["count"] == 2 and s["progressive"]["accuracy"] == 0.5
    assert s["premature"]["accuracy"] == 0.5
    assert s["premature"]["mean_trajectory"] == [0.5] * 6
    assert s["progressive"]["mean_trajectory"] == pytest.approx([0, 0.1, 0.2, 0.3, 0.4, 1.0])
    # (0,0,0,0,0,1): x ranks 3 (x5) and 6, mean 3.5; y ranks 1..6. sxy = -0.5 * (-2.5) + 2.5 * 2.5 = 7.5,
    # sxx = 5 * 0.25 + 6.25 = 7.5, syy = 17.5 -> rho = 7.5 / sqrt(7.5 * 17.5)
    assert rs[0]["spearman"] == pytest.approx(7.5 / (7.5 * 17.5) ** 0.5, abs=1e-12)
    assert "| progressive | 2 | 0.500 |" in markdown_table(s)
    assert summarize([])["all"]["accuracy"] is None


def test_probe_cli_task_end_to_end(tiny_dir, tmp_path, capsys):
    out = tmp_path / "probe"
    t0 = time.perf_counter()
    assert main(["probe", "confidence", "--model", str(tiny_dir), "--task", "arith", "--n", "4", "--m", "3",
                 "--max-new-tokens", "20", "--out", str(out)]) == 0
    assert time.perf_counter() - t0 < 20
    data = json.loads((out / "probe.json").read_text())
    assert (out / "trajectories.png").stat().st_size > 1000
    assert data["summary"]["n"] == 4 and len(data["records"]) == 4
    for r in data["records"]:
        assert len(r["trajectory"]) == 6
        assert all(abs(c * 3 - round(c * 3)) < 1e-9 and 0 <= c <= 1 for c in r["trajectory"])
        assert r["spearman"] == pytest.approx(spearman(r["trajectory"], POSITIONS))
        assert r["progressive"] == (r["spearman"] >= 0.4)
    s = data["summary"]
    assert s["progressive"]["count"] + s["premature"]["count"] == 4
    printed = capsys.readouterr().out
    assert "| all | 4 |" in printed and "progressive" in printed


def test_probe_cli_data_with_responses_is_graded(tiny_dir, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "1+1=", "answer": "2", "response": "1+1;A=2"}) + "\n\n"
                    + json.dumps({"prompt": "2+2=", "answer": 4, "id": "b", "response": "nothing"}) + "\n")
    out = tmp_path / "o"
    assert main(["probe", "confidence", "--model", str(tiny_dir), "--data", str(data), "--marker", "A=",
                 "--m", "2", "--out", str(out)]) == 0
    recs = json.loads((out / "probe.json").read_text())["records"]
    assert [r["id"] for r in recs] == ["L1", "b"]
    assert [r["correct"] for r in recs] == [True, False]
    assert [r["response"] for r in recs] == ["1+1;A=2", "nothing"]


def test_probe_cli_bad_input_exits_2(tiny_dir, tmp_path, capsys):
    missing = tmp_path / "nope"
    assert main(["probe", "confidence", "--model", str(missing), "--task", "arith", "--n", "1"]) == 2
    assert str(missing) in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "1+1=", "answer": "2"}) + "\n{not json\n")
    assert main(["probe", "confidence", "--model", str(tiny_dir), "--data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "line 2" in err
    noans = tmp_path / "noans.jsonl"
    noans.write_text(json.dumps({"prompt": "1+1="}) + "\n")
    assert main(["probe", "confidence", "--model", str(tiny_dir), "--data", str(noans)]) == 2
    err = capsys.readouterr().err
    assert "line 1" in err and "answer" in err
    badresp = tmp_path / "badresp.jsonl"
    badresp.write_text(json.dumps({"prompt": "1+1=", "answer": "2", "response": 5}) + "\n")
    assert main(["probe", "confidence", "--model", str(tiny_dir), "--data", str(badresp)]) == 2
    assert "line 1" in capsys.readouterr().err
    assert main(["probe", "confidence", "--model", str(tiny_dir), "--task", "arith", "--m", "0"]) == 2
    assert main(["probe", "confidence", "--model", str(tiny_dir), "--task", "nosuch"]) == 2


def test_probe_cli_data_without_responses_samples_plain_completions(tiny_dir, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "1+1=", "answer": "2"}) + "\n")
    out = tmp_path / "o"
    assert main(["probe", "confidence", "--model", str(tiny_dir), "--data", str(data), "--marker", "A=",
                 "--m", "1", "--max-new-tokens", "6", "--out", str(out)]) == 0
    recs = json.loads((out / "probe.json").read_text())["records"]
    assert len(recs) == 1 and isinstance(recs[0]["response"], str)
