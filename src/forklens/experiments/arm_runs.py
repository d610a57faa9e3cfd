"""Pieces shared by the experiments that run arms x seeds (`fpo`, `rubrics`, `teams`, `delegation`, `negation`):
the start of a run (arms checked, run folder claimed, stamp), per-step mean curves over seeds, and the plot +
stamped artifact written at the end of a run."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Sequence

from rich.console import Console

from forklens.errors import ConfigError
from forklens.report.artifacts import make_stamp, plots_dir, write_artifact
from forklens.report.plots import plot_training_curves
from forklens.runfolder import claim_folder
from forklens.train.loop import read_metrics

console = Console(stderr=True)


def mean_curve(files: list[Path], keys: Sequence[str]) -> list[dict]:
    """Per-step means over seeds (one ``metrics.jsonl`` each) of the curve metrics ``keys``."""
    runs = [read_metrics(f) for f in files]
    rows = []
    for i in range(min(len(r) for r in runs)):
        row: dict = {"step": runs[0][i]["step"]}
        for k in keys:
            vals = [r[i][k] for r in runs if k in r[i]]
            if vals:
                row[k] = statistics.fmean(vals)
        rows.append(row)
    return rows


def publish(summary: dict, out: Path, name: str, keys: Sequence[str], title: str, artifact: str, seeds: list[int],
            stamp: dict | None) -> None:
    """Plot ``summary["curves"]`` (metrics ``keys``) to ``out/NAME.{png,...}``; with ``artifact``, also write the
    stamped artifact there with the plot as ``plots/NAME.png``."""
    plot_training_curves(summary["curves"], list(keys), out / name)
    if artifact:
        folder = write_artifact(Path(artifact).parent, Path(artifact).name,
                                {**summary, "plot": [f"plots/{name}.png"], "title": title}, seeds=seeds, stamp=stamp)
        plot_training_curves(summary["curves"], list(keys), plots_dir(folder) / name, formats=("png",))
        console.print(f"wrote the stamped artifact {folder}", highlight=False)


def begin(cfg, known: Sequence[str], out: str | Path, experiment: str,
          field: str = "arms") -> tuple[Path, list[int], dict | None]:
    """Check ``cfg.<field>`` (the arms, or e.g. negation's conditions) against ``known``, claim ``out`` for
    ``experiment-NAME`` and stamp the run (before anything runs, so the stamp records the tree it started
    from): (out, seeds, stamp or None)."""
    chosen = getattr(cfg, field)
    unknown = [a for a in chosen if a not in known]
    if unknown or not chosen:
        raise ConfigError(f"unknown {field} {unknown}; choose from {list(known)}")
    out = Path(out)
    claim_folder(out, f"experiment-{experiment}")
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    return out, seeds, make_stamp(Path(cfg.artifact).name, seeds) if cfg.artifact else None
