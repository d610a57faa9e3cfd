"""Per-step logging: a JSONL file (the machine-readable truth), a rich progress bar, and the trackers a
run reports to (``train.report_to``: tensorboard, wandb, trackio), as TRL's ``report_to`` does."""

from __future__ import annotations

import importlib
import json
import math
import os
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from forklens.errors import ConfigError

console = Console(stderr=True)

SHOWN = {"loss": "loss", "reward_mean": "reward", "entropy": "H", "kl": "kl"}  # metric -> short label


def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.3g}"
    return str(v)


TRACKERS = ("tensorboard", "wandb", "trackio")
_INSTALL = {"tensorboard": "pip install 'forklens[tensorboard]'", "wandb": "pip install wandb",
            "trackio": "pip install trackio"}


def _import(tracker: str, module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"train.report_to includes {tracker!r}, which is not installed ({_INSTALL[tracker]}); "
                          f"or drop it from report_to") from None


class _TensorBoard:
    def __init__(self, run_dir: Path, name: str, config: dict | None):
        self.writer = _import("tensorboard", "torch.utils.tensorboard").SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, metrics: dict, step: int) -> None:
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        self.writer.close()


class _WandbLike:
    """wandb, or trackio (the same init / log / finish API). Project from ``WANDB_PROJECT`` /
    ``TRACKIO_PROJECT`` (default ``forklens``), run name from the run, config = the run's settings."""

    def __init__(self, tracker: str, run_dir: Path, name: str, config: dict | None):
        self.mod = _import(tracker, tracker)
        project = os.environ.get(f"{tracker.upper()}_PROJECT", "forklens")
        kwargs = {"project": project, "name": f"{name} ({run_dir.name})", "config": config or {}}
        if tracker == "wandb":
            kwargs["dir"] = str(run_dir)
        self.run = self.mod.init(**kwargs)

    def log(self, metrics: dict, step: int) -> None:
        self.mod.log({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
                     step=step)

    def close(self) -> None:
        self.mod.finish()


def check_trackers(report_to) -> list[str]:
    """The tracker names of ``report_to``, each known and importable, else a ConfigError (commands call
    this when they resolve their config, before any output folder is touched)."""
    names = list(dict.fromkeys(report_to or []))
    unknown = [t for t in names if t not in TRACKERS]
    if unknown:
        raise ConfigError(f"train.report_to: unknown tracker(s) {', '.join(map(repr, unknown))}; "
                          f"expected any of {', '.join(TRACKERS)}")
    for t in names:
        _import(t, "torch.utils.tensorboard" if t == "tensorboard" else t)
    return names


def open_trackers(report_to, run_dir: Path, name: str, config: dict | None = None) -> list:
    """The trackers named in ``report_to`` (unknown or missing ones are a ConfigError before anything runs)."""
    names = check_trackers(report_to)
    out = []
    for t in names:
        out.append(_TensorBoard(run_dir, name, config) if t == "tensorboard" else _WandbLike(t, run_dir, name, config))
    return out


class StepLogger:
    def __init__(self, path: Path, total: int, start: int = 0, name: str = "train", enabled: bool = True,
                 progress: bool = True, tensorboard: bool = False, log_every: int = 1,
                 report_to: list[str] | None = None, config: dict | None = None):
        self.path = path
        self.enabled = enabled
        self.log_every = max(1, log_every)
        self.progress = Progress(TextColumn(f"[bold]{escape(name)}[/]"), BarColumn(bar_width=20), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                 console=console, transient=False, disable=not (enabled and progress))
        self.task = self.progress.add_task(name, total=total, completed=start, info="")
        wanted = list(report_to or []) + (["tensorboard"] if tensorboard else [])
        self.trackers = open_trackers(wanted, path.parent, name, config) if enabled else []

    def __enter__(self):
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.progress.stop()
        for t in self.trackers:
            t.close()
        return False

    def log(self, metrics: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(metrics) + "\n")
        info = " ".join(f"{label} {_fmt(metrics[k])}" for k, label in SHOWN.items() if k in metrics)
        self.progress.update(self.task, completed=metrics["step"], info=info)
        for t in self.trackers:
            t.log(metrics, metrics["step"])
