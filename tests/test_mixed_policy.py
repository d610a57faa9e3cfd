"""Mixed-policy objective (LUFFY off-policy shaping, ReLIFT SFT rows) and the sources that feed it."""

import copy
import math

import pytest
import torch

from forklens.objectives import PolicyOutputs, get_objective
from forklens.objectives.mixed_policy import MixedPolicyLossConfig, mixed_policy_loss
from forklens.policy import Policy
from forklens.rollouts import Rollouts
from forklens.tasks.arith import ArithConfig, ArithTask
from forklens.train.sources import GRPOSource, InterleavedSFTSource, SamplingConfig
from tests.conftest import make_tiny
from tests.test_invariance import grads, make_batch, rel_err


def test_mixed_loss_hand_computed():
    b = Rollouts.from_ids([[5], [5], [6]], [[7, 8], [9], [7, 7]], pad_id=0)
    b.advantages = torch.tensor([1.0, 0.5, 0.0])
    b.truncated = torch.tensor([False, False, False])
    b.extras["off_policy"] = torch.tensor([False, True, False])
    b.extras["sft"] = torch.tensor([False, False, True])
    logp = torch.zeros(b.input_ids.shape)
    old = torch.zeros(b.input_ids.shape)
    logp[0, 1:3] = torch.tensor([math.log(0.6), math.log(0.3)])
    old[0, 1:3] = torch.tensor([math.log(0.5), math.log(0.3)])  # ratios 1.2 (clipped at 1.28? no) and 1.0
    logp[1, 1] = math.log(0.2)  # off-policy expert token, p = 0.2
    logp[2, 1:3] = torch.tensor([math.log(0.7), math.log(0.9)])
    b.old_logprobs = old
    gamma = 0.1
    res = mixed_policy_loss(PolicyOutputs(logprobs=logp), b, MixedPolicyLossConfig(shaping_gamma=gamma))
    on = [max(-1.0 * 1.2, -1.0 * min(1.2, 1.28)), -1.0 * 1.0]
    off = [-0.5 * 0.2 / (0.2 + gamma)]
    sft = [-math.log(0.7), -math.log(0.9)]
    expected = (sum(on) + sum(off) + sum(sft)) / 5
    assert float(res.loss_sum) / float(res.count) == pytest.approx(expected, rel=1e-6)
    assert res.metrics["off_policy_token_frac"] == (1.0, 5.0)
    assert res.metrics["sft_token_frac"] == (2.0, 5.0)


def test_mixed_policy_gradient_invariant_to_microbatching():
    model, _ = make_tiny("llama", seed=1)
    batch = make_batch()
    batch.extras["off_policy"] = torch.tensor([False, True, False, False, True, False])
    batch.extras["sft"] = torch.tensor([False, False, False, True, False, False])
    obj, cfg = get_objective("mixed_policy"), MixedPolicyLossConfig()
    g_full, _ = grads(model, obj, cfg, batch, micro=len(batch))
    for micro in (1, 4):
        g, _ = grads(model, obj, cfg, batch, micro=micro)
        assert rel_err(g, g_full) <= 1e-5


def test_mixed_policy_without_tags_is_grpo():
    model, _ = make_tiny("llama", seed=2)
    batch = make_batch()
    cfg = MixedPolicyLossConfig()
    g1, _ = grads(model, get_objective("mixed_policy"), cfg, batch, micro=3)
    g2, _ = grads(model, get_objective("grpo"), cfg, batch, micro=3)
    assert rel_err(g1, g2) <= 1e-6


@pytest.fixture
def arith2():
    return ArithTask(ArithConfig(digits=2))


def test_luffy_groups_hold_expert_rows(arith2):
    model, tok = make_tiny("llama", seed=3)
    policy = Policy(model, tok)
    sc = SamplingConfig(prompts_per_step=3, group_size=4, max_new_tokens=10)
    src = GRPOSource(arith2, arith2.problems("train"), sc, seed=1,
                     expert_fn=arith2.expert_response, n_expert=1)
    batch, info = src.batch(0, policy)
    assert len(batch) == 12
    assert batch.group_ids.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    off = batch.extras["off_policy"].tolist()
    assert off == [False, False, False, True] * 3
    for g, problem in enumerate(src.last_chosen):
        row = 4 * g + 3
        n_prompt = int(batch.prompt_lens[row])
        text = policy.decode(batch.input_ids[row, n_prompt:int(batch.attention_mask[row].sum())].tolist())
        assert text == arith2.expert_response(problem)
        assert float(batch.rewards[row]) == 1.0  # the expert trace is correct
        assert float(batch.advantages[row]) > 0  # random samples fail, so the expert is above the mean


def test_relift_buffers_failed_groups_and_resumes(arith2):
    model, tok = make_tiny("llama", seed=4)
    policy = Policy(model, tok)
    sc = SamplingConfig(prompts_per_step=3, group_size=2, max_new_tokens=10)
    rl = GRPOSource(arith2, arith2.problems("train"), sc, seed=2)
    src = InterleavedSFTSource(rl, arith2.expert_response, sft_every=3, min_buffer=1)
    b0, i0 = src.batch(0, policy)  # RL: random model fails every group
    assert i0["sft_step"] == 0.0 and len(src.buffer) == 3
    src.batch(1, policy)
    saved = copy.deepcopy(src.state_dict())
    assert len(saved["buffer"]) == 6
    b2, i2 = src.batch(2, policy)  # (2 + 1) % 3 == 0: an SFT step on the 6 buffered problems
    assert i2["sft_step"] == 1.0 and len(b2) == 6 and bool(b2.extras["sft"].all()) and not src.buffer
    other = InterleavedSFTSource(GRPOSource(arith2, arith2.problems("train"), sc, seed=2),
                                 arith2.expert_response, sft_every=3, min_buffer=1)
    other.load_state_dict(saved)
    b2b, _ = other.batch(2, policy)
    assert torch.equal(b2.input_ids, b2b.input_ids)
