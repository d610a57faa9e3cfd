"""Per-step logging: a JSONL file (the machine-readable truth), a rich progress bar, TensorBoard."""

from __future__ import annotations

import json
import math
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)

SHOWN = {"loss": "loss", "reward_mean": "reward", "entropy": "H", "kl": "kl"}  # metric -> short label


def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.3g}"
    return str(v)


class StepLogger:
    def __init__(self, path: Path, total: int, start: int = 0, name: str = "train", enabled: bool = True,
                 progress: bool = True, tensorboard: bool = False, log_every: int = 1):
        self.path = path
        self.enabled = enabled
        self.log_every = max(1, log_every)
        self.progress = Progress(TextColumn(f"[bold]{escape(name)}[/]"), BarColumn(bar_width=20), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                 console=console, transient=False, disable=not (enabled and progress))
        self.task = self.progress.add_task(name, total=total, completed=start, info="")
        self.tb = None
        if tensorboard and enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise RuntimeError("tensorboard logging needs `pip install forklens[tensorboard]`") from exc
            self.tb = SummaryWriter(str(path.parent / "tensorboard"))

    def __enter__(self):
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.progress.stop()
        if self.tb is not None:
            self.tb.close()
        return False

    def log(self, metrics: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(metrics) + "\n")
        info = " ".join(f"{label} {_fmt(metrics[k])}" for k, label in SHOWN.items() if k in metrics)
        self.progress.update(self.task, completed=metrics["step"], info=info)
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, metrics["step"])
