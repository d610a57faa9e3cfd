"""The GRPO loss on a hand-built batch equals hand-computed values, for every aggregation mode."""

import math

import pytest
import torch

from forklens.objectives import PolicyOutputs
from forklens.objectives.advantages import group_advantages
from forklens.objectives.grpo import GRPOLossConfig, grpo_loss
from forklens.rollouts import Rollouts


def hand_batch():
    # two sequences: prompt of 1 token, responses of 3 and 1 tokens
    ids = [[5], [6]]
    resp = [[7, 8, 9], [7]]
    b = Rollouts.from_ids(ids, resp, pad_id=0)
    b.advantages = torch.tensor([1.0, -2.0])
    b.truncated = torch.tensor([False, False])
    logp = torch.zeros(b.input_ids.shape)
    old = torch.zeros(b.input_ids.shape)
    # seq 0 tokens at positions 1..3; seq 1 token at position 1
    logp[0, 1:4] = torch.tensor([math.log(0.5), math.log(0.9), math.log(0.2)])
    old[0, 1:4] = torch.tensor([math.log(0.25), math.log(0.9), math.log(0.4)])  # ratios 2.0, 1.0, 0.5
    logp[1, 1] = math.log(0.3)
    old[1, 1] = math.log(0.2)  # ratio 1.5
    b.old_logprobs = old
    return b, logp


def per_token_hand(eps=0.2, eps_high=0.28):
    # l = max(-A r, -A clip(r))
    def l(a, r):
        return max(-a * r, -a * min(max(r, 1 - eps), 1 + eps_high))
    seq0 = [l(1.0, 2.0), l(1.0, 1.0), l(1.0, 0.5)]  # -1.28, -1.0, -0.5
    seq1 = [l(-2.0, 1.5)]  # max(3.0, 2.56) = 3.0
    return seq0, seq1


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_loss_matches_hand_computation(mode):
    b, logp = hand_batch()
    cfg = GRPOLossConfig(loss_agg_mode=mode, max_new_tokens=8)
    res = grpo_loss(PolicyOutputs(logprobs=logp), b, cfg)
    seq0, seq1 = per_token_hand()
    assert seq0 == pytest.approx([-1.28, -1.0, -0.5])
    assert seq1 == pytest.approx([3.0])
    if mode == "token-mean":
        expected = (sum(seq0) + sum(seq1)) / 4
    elif mode == "seq-mean-token-mean":
        expected = (sum(seq0) / 3 + sum(seq1) / 1) / 2
    else:
        expected = (sum(seq0) + sum(seq1)) / (2 * 8)
    assert float(res.loss_sum) / float(res.count) == pytest.approx(expected, rel=1e-6)
    # clip fraction: token with r=2.0, A>0 is clipped; r=1.5 with A<0 is not (it is above the upper bound
    # but the unclipped term is the max); so 1 of 4
    s, c = res.metrics["clip_frac"]
    assert (s, c) == (1.0, 4.0)


def test_truncated_completions_are_masked():
    b, logp = hand_batch()
    b.truncated = torch.tensor([False, True])
    res = grpo_loss(PolicyOutputs(logprobs=logp), b, GRPOLossConfig(loss_agg_mode="token-mean"))
    seq0, _ = per_token_hand()
    assert float(res.loss_sum) / float(res.count) == pytest.approx(sum(seq0) / 3, rel=1e-6)
    off = grpo_loss(PolicyOutputs(logprobs=logp), b, GRPOLossConfig(mask_truncated_completions=False))
    assert float(off.count) == 4


def test_kl_penalty_k3():
    b, logp = hand_batch()
    b.ref_logprobs = b.old_logprobs.clone()
    beta = 0.5
    res = grpo_loss(PolicyOutputs(logprobs=logp), b, GRPOLossConfig(beta=beta))
    seq0, seq1 = per_token_hand()
    ks = []
    for r, l in [(0.25, 0.5), (0.9, 0.9), (0.4, 0.2), (0.2, 0.3)]:
        d = math.log(r) - math.log(l)
        ks.append(math.exp(d) - d - 1)
    expected = (sum(seq0) + sum(seq1) + beta * sum(ks)) / 4
    assert float(res.loss_sum) / float(res.count) == pytest.approx(expected, rel=1e-6)
    assert res.metrics["kl"][0] / res.metrics["kl"][1] == pytest.approx(sum(ks) / 4, rel=1e-6)


def test_beta_without_reference_is_an_error():
    b, logp = hand_batch()
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(PolicyOutputs(logprobs=logp), b, GRPOLossConfig(beta=0.1))


def test_group_advantages_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    g = torch.tensor([0, 0, 0, 1, 1, 1])
    adv, std = group_advantages(r, g, "none")
    assert adv.tolist() == pytest.approx([2 / 3, -1 / 3, -1 / 3, -2 / 3, 1 / 3, 1 / 3])
    adv, std = group_advantages(r, g, "group", eps=0.0)
    s = math.sqrt(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)  # unbiased std of [1, 0, 0]
    assert std.tolist() == pytest.approx([s] * 6)
    assert adv.tolist() == pytest.approx([x / s for x in [2 / 3, -1 / 3, -1 / 3, -2 / 3, 1 / 3, 1 / 3]])
    adv, _ = group_advantages(torch.ones(4), torch.tensor([0, 0, 1, 1]), "group")
    assert adv.tolist() == [0.0] * 4  # zero-std groups give zero advantage
    bs = float(r.std())
    adv, _ = group_advantages(r, g, "batch", eps=0.0)
    assert adv.tolist() == pytest.approx([x / bs for x in [2 / 3, -1 / 3, -1 / 3, -2 / 3, 1 / 3, 1 / 3]])


def test_group_advantages_ignore_row_order():
    r = torch.tensor([1.0, 0.0, 3.0, 2.0, 0.5])
    g = torch.tensor([1, 0, 1, 0, 1])
    perm = torch.tensor([4, 2, 0, 3, 1])
    a, _ = group_advantages(r, g)
    b, _ = group_advantages(r[perm], g[perm])
    assert torch.allclose(a[perm], b)
