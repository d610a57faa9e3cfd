"""Several updates per rollout batch (issue 16): ``train.num_iterations`` and ``train.mini_batches``.

With one update per batch the importance ratio is exactly 1, so GRPO's clip settings never act; with
``num_iterations > 1`` the behaviour log-probs are recorded before the first update, the ratio moves and
clipping must show up in ``clip_frac``."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from forklens.errors import ConfigError
from forklens.objectives.grpo import GRPOLossConfig
from forklens.policy import Policy
from forklens.train.loop import Trainer, TrainConfig
from forklens.train.step import mini_batch_parts
from tests.conftest import make_tiny
from tests.test_invariance import make_batch


class FixedSource:
    """The same on-policy batch (no behaviour log-probs) every step."""

    samples = False

    def __init__(self, seed: int = 0):
        self.seed = seed

    def batch(self, step, policy):
        return make_batch(self.seed + step, with_old=False), {}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def _run(tmp_path, name, **train_kw):
    model, tok = make_tiny("llama", seed=0)
    policy = Policy(model, tok)
    cfg = TrainConfig(max_steps=2, learning_rate=0.05, micro_batch_size=4, max_grad_norm=0, **train_kw)
    loss = GRPOLossConfig(epsilon=0.05, epsilon_high=0.05, beta=0.0)
    trainer = Trainer(policy, "grpo", loss, FixedSource(), cfg, tmp_path / name, progress=False)
    trainer.train()
    lines = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return trainer, lines


def test_one_update_never_clips_and_several_do(tmp_path):
    _, single = _run(tmp_path, "one")
    assert all(m["clip_frac"] == 0.0 for m in single)  # ratio == 1: the clip settings do nothing
    assert "optimizer_steps" not in single[0]
    trainer, multi = _run(tmp_path, "four", num_iterations=4)
    assert all(m["optimizer_steps"] == 4.0 for m in multi)
    assert all(m["clip_frac"] > 0.05 for m in multi)  # the later updates move the ratio past 1 +- 0.05
    state = trainer.optimizer.state[next(iter(trainer.optimizer.state))]
    assert int(state["step"]) == 8  # 2 batches x 4 updates


def test_flops_count_every_pass_and_the_behaviour_pass(tmp_path):
    _, single = _run(tmp_path, "one")
    trainer, multi = _run(tmp_path, "three", num_iterations=3)
    for a, b in zip(single, multi):
        assert b["trained_tokens"] == pytest.approx(3 * a["trained_tokens"])
    n_params = trainer.n_params
    tokens = make_batch(0, with_old=False).attention_mask.sum().item()
    assert multi[0]["behaviour_tokens"] == tokens
    # attention: 4 * layers * d_attn FLOPs per causal (query, key) pair per forward pass
    cfg = trainer.policy.model.config
    lengths = make_batch(0, with_old=False).attention_mask.sum(-1).double()
    pairs = float((lengths * (lengths + 1) / 2).sum())
    per_pass = 4 * cfg.num_hidden_layers * cfg.num_attention_heads * (cfg.hidden_size // cfg.num_attention_heads) * pairs
    assert multi[0]["attention_flops"] == pytest.approx(per_pass * (3 * 3 + 1))  # 3 trained passes x 3 + behaviour
    assert multi[0]["flops"] == pytest.approx(6 * n_params * 3 * tokens + 2 * n_params * tokens + per_pass * 10)
    assert single[0]["flops"] == pytest.approx(6 * n_params * tokens + 3 * per_pass)


def test_mini_batches_step_on_each_part(tmp_path):
    trainer, lines = _run(tmp_path, "mb", mini_batches=3)
    assert lines[0]["optimizer_steps"] == 3.0
    state = trainer.optimizer.state[next(iter(trainer.optimizer.state))]
    assert int(state["step"]) == 6
    parts = mini_batch_parts(make_batch(0), 4)
    assert [len(p) for p in parts] == [1, 2, 1, 2]  # every part non-empty, the rows in order
    assert torch.equal(torch.cat([p.advantages for p in parts]), make_batch(0).advantages)
    with pytest.raises(ValueError, match="train.mini_batches=7 is more than the 6 sequences"):
        mini_batch_parts(make_batch(0), 7)


def test_first_update_equals_the_single_update(tmp_path):
    """The first of several updates sees ratio 1, so it is the one-update step (same weights after it)."""
    model, tok = make_tiny("llama", seed=0)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    cfg = dict(max_steps=1, learning_rate=0.05, micro_batch_size=4, max_grad_norm=0)
    loss = GRPOLossConfig(epsilon=0.05, epsilon_high=0.05, beta=0.0)
    t1 = Trainer(Policy(a, tok), "grpo", loss, FixedSource(), TrainConfig(**cfg), tmp_path / "a", progress=False)
    t1.train()
    t2 = Trainer(Policy(b, tok), "grpo", loss, FixedSource(), TrainConfig(**cfg, mini_batches=1, num_iterations=2),
                 tmp_path / "b", progress=False)
    updates = []
    orig = t2._update

    def spy(micro, no_sync):
        out = orig(micro, no_sync)
        updates.append([p.detach().clone() for p in b.parameters()])
        return out

    t2._update = spy
    t2.train()
    assert len(updates) == 2
    for p, q in zip(a.parameters(), updates[0]):
        torch.testing.assert_close(p.detach(), q, rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(p, q) for p, q in zip(updates[0], updates[1]))


def test_config_bounds():
    from forklens.config import load_config

    with pytest.raises(ConfigError, match="num_iterations=0"):
        load_config(TrainConfig, overrides=["num_iterations=0"])
