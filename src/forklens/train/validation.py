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
    """A task restricted to a fixed problem list (what :func:`evaluate` evaluates on); everything else
    (``rollout``, ``rollout_metrics``, ...) is the task's own."""

    def __init__(self, task, problems: Sequence):
        self.task, self._problems = task, list(problems)

    def __getattr__(self, name: str):
        if name in ("task", "_problems"):  # not set yet (e.g. during copying): no recursion
            raise AttributeError(name)
        return getattr(self.task, name)

    def problems(self, split: str):
        return self._problems


class ValidationCallback:
    """``Trainer(..., callbacks=[ValidationCallback(task, problems, every=5, stopper=PlateauStopper())])``.

    Evaluates after step ``every``, ``2 * every``, ... (and after the last step); returns True, which
    stops the trainer, when ``stopper`` says the validation accuracy has plateaued. ``history`` keeps
    ``(step, flops, accuracy)`` of every evaluation. With ``keep_best`` it also keeps a copy of the
    model's weights at the first evaluation with the highest accuracy (``best_state``, ``best_step``),
    for early stopping that reports the best-validation model rather than the one at the stop."""

    def __init__(self, task, problems: Sequence, every: int, stopper: PlateauStopper | None = None,
                 config: EvalConfig | None = None, keep_best: bool = False):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if not problems:
            raise ValueError("the validation problem list is empty")
        self.task = _ProblemList(task, problems)
        self.every = every
        self.stopper = stopper
        self.config = replace(config or EvalConfig(), split="validation", limit=0)
        self.history: list[tuple[int, float, float]] = []
        self.keep_best = keep_best
        self.best_state: dict | None = None
        self.best_step: int | None = None

    def accuracy(self, policy) -> float:
        """Greedy validation accuracy of ``policy`` on this callback's problems (no stopping, no history)."""
        return evaluate(policy, self.task, self.config)["accuracy"]

    def __call__(self, trainer, metrics: dict) -> bool:
        last = trainer.step >= trainer.config.max_steps
        if trainer.step % self.every and not last:
            return False
        with fsdp.inference_params(trainer.model) if getattr(trainer, "fsdp", False) else nullcontext():
            accuracy = self.accuracy(trainer.policy)
        metrics["val/accuracy"] = accuracy
        metrics["val/flops"] = trainer.flops
        if self.keep_best and (not self.history or accuracy > max(a for _, _, a in self.history)):
            self.best_state = {k: v.detach().clone() for k, v in trainer.policy.model.state_dict().items()}
            self.best_step = trainer.step
        self.history.append((trainer.step, trainer.flops, accuracy))
        stop = self.stopper.update(accuracy) if self.stopper is not None else False
        if stop:
            metrics["val/stopped"] = 1.0
        return stop

