"""``train.report_to`` (tensorboard, wandb, trackio): clear errors before anything is written, and every
step's numbers reach the tracker."""

from __future__ import annotations

import json
import sys
import types

import pytest

from forklens.cli import main
from forklens.errors import ConfigError
from forklens.objectives.grpo import GRPOLossConfig
from forklens.policy import Policy
from forklens.train.logging import check_trackers
from forklens.train.loop import Trainer, TrainConfig
from tests.conftest import make_tiny
from tests.test_num_iterations import FixedSource


def _fake(name: str, calls: list) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.init = lambda **kw: calls.append(("init", kw)) or object()
    mod.log = lambda data, step=None: calls.append(("log", step, dict(data)))
    mod.finish = lambda: calls.append(("finish",))
    return mod


def test_unknown_and_missing_trackers(monkeypatch):
    with pytest.raises(ConfigError, match="unknown tracker\\(s\\) 'mlflow'; expected any of tensorboard, wandb, trackio"):
        check_trackers(["mlflow"])
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(ConfigError, match="'wandb', which is not installed \\(pip install wandb\\)"):
        check_trackers(["wandb"])


@pytest.mark.parametrize("tracker", ["wandb", "trackio"])
def test_every_step_reaches_the_tracker(tmp_path, monkeypatch, tracker):
    calls: list = []
    monkeypatch.setitem(sys.modules, tracker, _fake(tracker, calls))
    model, tok = make_tiny("llama", seed=0)
    cfg = TrainConfig(max_steps=3, learning_rate=0.01, micro_batch_size=4, report_to=[tracker])
    Trainer(Policy(model, tok), "grpo", GRPOLossConfig(), FixedSource(), cfg, tmp_path / "run", name="GRPO",
            progress=False).train()
    init = [c for c in calls if c[0] == "init"]
    logs = [c for c in calls if c[0] == "log"]
    assert len(init) == 1 and init[0][1]["project"] == "forklens" and init[0][1]["config"]["max_steps"] == 3
    assert [c[1] for c in logs] == [1, 2, 3]
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [c[2]["loss"] for c in logs] == [m["loss"] for m in lines]
    assert calls[-1] == ("finish",)


def test_cli_refuses_a_missing_tracker_before_touching_out(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "trackio", None)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "1+1=", "response": "2"}) + "\n")
    out = tmp_path / "out"
    rc = main(["train", "sft", "--model", str(tmp_path / "no-model-needed"), "--data", str(data), "--out", str(out),
               "--set", "train.report_to=[trackio]"])
    assert rc == 2
    assert "train.report_to includes 'trackio', which is not installed (pip install trackio)" in capsys.readouterr().err
    assert not out.exists()
