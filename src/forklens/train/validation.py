"""A trainer callback that evaluates on a validation problem list every N steps and stops training by
the plateau rule (:class:`forklens.analysis.curves.PlateauStopper`).

Each evaluation adds ``val/accuracy`` and ``val/flops`` (cumulative training FLOPs at that step; the
evaluation itself is not counted, for every method alike) to the step's line in ``metrics.jsonl``, so
:func:`forklens.analysis.curves.curve_from_metrics` reads the accuracy-vs-FLOPs curve back from the log.
Validation problems must not be test problems: pass a held-out slice of the training split.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace
from typing import Sequence

from forklens.analysis.curves import PlateauStopper
from forklens.analysis.evaluate import EvalConfig, evaluate
from forklens.train import fsdp


class _ProblemList:
    """A task restricted to a fixed problem list (what :func:`evaluate` evaluates on)."""

    def __init__(self, task, problems: Sequence):
        self.task, self._problems = task, list(problems)

    def problems(self, split: str):
        return self._problems

    def verify(self, problem, text: str) -> float:
        return self.task.verify(problem, text)

    def __getattr__(self, name: str):  # rollout, rollout_metrics, ...: the task's own
        if name == "task":
            raise AttributeError(name)
        return getattr(self.task, name)


class ValidationCallback:
    """``Trainer(..., callbacks=[ValidationCallback(task, problems, every=5, stopper=PlateauStopper())])``.

    Evaluates after step ``every``, ``2 * every``, ... (and after the last step); returns True, which
    stops the trainer, when ``stopper`` says the validation accuracy has plateaued. ``history`` keeps
    ``(step, flops, accuracy)`` of every evaluation."""

    def __init__(self, task, problems: Sequence, every: int, stopper: PlateauStopper | None = None,
                 config: EvalConfig | None = None):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if not problems:
            raise ValueError("the validation problem list is empty")
        self.task = _ProblemList(task, problems)
        self.every = every
        self.stopper = stopper
        self.config = replace(config or EvalConfig(), split="validation", limit=0)
        self.history: list[tuple[int, float, float]] = []

    def __call__(self, trainer, metrics: dict) -> bool:
        last = trainer.step >= trainer.config.max_steps
        if trainer.step % self.every and not last:
            return False
        with fsdp.inference_params(trainer.model) if getattr(trainer, "fsdp", False) else nullcontext():
            accuracy = evaluate(trainer.policy, self.task, self.config)["accuracy"]
        metrics["val/accuracy"] = accuracy
        metrics["val/flops"] = trainer.flops
        self.history.append((trainer.step, trainer.flops, accuracy))
        stop = self.stopper.update(accuracy) if self.stopper is not None else False
        if stop:
            metrics["val/stopped"] = 1.0
        return stop

