"""Training-loop levers: reward-variance (SNR) filtering of prompt groups."""

import pytest
import torch

from forklens.policy import Policy
from forklens.tasks.arith import ArithConfig, ArithTask
from forklens.train.sources import GRPOSource, SamplingConfig, snr_keep_groups
from tests.conftest import make_tiny


def test_snr_filter_hand_computed():
    std = torch.tensor([0.0, 0.5, 0.1, 0.4, 0.0])
    # total 1.0; descending 0.5 (cum 0.5), 0.4 (cum 0.9 >= 0.9 - 0.01): stop
    assert snr_keep_groups(std, rho=0.9) == [1, 3]
    assert snr_keep_groups(std, rho=1.0) == [1, 2, 3]  # zero-std groups never kept while others exist
    assert snr_keep_groups(std, rho=0.5) == [1]
    assert snr_keep_groups(torch.zeros(3), rho=0.9) == [0]  # at least one group survives


def test_snr_filter_ties_are_deterministic():
    std = torch.tensor([0.3, 0.3, 0.3])
    assert snr_keep_groups(std, rho=0.5) == [0, 1]


def test_grpo_source_trains_only_on_kept_groups():
    task = ArithTask(ArithConfig(digits=2))
    model, tok = make_tiny("llama", seed=6)
    policy = Policy(model, tok)
    sc = SamplingConfig(prompts_per_step=4, group_size=4, max_new_tokens=8, snr_filter_rho=0.9)
    src = GRPOSource(task, task.problems("train"), sc, reward_fns=[], seed=3)

    def reward(prompts, completions, problem, **_):  # groups 0 and 2 mixed, 1 and 3 constant
        first = {p.id: i for i, p in enumerate(src.last_chosen)}
        out = []
        for k, p in enumerate(problem):
            g = first[p.id]
            out.append(float(k % 2) if g in (0, 2) else 1.0)
        return out

    src.reward_fns, src.weights = [reward], [1.0]
    batch, info = src.batch(0, policy)
    assert len({p.id for p in src.last_chosen}) == 4, "the test needs four distinct problems"
    assert sorted(set(batch.group_ids.tolist())) == [0, 2]
    assert len(batch) == 8 and info["snr_kept_groups_frac"] == pytest.approx(0.5)
    assert info["frac_zero_std_groups"] == pytest.approx(0.5)  # measured before filtering


# ------------------------------------------------------------------ top_entropy_quantile

import copy  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from forklens.objectives import PolicyOutputs, get_objective  # noqa: E402
from forklens.objectives.grpo import (GRPOLossConfig, entropy_threshold, grpo_loss,  # noqa: E402
                                      prepare_entropy_mask, token_mask)
from forklens.policy.score import token_logprobs_and_entropy  # noqa: E402
from forklens.train.step import accumulate_step  # noqa: E402
from tests.test_invariance import add_env_tokens, make_batch, rel_err  # noqa: E402


def test_entropy_threshold_hand_computed():
    ent = torch.tensor([0.1, 0.5, 0.2, 0.9, 0.3])
    # sorted 0.1 0.2 0.3 0.5 0.9; the 0.6 quantile sits at position 2.4: 0.3 + 0.4 * (0.5 - 0.3) = 0.38
    assert entropy_threshold(ent, 0.4) == pytest.approx(0.38)
    assert entropy_threshold(ent, 0.4) == pytest.approx(float(torch.quantile(ent.double(), 0.6)))
    kept = ent >= entropy_threshold(ent, 0.4)
    assert kept.tolist() == [False, True, False, True, False]


def _full_batch_entropy_mask(model, batch, q):
    """Reference: one forward over the whole batch, the quantile over all trained tokens at once."""
    with torch.no_grad():
        _, ent, _ = token_logprobs_and_entropy(model, batch.input_ids, batch.attention_mask, batch.response_mask)
    mask = token_mask(batch, True).bool()
    thr = torch.quantile(ent[mask].double(), 1 - q)
    return ((ent >= thr) & mask).float()


@settings(max_examples=12, deadline=None)
@given(q=st.floats(0.05, 0.95), micro=st.sampled_from([1, 2, 3, 4]), seed=st.integers(0, 5))
def test_entropy_mask_is_step_global_across_micro_batches(q, micro, seed):
    model, _ = make_tiny("llama", seed=1)
    batch = make_batch(seed=seed)
    expected = _full_batch_entropy_mask(model, batch, q)
    parts = batch.split(micro)
    prepare_entropy_mask(model, parts, GRPOLossConfig(top_entropy_quantile=q))
    got = torch.cat([torch.nn.functional.pad(p.tags["entropy_mask"], (0, batch.input_ids.shape[1] -
                                                                        p.input_ids.shape[1])) for p in parts])
    assert torch.equal(got, expected)
    n = int(token_mask(batch, True).sum())
    assert int(got.sum()) >= 1 and int(got.sum()) <= n
    assert not bool((got * (1 - token_mask(batch, True))).any())  # never outside the trained tokens


def test_per_micro_batch_threshold_would_differ():
    """The reason for the pre-pass: a quantile per micro-batch keeps other tokens (so this can fail)."""
    model, _ = make_tiny("llama", seed=1)
    batch = make_batch()
    cfg = GRPOLossConfig(top_entropy_quantile=0.3)
    glob = batch.split(2)
    prepare_entropy_mask(model, glob, cfg)
    local = batch.split(2)
    for p in local:
        prepare_entropy_mask(model, [p], cfg)
    assert any(not torch.equal(a.tags["entropy_mask"], b.tags["entropy_mask"]) for a, b in zip(glob, local))


def test_entropy_gated_loss_drops_policy_gradient_on_low_entropy_tokens():
    batch = make_batch(with_old=False)
    lp = (torch.randn(batch.input_ids.shape) * 0.1 - 1.0) * batch.response_mask
    lp.requires_grad_(True)
    mask = token_mask(batch, True)
    emask = (torch.rand(mask.shape, generator=torch.Generator().manual_seed(0)) < 0.3).float() * mask
    batch.tags["entropy_mask"] = emask
    res = grpo_loss(PolicyOutputs(logprobs=lp), batch, GRPOLossConfig(top_entropy_quantile=0.3))
    res.loss_sum.backward()
    # on-policy ratio 1: d l / d logp = -A on kept tokens, 0 elsewhere; the count is still every trained token
    expected = -batch.advantages[:, None] * emask
    assert torch.allclose(lp.grad, expected, atol=1e-6)
    assert float(res.count) == float(mask.sum())
    with pytest.raises(ValueError, match="entropy_mask"):
        del batch.tags["entropy_mask"]
        grpo_loss(PolicyOutputs(logprobs=lp), batch, GRPOLossConfig(top_entropy_quantile=0.3))


# ------------------------------------------------------------------ environment-token loss (ECHO)

from forklens.objectives.env_tokens import env_token_term  # noqa: E402


def test_env_term_touches_only_observation_tokens():
    batch = add_env_tokens(make_batch())
    lp = (torch.randn(batch.input_ids.shape) - 2.0).requires_grad_(True)
    term, n = env_token_term(PolicyOutputs(logprobs=lp), batch, coef=0.05)
    term.backward()
    env = batch.tags["env_mask"]
    assert float(n) == float(env.sum()) > 0
    assert torch.equal(lp.grad != 0, env.bool())
    assert torch.allclose(lp.grad[env.bool()], torch.full((int(env.sum()),), -0.05))
    assert float(term.detach()) == pytest.approx(-0.05 * float((lp.detach() * env).sum()), rel=1e-6)


def _grad(model, cfg, batch, micro):
    m = copy.deepcopy(model)
    m.zero_grad(set_to_none=True)
    metrics = accumulate_step(m, get_objective("grpo"), cfg, batch.split(micro))
    return torch.cat([p.grad.flatten() for p in m.parameters()]), metrics


def _hand_env_ce_grad(model, batch, coef):
    """coef * mean over observation tokens of -log p(token | prefix), with the model's own logits."""
    m = copy.deepcopy(model)
    m.zero_grad(set_to_none=True)
    logits = m(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    env = batch.tags["env_mask"][:, 1:]
    loss = coef * -(logp * env).sum() / env.sum()
    loss.backward()
    return torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel())
                      for p in m.parameters()]), float(loss)


@pytest.mark.parametrize("micro", [6, 1, 4])
def test_env_loss_gradient_equals_hand_computation(micro):
    model, _ = make_tiny("llama", seed=1)
    model.float()
    batch = add_env_tokens(make_batch())
    coef = 0.05
    g_pg, m0 = _grad(model, GRPOLossConfig(max_new_tokens=16), batch, micro)
    g_both, m1 = _grad(model, GRPOLossConfig(env_loss_coef=coef, max_new_tokens=16), batch, micro)
    g_hand, loss_hand = _hand_env_ce_grad(model, batch, coef)
    # separately normalised: policy gradient (over its own tokens) + coef * mean CE over observation tokens
    assert rel_err(g_both - g_pg, g_hand) <= 1e-4
    assert m1["env_loss"] == pytest.approx(loss_hand, rel=1e-5)
    assert m1["env_ce"] == pytest.approx(loss_hand / coef, rel=1e-5)
    assert m1["loss"] == pytest.approx(m0["loss"], rel=1e-6, abs=1e-8)
    assert m1["env_loss_count"] == float(batch.tags["env_mask"].sum())


def test_env_loss_without_observation_tokens_is_a_clear_error():
    model, _ = make_tiny("llama", seed=1)
    with pytest.raises(ValueError, match="env_mask"):
        _grad(model, GRPOLossConfig(env_loss_coef=0.05), make_batch(), 6)


def test_episode_source_snr_filter_keeps_the_right_groups():
    from forklens.tasks.agent import AgentConfig, AgentTask
    from forklens.train.sources import GRPOSource, SamplingConfig

    task = AgentTask(AgentConfig(n_train=12, n_test=4))
    model, tok = make_tiny("llama", seed=2, alphabet=task.alphabet, hidden=32, max_pos=96)
    policy = Policy(model, tok)
    sc = SamplingConfig(prompts_per_step=4, group_size=3, T=1, turn_tokens=6, snr_filter_rho=0.9)

    values = [0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 2.0, 0.0]

    def reward(prompts, completions, problem, **_):  # groups 1 and 3 mixed (std 0.577 and 1.155), 0 and 2 constant
        return values[: len(completions)]

    src = GRPOSource(task, task.problems("train"), sc, seed=1, reward_fns=[reward])
    batch, info = src.batch(0, policy)
    # total std 1.732; descending 1.155 (cum 1.155 < 1.549), 0.577 (cum 1.732 >= 1.549): both mixed groups kept
    assert sorted(set(batch.group_ids.tolist())) == [1, 3] and len(batch) == 6
    assert info["snr_kept_groups_frac"] == pytest.approx(0.5)
    assert "env_mask" in batch.tags and batch.tags["env_mask"].shape == batch.input_ids.shape
