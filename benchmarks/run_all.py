"""Run every benchmark and print the side-by-side ratios.

    python benchmarks/run_all.py [--quick]

Each script writes ``benchmarks/results/NAME.json`` (``{"forklens", "peer", "unit", "ratio", "details"}``,
ratio = forklens / peer). ``--quick`` runs one timing repeat each (about 4 minutes in all on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = {
    "sampling": (["sampling.py"], ["--quick"]),
    "scoring": (["scoring.py"], ["--quick"]),
    "memory": (["memory.py"], []),  # always the 128k x 4,096 case (about 2.5 minutes)
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    failed = []
    for name, (cmd, quick) in BENCHMARKS.items():
        print(f"== {name}", flush=True)
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
