"""Truncated importance sampling for rollouts from another engine (issue 16): weights, the loss, the
rollout tag, and reading vLLM's per-token log-probs."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from forklens.objectives import get_objective
from forklens.objectives.grpo import GRPOLossConfig, tis_weights
from forklens.policy import Samples
from forklens.policy.vllm_backend import sampled_logprobs
from forklens.train.step import forward
from tests.conftest import make_tiny
from tests.test_invariance import make_batch


def test_weights_by_hand():
    train = torch.tensor([[-1.0, -2.0, -0.5, -3.0]])
    sampler = torch.tensor([[-2.0, -1.0, float("nan"), -3.0]])
    w = tis_weights(train, sampler, cap=2.0)
    assert w.tolist()[0] == pytest.approx([2.0, math.exp(-1.0), 1.0, 1.0])  # capped, below 1, unknown, equal
    assert not w.requires_grad


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_loss_scales_by_the_weight(mode):
    model, _ = make_tiny("llama", seed=0)
    batch = make_batch(0, with_old=False)
    batch.advantages = batch.advantages.abs() + 0.1  # one sign: the clipped branch is the unclipped one at ratio 1
    out = forward(model, batch)
    grpo = get_objective("grpo")
    cfg = GRPOLossConfig(loss_agg_mode=mode, beta=0.0, mask_truncated_completions=False)
    plain = grpo(out, batch, cfg)
    batch.tags["sampler_logprobs"] = (out.logprobs.detach() - math.log(1.5)) * batch.response_mask
    batch.tags["sampler_logprobs"][batch.response_mask == 0] = float("nan")
    weighted = grpo(out, batch, cfg)
    assert float(weighted.loss_sum) == pytest.approx(1.5 * float(plain.loss_sum), rel=1e-5)
    assert weighted.metrics["tis_weight"][0] / weighted.metrics["tis_weight"][1] == pytest.approx(1.5, rel=1e-5)
    off = grpo(out, batch, GRPOLossConfig(loss_agg_mode=mode, beta=0.0, mask_truncated_completions=False, tis_cap=0))
    assert float(off.loss_sum) == pytest.approx(float(plain.loss_sum), rel=1e-6) and "tis_weight" not in off.metrics
    capped = GRPOLossConfig(loss_agg_mode=mode, beta=0.0, mask_truncated_completions=False, tis_cap=1.2)
    assert float(grpo(out, batch, capped).loss_sum) == pytest.approx(1.2 * float(plain.loss_sum), rel=1e-5)


def test_samples_carry_the_engine_logprobs_into_the_rollouts():
    s = Samples(prompt_ids=[[5, 6], [7]], response_ids=[[8, 9, 2], [10]], finished=[True, False], group=[0, 1],
                texts=["", ""], sampler_logprobs=[[-0.1, -0.2, float("nan")], [-0.3]])
    ro = s.to_rollouts(pad_id=0)
    lp = ro.tags["sampler_logprobs"]
    assert lp[0, 2:4].tolist() == pytest.approx([-0.1, -0.2]) and math.isnan(lp[0, 4]) and math.isnan(lp[0, 0])
    assert lp[1, 1].item() == pytest.approx(-0.3)
    s.sampler_logprobs = [[-0.1], [-0.3]]
    with pytest.raises(ValueError, match="completion 0: 1 sampler log-probs for 3 tokens"):
        s.to_rollouts(pad_id=0)


def test_reading_vllm_logprobs():
    lp = SimpleNamespace
    entries = [{4: lp(logprob=-0.5), 9: lp(logprob=-3.0)}, {7: -1.25}, None]
    got = sampled_logprobs([4, 7, 2], entries)
    assert got[:2] == [-0.5, -1.25] and math.isnan(got[2])
    assert all(math.isnan(v) for v in sampled_logprobs([1, 2], None))
