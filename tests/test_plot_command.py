"""`forklens plot`: training curves from metrics.jsonl, with clear errors."""

from __future__ import annotations

import json

import pytest

from forklens.cli import main


def _run(folder, rewards):
    folder.mkdir(parents=True)
    rows = [{"step": i + 1, "reward_mean": r, "loss": 1.0 / (i + 1), "flops": 1e9 * (i + 1)} for i, r in enumerate(rewards)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_plot_two_runs(tmp_path, capsys):
    a, b = _run(tmp_path / "a", [0.1, 0.3, 0.5]), _run(tmp_path / "b", [0.2, 0.2, 0.9])
    out = tmp_path / "curves.png"
    assert main(["plot", str(a), f"lever={b}", "--x", "flops", "--smooth", "2", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    assert "2 runs: reward_mean, loss vs flops" in capsys.readouterr().err
    assert main(["plot", str(a), "--out", str(out)]) == 2  # exists: needs --overwrite
    assert main(["plot", str(a / "metrics.jsonl"), "--metric", "loss", "--out", str(tmp_path / "c.svg")]) == 0
    assert (tmp_path / "c.svg").read_text().lstrip().startswith("<?xml")


@pytest.mark.parametrize("args, message", [
    (["--metric", "kl"], "no run logged kl; logged metrics: flops, loss, reward_mean"),
    (["--x", "wall_s"], "--x wall_s: the runs did not log it"),
    (["--out", "x.jpg"], "expected a .png or .svg file name"),
    (["--smooth", "0"], "--smooth must be >= 1"),
])
def test_plot_errors(tmp_path, capsys, args, message):
    a = _run(tmp_path / "a", [0.1, 0.2])
    assert main(["plot", str(a), *args, "--out", str(tmp_path / "p.png")] if "--out" not in args
                else ["plot", str(a), *args]) == 2
    assert message in capsys.readouterr().err


def test_plot_bad_files(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["plot", str(tmp_path / "empty"), "--out", str(tmp_path / "p.png")]) == 2
    assert "no metrics.jsonl there" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1}\n{oops\n')
    assert main(["plot", str(bad), "--out", str(tmp_path / "p.png")]) == 2
    assert "bad.jsonl line 2: not valid JSON" in capsys.readouterr().err
