"""Gradients do not depend on micro-batching: (micro-batch B, accum 1) == (micro-batch 1, accum B).

Uneven response lengths make the difference between a global token mean and a mean of micro-batch
means visible; the simulated bugs must break the equality (so this test can fail).
"""

import copy

import pytest
import torch

from forklens.objectives import get_objective
from forklens.objectives.grpo import GRPOLossConfig
from forklens.rollouts import Rollouts
from forklens.train.step import accumulate_step
from tests.conftest import make_tiny

B = 6


def make_batch(seed=0, with_old=True):
    g = torch.Generator().manual_seed(seed)
    prompts, responses = [], []
    for i in range(B):
        lp = 2 + i % 3
        lr = [1, 9, 3, 14, 2, 6][i]  # uneven response lengths
        prompts.append(torch.randint(4, 18, (lp,), generator=g).tolist())
        responses.append(torch.randint(4, 18, (lr,), generator=g).tolist())
    b = Rollouts.from_ids(prompts, responses, pad_id=0)
    b.advantages = torch.randn(B, generator=g)
    b.truncated = torch.tensor([False, False, True, False, False, False])
    if with_old:
        # behaviour log-probs off the current policy so that ratios are far from 1 and some clip
        b.old_logprobs = (torch.randn(b.input_ids.shape, generator=g) * 0.3 - 2.5) * b.response_mask
    b.ref_logprobs = (torch.randn(b.input_ids.shape, generator=g) * 0.3 - 2.5) * b.response_mask
    return b


def grads(model, objective, cfg, batch, micro, bug="none"):
    m = copy.deepcopy(model)
    m.zero_grad(set_to_none=True)
    metrics = accumulate_step(m, objective, cfg, batch.split(micro), simulate_bug=bug)
    return torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]), metrics


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


CASES = [("sft", None)] + [
    ("grpo", GRPOLossConfig(loss_agg_mode=mode, beta=beta, max_new_tokens=16))
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm") for beta in (0.0, 0.1)
] + [("mixed_policy", None), ("fork_contrast", None)] + [
    # training-loop levers: entropy-gated policy gradient, environment-token loss, both
    ("grpo", GRPOLossConfig(top_entropy_quantile=0.3, beta=0.1, max_new_tokens=16)),
    ("grpo", GRPOLossConfig(env_loss_coef=0.05, max_new_tokens=16)),
    ("grpo", GRPOLossConfig(loss_agg_mode="seq-mean-token-mean", top_entropy_quantile=0.2, env_loss_coef=0.5,
                            max_new_tokens=16)),
    ("mixed_policy_levers", None),
]


def case_id(name, cfg) -> str:
    if not cfg:
        return name
    out = f"{name}-{cfg.loss_agg_mode}-b{cfg.beta}"
    if cfg.top_entropy_quantile < 1:
        out += f"-q{cfg.top_entropy_quantile}"
    if cfg.env_loss_coef > 0:
        out += f"-env{cfg.env_loss_coef}"
    return out


def add_env_tokens(batch):
    """Mark every third response token of rows 1, 3 and 5 as an environment observation (not trained
    on by the policy loss, like episode rollouts)."""
    env = torch.zeros_like(batch.response_mask)
    for i in (1, 3, 5):
        start = int(batch.prompt_lens[i])
        n = int(batch.response_mask[i].sum())
        for t in range(start + 1, start + n, 3):
            env[i, t] = 1.0
    batch.response_mask = batch.response_mask * (1 - env)
    batch.tags["env_mask"] = env
    return batch


def case_inputs(name, cfg):
    """(objective config, optimizer batch) of a case: every objective on uneven token counts."""
    if name == "mixed_policy":
        from forklens.objectives.mixed_policy import MixedPolicyLossConfig

        batch = make_batch()
        batch.extras["off_policy"] = torch.tensor([False, True, False, False, True, False])
        batch.extras["sft"] = torch.tensor([False, False, False, True, False, False])
        return MixedPolicyLossConfig(), batch
    if name == "mixed_policy_levers":
        from forklens.objectives.mixed_policy import MixedPolicyLossConfig

        batch = add_env_tokens(make_batch())
        batch.extras["off_policy"] = torch.tensor([False, True, False, False, True, False])
        batch.extras["sft"] = torch.tensor([False, False, False, True, False, False])
        return MixedPolicyLossConfig(top_entropy_quantile=0.4, env_loss_coef=0.1), batch
    if name == "fork_contrast":
        from forklens.objectives.fork_contrast import ForkContrastLossConfig
        from tests.test_fork_contrast import make_batch as fork_batch

        return ForkContrastLossConfig(kl_coef=0.1), fork_batch()
    if cfg is not None and cfg.env_loss_coef > 0:
        return cfg, add_env_tokens(make_batch())
    return cfg, make_batch()


def objective_name(name):
    return "mixed_policy" if name == "mixed_policy_levers" else name


@pytest.mark.parametrize("name,cfg", CASES, ids=[case_id(n, c) for n, c in CASES])
def test_microbatch_invariance(name, cfg):
    model, _ = make_tiny("llama", seed=1)
    model.float()
    objective = get_objective(objective_name(name))
    cfg, batch = case_inputs(name, cfg)
    g_full, m_full = grads(model, objective, cfg, batch, micro=B)
    for micro in (1, 2, 4):  # 4 gives uneven micro-batches (4 + 2)
        g, m = grads(model, objective, cfg, batch, micro=micro)
        assert rel_err(g, g_full) <= 1e-5, (micro, rel_err(g, g_full))
        assert m["loss"] == pytest.approx(m_full["loss"], rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("bug", ["mean-of-means", "offload-accum"])
def test_simulated_bugs_break_invariance(bug):
    model, _ = make_tiny("llama", seed=1)
    objective = get_objective("sft")
    batch = make_batch()
    g_full, _ = grads(model, objective, None, batch, micro=B)
    g_bug, _ = grads(model, objective, None, batch, micro=1, bug=bug)
    assert rel_err(g_bug, g_full) > 1e-2
    # with one micro-batch the bugs are invisible
    g_one, _ = grads(model, objective, None, batch, micro=B, bug=bug)
    assert rel_err(g_one, g_full) <= 1e-6


def test_offload_accum_keeps_first_and_last_microbatch():
    model, _ = make_tiny("llama", seed=2)
    objective = get_objective("sft")
    batch = make_batch(seed=3)
    parts = batch.split(2)  # K = 3 micro-batches
    g_bug, _ = grads(model, objective, None, batch, micro=2, bug="offload-accum")
    # reference: gradient of (sum over micro-batches 0 and 2) / (global token count)
    m = copy.deepcopy(model)
    m.zero_grad(set_to_none=True)
    from forklens.train.step import forward

    total = sum(float(p.response_mask.sum()) for p in parts)
    for p in (parts[0], parts[2]):
        res = objective(forward(m, p), p, None)
        (res.loss_sum / total).backward()
    g_ref = torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None])
    assert rel_err(g_bug, g_ref) <= 1e-5
