"""Write the stamped artifact results/negation-pilots/artifact.json from the organism-check pilots collected in
results/negation-pilots/pilots.jsonl (one line per design, written by pilot.py). Run from the repository root:

    PYTHONPATH=src python results/negation-pilots/collect.py
"""
import json
from pathlib import Path

from forklens.report.artifacts import write_artifact

HERE = Path(__file__).resolve().parent
rows = [json.loads(line) for line in (HERE / "pilots.jsonl").read_text().splitlines() if line.strip()]
summary = {"pilots": {r["variant"]: r for r in rows}, "order": [r["variant"] for r in rows],
           "note": "organism checks on seed 0's base only: no claim drawn, nothing fine-tuned, no belief probe"}
print(write_artifact(HERE.parent, HERE.name, summary, seeds=[0]))
