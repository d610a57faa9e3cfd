"""Run every benchmark and print the side-by-side ratios.

    python benchmarks/run_all.py [--quick]

Each script writes ``benchmarks/results/NAME.json`` (``{"forklens", "peer", "unit", "ratio", "details"}``,
ratio = forklens / peer). ``--quick`` runs one timing repeat each (about 5 minutes in all on 2 cores).
``grpo_step`` needs TRL, the peer (``pip install trl``, into a separate environment if you like: the
script is run with the same interpreter as this one); without it that benchmark is skipped and said so.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = {
    "sampling": (["sampling.py"], ["--quick"]),
    "scoring": (["scoring.py"], ["--quick"]),
    "memory": (["memory.py"], []),  # always the 128k x 4,096 case (about 2.5 minutes)
    "grpo_step": (["grpo_step.py"], ["--quick"]),  # needs TRL
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    failed = []
    for name, (cmd, quick) in BENCHMARKS.items():
        print(f"== {name}", flush=True)
        if name == "grpo_step" and importlib.util.find_spec("trl") is None:
            print("skipped: TRL (the peer) is not installed; pip install trl", flush=True)
            continue
        res = subprocess.run([sys.executable, *cmd, *(quick if args.quick else [])], cwd=HERE)
        if res.returncode:
            failed.append(name)
    print("\n| benchmark | forklens | peer | unit | ratio (forklens / peer) |\n| --- | --- | --- | --- | --- |")
    for name in BENCHMARKS:
        path = HERE / "results" / f"{name}.json"
        if path.exists():
            r = json.loads(path.read_text())
            print(f"| {name} | {r['forklens']:.4g} | {r['peer']:.4g} | {r['unit']} | {r['ratio']:.3f} |")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
