"""`forklens results run NAME --once`: a command that runs its own seeds becomes one stamped artifact
(its summary as it is, its metrics files and its plots)."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from forklens.cli import main
from forklens.errors import ConfigError, DataError
from forklens.report.artifacts import load_artifact


def _fake_command(summary: dict | None, rc: int = 0):
    calls, real_run = [], subprocess.run

    def run(argv, *a, **kw):
        if "forklens.cli" not in argv:  # the stamp's git state, platform queries: the real thing
            return real_run(argv, *a, **kw)
        calls.append(list(argv))
        out = Path(argv[argv.index("--out") + 1])
        (out / "seed0" / "luffy").mkdir(parents=True)
        (out / "seed0" / "luffy" / "metrics.jsonl").write_text('{"step": 1, "flops": 5.0, "val/accuracy": 0.5}\n')
        (out / "accuracy_vs_flops.png").write_bytes(b"\x89PNG fake")
        if summary is not None:
            (out / "summary.json").write_text(json.dumps(summary))
        return subprocess.CompletedProcess(argv, rc)

    return run, calls


def test_once_writes_the_commands_summary_metrics_and_plots(tmp_path, monkeypatch):
    summary = {"seeds": [3, 4, 5, 6, 7], "comparison": {"target": 0.99}}
    fake, calls = _fake_command(summary)
    monkeypatch.setattr(subprocess, "run", fake)
    argv = ["results", "run", "demo-x", "--once", "--results", str(tmp_path / "results"),
            "--work", str(tmp_path / "work"), "--cmd", "experiment sft-then-rl --quick"]
    monkeypatch.setattr(sys, "argv", ["/x/forklens/cli.py", *argv])
    rc = main(argv)
    assert rc == 0
    assert len(calls) == 1 and calls[0][-2:] == ["--out", str(tmp_path / "work" / "run")]
    assert "--seed" not in calls[0] and calls[0][3:6] == ["experiment", "sft-then-rl", "--quick"]
    art = load_artifact(tmp_path / "results" / "demo-x")
    assert art.summary == summary and art.stamp["seeds"] == [3, 4, 5, 6, 7]
    assert art.stamp["command"] == shlex.join(["python", "-m", "forklens.cli", *argv])
    assert art.metrics("seed0_luffy") == [{"step": 1, "flops": 5.0, "val/accuracy": 0.5}]
    assert (art.path / "plots" / "accuracy_vs_flops.png").read_bytes() == b"\x89PNG fake"


@pytest.mark.parametrize("summary", [None, {"seeds": []}, {"seeds": [0, "1"]}, {"no_seeds": 1}])
def test_once_refuses_a_run_without_a_summary_listing_its_seeds(tmp_path, monkeypatch, summary):
    fake, _ = _fake_command(summary)
    monkeypatch.setattr(subprocess, "run", fake)
    args = ["results", "run", "x", "--once", "--results", str(tmp_path / "results"), "--work", str(tmp_path / "w"),
            "--cmd", "experiment sft-then-rl"]
    with pytest.raises(DataError, match="summary.json"):
        _run(args)
    assert not (tmp_path / "results" / "x").exists()


def test_once_refuses_seeds_and_curve(tmp_path):
    for extra in (["--seeds", "0,1"], ["--curve", "reward_mean"]):
        with pytest.raises(ConfigError, match="drop --seeds and --curve"):
            _run(["results", "run", "x", "--once", *extra, "--results", str(tmp_path), "--cmd", "demo --quick"])


def _run(argv):
    """The command's function without the CLI's error handler (so the exception is visible)."""
    from forklens.cli import build_parser

    args = build_parser().parse_args(argv)
    return args.func(args)
