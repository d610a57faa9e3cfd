"""The shared benchmark helper: >= 5 repeats with min/median/max, and a stamp in every result JSON."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import common  # noqa: E402


def test_spread_and_its_minimum():
    s = common.spread([3.0, 1.0, 2.0, 5.0, 4.0])
    assert (s["n"], s["min"], s["median"], s["max"]) == (5, 1.0, 3.0, 5.0) and s["values"] == [3.0, 1.0, 2.0, 5.0, 4.0]
    with pytest.raises(ValueError, match="at least 5 repeats, got 4"):
        common.spread([1.0, 2.0, 3.0, 4.0])


def test_timed_warms_up_once_then_repeats():
    calls, syncs = [], []
    s = common.timed(lambda: calls.append(1), 6, sync=lambda: syncs.append(1))
    assert len(calls) == 7 and len(syncs) == 7 and s["n"] == 6 and s["min"] <= s["median"] <= s["max"]


def test_repeats_argument_refuses_fewer_than_five():
    import argparse

    assert common.repeats_arg("5") == 5
    with pytest.raises(argparse.ArgumentTypeError, match=">= 5"):
        common.repeats_arg("3")


def test_write_result_records_stamp_and_repeats(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    monkeypatch.setattr(sys, "argv", [str(Path(common.__file__).parent / "sampling.py"), "--quick"])
    reps = {"forklens_s": common.spread([1, 2, 3, 4, 5])}
    path = common.write_result("x", 2.0, 4.0, "tokens/s", {"batch": 64}, reps)
    data = json.loads(path.read_text())
    assert data["ratio"] == 0.5 and data["repeats"] == reps and data["details"] == {"batch": 64}
    assert data["stamp"]["command"] == "python benchmarks/sampling.py --quick"
    assert (data["stamp"]["commit"], data["stamp"]["dirty"]) == common.GIT_AT_START and len(common.GIT_AT_START[0]) == 40
    from forklens.report.artifacts import validate_stamp

    validate_stamp(data["stamp"], str(path))
    with pytest.raises(ValueError, match="records its repeats"):
        common.write_result("y", 1.0, 1.0, "s", {}, {})
    with pytest.raises(ValueError, match=r"repeats\['a'\]"):
        common.write_result("y", 1.0, 1.0, "s", {}, {"a": {"n": 3, "min": 1, "median": 1, "max": 1}})
    assert not (tmp_path / "y.json").exists()


def test_every_forklens_import_in_the_benchmarks_resolves():
    """The benchmark scripts import forklens inside functions, so a moved module only breaks them when they
    run (on a GPU machine, in a session that cannot afford a failed start): check every import here."""
    import ast
    import importlib
    from pathlib import Path

    missing = []
    for f in sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("forklens"):
                try:
                    mod = importlib.import_module(node.module)
                except ImportError:
                    missing.append(f"{f.name}: {node.module}")
                    continue
                for alias in node.names:
                    if not hasattr(mod, alias.name):
                        try:
                            importlib.import_module(f"{node.module}.{alias.name}")
                        except ImportError:
                            missing.append(f"{f.name}: {node.module}.{alias.name}")
    assert missing == []


def test_gpu_check_script_runs_every_section_on_a_cpu_dry_run(tmp_path):
    """benchmarks/gpu_check.py only runs for real on a lent GPU machine: its CPU dry run (tiny shapes) keeps
    every section working between those runs."""
    import subprocess

    out = tmp_path / "gpu_check.json"
    script = Path(common.__file__).parent / "gpu_check.py"
    proc = subprocess.run([sys.executable, str(script), "--cpu-dry-run", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env={**__import__("os").environ,
                                                                            "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(out.read_text())
    checks = data["checks"]
    assert data["dry_run"] is True and data["stamp"]["name"] == "gpu_check"
    for name in ("fast_decoder_fp32", "qwen2_0.5B_bf16", "sampling_speed", "stats_kernels", "scoring_mfu",
                 "long_traces", "vllm"):
        assert "error" not in checks[name], (name, checks[name].get("error", "")[-1500:])
    assert all(v["ok"] for v in checks["fast_decoder_fp32"].values())
    stats = checks["stats_kernels"]
    for side in ("fused", "few_pass", "reference"):
        assert stats[side]["same_ids"] and max(stats[side]["max_abs_difference"].values()) < 1e-4, side
    assert checks["scoring_mfu"]["fused_equals_eager"]["same_ranks"]
    assert checks["scoring_mfu"]["fused_equals_eager"]["max_abs_kl_difference"] < 1e-4
    for length, point in checks["long_traces"].items():
        for case in ("score", "score_naive", "step"):
            assert point[case]["seconds"] > 0 and point[case]["flops"] > 0, (length, case)
        assert point["tokens"] == int(length) + 8
