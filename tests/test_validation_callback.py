"""Trainer callbacks: a True return stops training cleanly; the validation callback logs val/accuracy
with cumulative FLOPs to metrics.jsonl and stops by the plateau rule."""

import pytest

from forklens.analysis.curves import PlateauStopper, curve_from_metrics
from forklens.analysis.evaluate import EvalConfig
from forklens.policy import Policy
from forklens.tasks.arith import ArithConfig, ArithTask
from forklens.train.checkpoint import latest_checkpoint
from forklens.train.loop import Trainer, TrainConfig, read_metrics
from forklens.train.sources import SFTSource
from forklens.train.validation import ValidationCallback
from tests.conftest import make_tiny

TASK = ArithTask(ArithConfig(digits=2))


def _trainer(out, steps, callbacks):
    model, tok = make_tiny("llama", seed=11)
    src = SFTSource(lambda rng, n: [TASK.teacher_example(rng) for _ in range(n)], batch_size=4, seed=3)
    cfg = TrainConfig(max_steps=steps, learning_rate=3e-3, micro_batch_size=4, seed=3)
    return Trainer(Policy(model, tok), "sft", None, src, cfg, out, progress=False, callbacks=callbacks)


def test_a_callback_returning_true_stops_after_that_step_and_saves(tmp_path):
    seen = []

    def stop_at_3(trainer, metrics):
        seen.append((trainer.step, metrics["step"]))
        metrics["custom"] = 1.0
        return trainer.step == 3

    calls = []
    trainer = _trainer(tmp_path, 10, [stop_at_3, lambda t, m: calls.append(t.step)])  # returns None: never stops
    last = trainer.train()
    assert trainer.step == 3 and trainer.stopped_early and last["step"] == 3
    assert seen == [(1, 1), (2, 2), (3, 3)] and calls == [1, 2, 3]  # every callback ran at the stopping step
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["custom"] == 1.0 for r in rows)
    assert latest_checkpoint(tmp_path / "checkpoints") is not None  # saved although max_steps was not reached


def test_no_callbacks_runs_to_max_steps(tmp_path):
    trainer = _trainer(tmp_path, 2, None)
    trainer.train()
    assert trainer.step == 2 and not trainer.stopped_early


def test_validation_callback_logs_the_curve_and_stops_on_plateau(tmp_path):
    problems = TASK.problems("train")[:6]
    # min_delta above any possible gain (accuracy <= 1): every evaluation after the first is stale
    cb = ValidationCallback(TASK, problems, every=2, stopper=PlateauStopper(patience=2, min_delta=2.0),
                            config=EvalConfig(max_new_tokens=8))
    trainer = _trainer(tmp_path, 20, [cb])
    trainer.train()
    # evaluations at steps 2 (best), 4 (stale 1), 6 (stale 2 -> stop)
    assert trainer.step == 6 and trainer.stopped_early
    assert [h[0] for h in cb.history] == [2, 4, 6]
    rows = read_metrics(tmp_path / "metrics.jsonl")
    logged = [r for r in rows if "val/accuracy" in r]
    assert [r["step"] for r in logged] == [2, 4, 6]
    assert all(r["val/flops"] == r["flops"] > 0 for r in logged)
    assert all(r["val/accuracy"] in {k / 6 for k in range(7)} for r in logged)  # a fraction of 6 problems
    assert logged[-1]["val/stopped"] == 1.0 and "val/stopped" not in logged[0]
    curve = curve_from_metrics(rows)
    assert curve.flops == tuple(h[1] for h in cb.history) and curve.accuracy == tuple(h[2] for h in cb.history)


def test_validation_callback_evaluates_after_the_last_step_and_checks_input(tmp_path):
    cb = ValidationCallback(TASK, TASK.problems("train")[:2], every=4, config=EvalConfig(max_new_tokens=4))
    _trainer(tmp_path, 5, [cb]).train()
    assert [h[0] for h in cb.history] == [4, 5]
    with pytest.raises(ValueError, match="every"):
        ValidationCallback(TASK, TASK.problems("train")[:2], every=0)
    with pytest.raises(ValueError, match="empty"):
        ValidationCallback(TASK, [], every=1)
