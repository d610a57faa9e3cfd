"""Mixed precision and gradient checkpointing in the one trainer (issue 16): forklens autocasts itself,
so one process and many behave the same (tests/test_distributed.py has the 2-process half)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from forklens.errors import ConfigError
from forklens.objectives.grpo import GRPOLossConfig
from forklens.policy import Policy
from forklens.train.loop import Trainer, TrainConfig
from forklens.train.step import resolve_precision
from tests.conftest import make_tiny
from tests.test_num_iterations import FixedSource


def test_resolve_precision(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert resolve_precision("auto") == "no"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "BF16")
    assert resolve_precision("auto") == "bf16"
    assert resolve_precision("no") == "no"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp8")
    with pytest.raises(ConfigError, match="ACCELERATE_MIXED_PRECISION='fp8'"):
        resolve_precision("auto")


def _train(tmp_path, name, model, tok, **kw):
    dtypes = []
    layer = model.model.layers[0].mlp.down_proj
    handle = layer.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype) if m.training else None)
    cfg = TrainConfig(max_steps=2, learning_rate=0.01, micro_batch_size=4, **kw)
    t = Trainer(Policy(model, tok), "grpo", GRPOLossConfig(), FixedSource(), cfg, tmp_path / name, progress=False)
    t.train()
    handle.remove()
    lines = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return t, lines, set(dtypes)


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_on_one_process(tmp_path, monkeypatch, precision, dtype):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    model, tok = make_tiny("llama", seed=0)
    _, ref, ref_dtypes = _train(tmp_path, "fp32", copy.deepcopy(model), tok)
    assert ref_dtypes == {torch.float32}
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", precision)  # auto follows accelerate's variable
    t, low, low_dtypes = _train(tmp_path, precision, model, tok)
    assert low_dtypes == {dtype}
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights
    assert (t.scaler is not None) == (precision == "fp16")
    if precision == "fp16":  # the scaler starts at 2**16 and halves on each overflow (that step is skipped)
        assert all(m["loss_scale"] > 0 for m in low)
        assert all(torch.isfinite(p).all() for p in model.parameters())
        return
    for a, b in zip(ref, low):  # the on-policy GRPO loss is exactly -mean(adv); the gradient shows the precision
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=0.05)
    assert any(a["grad_norm"] != b["grad_norm"] for a, b in zip(ref, low))


def test_gradient_checkpointing_changes_nothing_but_memory(tmp_path):
    model, tok = make_tiny("llama", seed=0)
    plain, ckpt = copy.deepcopy(model), copy.deepcopy(model)
    _, a, _ = _train(tmp_path, "plain", plain, tok, mixed_precision="no")
    _, b, _ = _train(tmp_path, "ckpt", ckpt, tok, mixed_precision="no", gradient_checkpointing=True)
    assert ckpt.is_gradient_checkpointing
    assert [m["loss"] for m in a] == pytest.approx([m["loss"] for m in b], rel=1e-6)
    for p, q in zip(plain.parameters(), ckpt.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
