"""Shared helpers of the benchmark scripts: repeated timings with their spread, the provenance stamp and
the result JSON convention.

Every result JSON carries ``stamp`` (git commit and dirty flag, UTC timestamp, hardware, Python /
torch / transformers / forklens versions, the exact command; :func:`forklens.report.artifacts.make_stamp`)
and ``repeats``: for each timed quantity ``{"n", "min", "median", "max", "values"}`` with ``n >= 5``
(:data:`MIN_REPEATS`); a headline number is the median of its repeats.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Mapping

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from forklens.report.artifacts import command_line, git_state, make_stamp  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MIN_REPEATS = 5
GIT_AT_START = git_state()  # (commit, dirty) of the code that runs: the tree when the benchmark started


def machine() -> dict:
    import torch

    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average_1_5_15min": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def spread(values: list[float]) -> dict:
    """``{"n", "min", "median", "max", "values"}`` of ``values``; fewer than MIN_REPEATS is an error."""
    values = [float(v) for v in values]
    if len(values) < MIN_REPEATS:
        raise ValueError(f"a benchmark records at least {MIN_REPEATS} repeats, got {len(values)}")
    return {"n": len(values), "min": min(values), "median": statistics.median(values), "max": max(values),
            "values": values}


def repeats_arg(value: str) -> int:
    """argparse type of ``--repeats``: an integer >= MIN_REPEATS."""
    n = int(value)
    if n < MIN_REPEATS:
        import argparse

        raise argparse.ArgumentTypeError(f"--repeats must be >= {MIN_REPEATS}, got {n}")
    return n


def timed(fn: Callable[[], object], repeats: int = MIN_REPEATS, sync: Callable[[], object] | None = None) -> dict:
    """Run ``fn`` once to warm up, then ``repeats`` timed times (``sync`` after each, e.g.
    ``torch.cuda.synchronize``); returns the :func:`spread` of the seconds."""
    fn()
    if sync:
        sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t)
    return spread(times)


def stamp(name: str) -> dict:
    """The provenance stamp of this benchmark run (command: ``python benchmarks/<script> <args>``); the
    commit and dirty flag are those of the tree when the benchmark started, the time is now."""
    argv = ["python", os.path.relpath(sys.argv[0], Path(__file__).resolve().parent.parent), *sys.argv[1:]]
    out = make_stamp(name, seeds=[0], command=command_line(argv))
    out["commit"], out["dirty"] = GIT_AT_START
    return out


def _check_repeats(repeats: Mapping[str, dict]) -> None:
    if not repeats:
        raise ValueError("a benchmark result records its repeats")
    for label, s in repeats.items():
        if not isinstance(s, dict) or s.get("n", 0) < MIN_REPEATS or not {"min", "median", "max"} <= set(s):
            raise ValueError(f"repeats[{label!r}] must be a spread() of >= {MIN_REPEATS} values, got {s!r}")


def write_json(name: str, payload: dict, repeats: Mapping[str, dict], out: Path | None = None) -> Path:
    """Write ``results/NAME.json`` (or ``out``) as ``{"stamp", "repeats", **payload}``."""
    _check_repeats(repeats)
    path = out or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"stamp": stamp(name), "repeats": dict(repeats), **payload}, indent=2, default=str)
                    + "\n")
    print(f"wrote {path}")
    return path


def write_result(name: str, forklens: float, peer: float, unit: str, details: dict,
                 repeats: Mapping[str, dict]) -> Path:
    """Write ``results/NAME.json``: both sides of one run, ``ratio = forklens / peer`` (medians), the
    repeats behind them and the stamp."""
    return write_json(name, {"forklens": forklens, "peer": peer, "unit": unit, "ratio": forklens / peer,
                             "details": details}, repeats)
