"""Tests that a wrong loss cannot pass: every clip branch by hand (both signs of the advantage), the
gradient of every objective term against finite differences (float64 ``torch.autograd.gradcheck``;
a detached term has a zero analytic gradient and fails), and truncation masking in every aggregation
mode (a truncated completion's tokens change neither the loss nor any gradient).

Each of these mutations of src/forklens/objectives turns a test here red: the lower clip bound
changed to ``1 - epsilon_high`` or removed; the KL term (GRPO k3 or fork-contrast top-K) detached;
the truncation mask ignored in ``seq-mean-token-mean`` or ``seq-mean-token-sum-norm``.
"""

from __future__ import annotations

import math

import pytest
import torch

from forklens.objectives import PolicyOutputs
from forklens.objectives.env_tokens import env_token_term
from forklens.objectives.fork_contrast import ForkContrastLossConfig, fork_contrast_loss, topk_kl
from forklens.objectives.grpo import GRPOLossConfig, clipped_pg_per_token, grpo_loss
from forklens.objectives.mixed_policy import MixedPolicyLossConfig, mixed_policy_loss
from forklens.objectives.sft import sft_loss
from forklens.rollouts import Rollouts

MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
EPS, EPS_HIGH = 0.2, 0.28  # clip range [0.8, 1.28]: the lower and upper bounds differ, so swapping them shows

# (advantage, ratio, expected per-token loss, expected d loss / d log pi): l = max(-A r, -A clip(r, 0.8, 1.28))
# and d(-A r)/d log pi = -A r where the unclipped term is the max, 0 where the clipped (constant) one is.
BRANCHES = {
    "A>0 ratio below 1-eps (unclipped wins)": (1.5, 0.5, -0.75, -0.75),
    "A>0 ratio inside": (1.5, 1.1, -1.65, -1.65),
    "A>0 ratio above 1+eps_high (clipped)": (1.5, 2.0, -1.5 * 1.28, 0.0),
    "A<0 ratio below 1-eps (clipped)": (-1.5, 0.5, 1.5 * 0.8, 0.0),
    "A<0 ratio inside": (-1.5, 1.1, 1.65, 1.65),
    "A<0 ratio above 1+eps_high (unclipped wins)": (-1.5, 2.0, 3.0, 3.0),
}


def one_token_rows(advantages, ratios, dtype=torch.float64):
    """One row per (A, ratio): a 1-token prompt and a 1-token response at position 1."""
    n = len(advantages)
    b = Rollouts.from_ids([[5]] * n, [[7]] * n, pad_id=0)
    b.advantages = torch.tensor(advantages, dtype=dtype)
    b.truncated = torch.zeros(n, dtype=torch.bool)
    old = torch.zeros(b.input_ids.shape, dtype=dtype)
    old[:, 1] = math.log(0.3)
    logp = old.clone()
    logp[:, 1] += torch.log(torch.tensor(ratios, dtype=dtype))
    b.old_logprobs = old
    b.response_mask = b.response_mask.to(dtype)
    return b, logp


@pytest.mark.parametrize("branch", list(BRANCHES), ids=list(BRANCHES))
def test_each_clip_branch_by_hand(branch):
    adv, ratio, loss, grad = BRANCHES[branch]
    b, logp = one_token_rows([adv], [ratio])
    logp.requires_grad_(True)
    per_token, mask, _ = clipped_pg_per_token(PolicyOutputs(logprobs=logp), b, GRPOLossConfig(EPS, EPS_HIGH))
    assert float(per_token[0, 1].detach()) == pytest.approx(loss, abs=1e-12)
    (per_token * mask).sum().backward()
    assert float(logp.grad[0, 1]) == pytest.approx(grad, abs=1e-12)
    assert float(logp.grad[0, 0]) == 0.0  # the prompt token is never trained


def test_all_branches_in_one_batch_and_clip_fraction():
    advs, ratios, losses, grads = zip(*BRANCHES.values())
    b, logp = one_token_rows(list(advs), list(ratios))
    logp.requires_grad_(True)
    for mode in MODES:
        res = grpo_loss(PolicyOutputs(logprobs=logp), b, GRPOLossConfig(EPS, EPS_HIGH, loss_agg_mode=mode,
                                                                         max_new_tokens=4))
        norm = 6 * (4 if mode == "seq-mean-token-sum-norm" else 1)  # 6 rows of 1 token each
        assert float(res.loss_sum) / float(res.count) == pytest.approx(sum(losses) / norm, abs=1e-12)
        assert float(res.count) == 6
        (grad,) = torch.autograd.grad(res.loss_sum, logp)
        assert grad[:, 1].tolist() == pytest.approx([g * 6 / norm for g in grads], abs=1e-12)
    # a token is clipped when the clipped term wins: A>0 above the upper bound, A<0 below the lower one
    assert res.metrics["clip_frac"] == (2.0, 6.0)


def test_symmetric_clip_is_not_the_asymmetric_one():
    """epsilon and epsilon_high act on their own side only: moving one leaves the other side's loss."""
    b, logp = one_token_rows([-1.5, 1.5], [0.5, 2.0])
    base = clipped_pg_per_token(PolicyOutputs(logprobs=logp), b, GRPOLossConfig(0.2, 0.28))[0][:, 1]
    lower = clipped_pg_per_token(PolicyOutputs(logprobs=logp), b, GRPOLossConfig(0.1, 0.28))[0][:, 1]
    upper = clipped_pg_per_token(PolicyOutputs(logprobs=logp), b, GRPOLossConfig(0.2, 0.5))[0][:, 1]
    assert lower.tolist() == pytest.approx([1.5 * 0.9, -1.5 * 1.28], abs=1e-12)
    assert upper.tolist() == pytest.approx([1.5 * 0.8, -1.5 * 1.5], abs=1e-12)
    assert base.tolist() == pytest.approx([1.5 * 0.8, -1.5 * 1.28], abs=1e-12)


def ragged_batch(truncated=(False, True, False), dtype=torch.float64, seed=0):
    """Three rows with responses of 3, 2 and 4 tokens, ratios in every clip region, a reference model."""
    g = torch.Generator().manual_seed(seed)
    b = Rollouts.from_ids([[5, 6], [5], [6, 6]], [[7, 8, 9], [7, 8], [9, 8, 7, 9]], pad_id=0)
    b.response_mask = b.response_mask.to(dtype)
    b.advantages = torch.tensor([1.2, -0.7, -1.9], dtype=dtype)
    b.truncated = torch.tensor(truncated)
    shape = b.input_ids.shape
    # ratios spread over [0.45, 2.0] (every clip region), each at least 0.02 away from a clip boundary
    ratios = torch.tensor([0.45, 0.6, 0.9, 1.0, 1.1, 1.2, 1.5, 2.0, 0.7, 1.05, 1.4, 0.5], dtype=dtype)
    logp = torch.full(shape, -1.0, dtype=dtype)
    old = logp.clone()
    pos = b.response_mask.bool()
    logp[pos] = -0.5 - torch.rand(int(pos.sum()), generator=g, dtype=dtype)
    old[pos] = logp[pos] - torch.log(ratios[: int(pos.sum())])
    b.old_logprobs = old * b.response_mask
    b.ref_logprobs = (logp - 0.3 + 0.6 * torch.rand(shape, generator=g, dtype=dtype)) * b.response_mask
    return b, (logp * b.response_mask).detach()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("beta", [0.0, 0.4])
def test_grpo_gradcheck_every_mode(mode, beta):
    """d(loss)/d(log pi) of the whole GRPO loss, KL term included, equals finite differences."""
    b, logp = ragged_batch(truncated=(False, False, False))
    cfg = GRPOLossConfig(EPS, EPS_HIGH, beta=beta, loss_agg_mode=mode, max_new_tokens=5)

    def loss(lp):
        res = grpo_loss(PolicyOutputs(logprobs=lp), b, cfg)
        return res.loss_sum / res.count

    assert torch.autograd.gradcheck(loss, (logp.clone().requires_grad_(True),), eps=1e-6, atol=1e-8)


def test_kl_gradient_by_hand():
    """With zero advantages only the k3 KL trains: d/d log pi [e^(r-l) - (r-l) - 1] = 1 - e^(r-l), per token,
    divided by the token count. A detached KL would give zero."""
    b, logp = ragged_batch(truncated=(False, False, False))
    b.advantages = torch.zeros(3, dtype=torch.float64)
    lp = logp.clone().requires_grad_(True)
    res = grpo_loss(PolicyOutputs(logprobs=lp), b, GRPOLossConfig(beta=0.4))
    (res.loss_sum / res.count).backward()
    mask = b.response_mask
    expected = 0.4 * (1 - torch.exp(b.ref_logprobs - logp)) * mask / mask.sum()
    assert torch.allclose(lp.grad, expected, atol=1e-12)
    assert float(lp.grad.abs().sum()) > 0.01  # not the zero gradient of a detached KL


@pytest.mark.parametrize("mode", MODES)
def test_truncated_rows_are_masked_in_every_mode(mode):
    """A truncated completion adds nothing to the loss and gets no gradient; the others keep theirs."""
    b, logp = ragged_batch(truncated=(False, True, False))
    cfg = GRPOLossConfig(EPS, EPS_HIGH, beta=0.4, loss_agg_mode=mode, max_new_tokens=5)
    lp = logp.clone().requires_grad_(True)
    res = grpo_loss(PolicyOutputs(logprobs=lp), b, cfg)
    res.loss_sum.backward()
    assert float(lp.grad[1].abs().sum()) == 0.0  # row 1 is truncated
    assert float(lp.grad[0].abs().sum()) > 0 and float(lp.grad[2].abs().sum()) > 0
    # the loss by hand, over the kept rows only (the truncated row still counts as a sequence in seq modes)
    per_token, _, _ = clipped_pg_per_token(PolicyOutputs(logprobs=logp), b, cfg)
    keep = b.response_mask.clone()
    keep[1] = 0
    if mode == "token-mean":
        expected, count = float((per_token * keep).sum()), float(keep.sum())
    elif mode == "seq-mean-token-mean":
        expected = sum(float((per_token[i] * keep[i]).sum() / keep[i].sum()) for i in (0, 2))
        count = 3.0
    else:
        expected, count = float((per_token * keep).sum()) / 5, 3.0
    assert float(res.loss_sum) == pytest.approx(expected, abs=1e-12)
    assert float(res.count) == count
    # changing the truncated row's log-probs changes nothing
    moved = logp.clone()
    moved[1] += 0.37 * b.response_mask[1]
    again = grpo_loss(PolicyOutputs(logprobs=moved), b, cfg)
    assert float(again.loss_sum) == pytest.approx(float(res.loss_sum), abs=1e-12)
    # with masking off, the same row does train
    off = GRPOLossConfig(EPS, EPS_HIGH, beta=0.4, loss_agg_mode=mode, max_new_tokens=5, mask_truncated_completions=False)
    lp2 = logp.clone().requires_grad_(True)
    grpo_loss(PolicyOutputs(logprobs=lp2), b, off).loss_sum.backward()
    assert float(lp2.grad[1].abs().sum()) > 0


@pytest.mark.parametrize("mode", MODES)
def test_mixed_policy_gradcheck_and_truncation(mode):
    """LUFFY shaping on off-policy rows, NLL on SFT rows, clipped PG + KL on the rest: finite differences,
    and the truncated on-policy row gets no gradient in any mode."""
    b, logp = ragged_batch(truncated=(False, True, False))
    b.extras["off_policy"] = torch.tensor([False, False, True])
    b.extras["sft"] = torch.tensor([True, False, False])
    cfg = MixedPolicyLossConfig(EPS, EPS_HIGH, beta=0.4, loss_agg_mode=mode, max_new_tokens=5, shaping_gamma=0.1)

    def loss(lp):
        res = mixed_policy_loss(PolicyOutputs(logprobs=lp), b, cfg)
        return res.loss_sum / res.count

    lp = logp.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(loss, (lp,), eps=1e-6, atol=1e-8)
    loss(lp).backward()
    assert float(lp.grad[1].abs().sum()) == 0.0
    # the shaped off-policy term by hand: d/d log pi [-A p / (p + gamma)] = -A gamma p / (p + gamma)^2
    lp.grad = None
    res = mixed_policy_loss(PolicyOutputs(logprobs=lp), b, MixedPolicyLossConfig(loss_agg_mode="token-mean"))
    res.loss_sum.backward()
    p = logp[2].exp()
    expected = 1.9 * 0.1 * p / (p + 0.1) ** 2 * b.response_mask[2]
    assert torch.allclose(lp.grad[2], expected, atol=1e-12)
    assert torch.allclose(lp.grad[0], -b.response_mask[0], atol=1e-12)  # the SFT row: d(-log p) = -1


def fork_batch(k=3):
    g = torch.Generator().manual_seed(1)
    b = Rollouts.from_ids([[5], [6]], [[7, 8, 9], [7, 8]], pad_id=0)
    b.response_mask = b.response_mask.to(torch.float64)
    b.advantages = torch.tensor([0.8, -1.1], dtype=torch.float64)
    shape = b.input_ids.shape
    decision = torch.zeros(shape, dtype=torch.float64)
    decision[0, 2] = decision[1, 1] = 1.0
    rest = b.response_mask - decision
    b.tags["w_pg"] = decision * 2 / decision.sum()
    b.tags["w_kl"] = rest * 2 / rest.sum()
    base = torch.log_softmax(torch.randn(*shape, k + 2, generator=g, dtype=torch.float64), -1)[..., :k]
    b.tags["kl_logp"] = base
    b.tags["gather_ids"] = torch.zeros(*shape, k, dtype=torch.long)
    logp = -0.5 - torch.rand(shape, generator=g, dtype=torch.float64)
    gathered = torch.log_softmax(torch.randn(*shape, k + 2, generator=g, dtype=torch.float64), -1)[..., :k]
    return b, logp * b.response_mask, gathered


def test_fork_contrast_gradcheck_both_terms():
    """The signed NLL at decision tokens and the top-K KL anchor elsewhere: finite differences with
    respect to both the token log-probs and the log-probs at the base's top-K ids."""
    b, logp, gathered = fork_batch()
    cfg = ForkContrastLossConfig(kl_coef=0.3)

    def loss(lp, gl):
        return fork_contrast_loss(PolicyOutputs(logprobs=lp, gathered_logprobs=gl), b, cfg).loss_sum

    inputs = (logp.clone().requires_grad_(True), gathered.clone().requires_grad_(True))
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-8)
    loss(*inputs).backward()
    # the KL term is what trains the gathered log-probs; it must have a gradient (a detached KL has none)
    assert float(inputs[1].grad.abs().sum()) > 1e-3
    # the decision term by hand: d/d log pi [w A (-log pi)] = -w A
    expected = -(b.tags["w_pg"] * b.advantages[:, None])
    assert torch.allclose(inputs[0].grad, expected, atol=1e-12)


def test_topk_kl_is_the_coarsened_kl():
    """KL over K tokens + a rest bucket equals the KL of the two (K+1)-outcome distributions, by hand."""
    base = torch.log(torch.tensor([[0.5, 0.2, 0.1]], dtype=torch.float64))
    pi = torch.log(torch.tensor([[0.3, 0.3, 0.2]], dtype=torch.float64))
    pb, pp = [0.5, 0.2, 0.1, 0.2], [0.3, 0.3, 0.2, 0.2]
    expected = sum(a * math.log(a / c) for a, c in zip(pb, pp))
    assert float(topk_kl(base, pi)) == pytest.approx(expected, abs=1e-12)


def test_sft_and_env_token_gradients():
    b, logp = ragged_batch()
    lp = logp.clone().requires_grad_(True)
    res = sft_loss(PolicyOutputs(logprobs=lp), b)
    assert torch.autograd.gradcheck(lambda x: sft_loss(PolicyOutputs(logprobs=x), b).loss_sum, (lp,))
    res.loss_sum.backward()
    assert torch.equal(lp.grad, -b.response_mask)
    env = torch.zeros_like(b.response_mask)
    env[0, 0] = env[2, 1] = env[2, 2] = 1.0  # position 0 predicts nothing and is never a target
    b.tags["env_mask"] = env
    lp.grad = None
    term, n = env_token_term(PolicyOutputs(logprobs=lp), b, 0.05)
    assert float(n) == 2.0
    term.backward()
    expected = torch.zeros_like(env)
    expected[2, 1] = expected[2, 2] = -0.05
    assert torch.equal(lp.grad, expected)
