"""Sampler and scorer: greedy equals transformers' generate, seeds reproduce, scores equal full logits."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from forklens.policy import Policy
from forklens.policy.sample import filter_top_p
from tests.conftest import make_tiny

PROMPTS = ["347+485=", "1+2=", "99+1=", "12;A", "0000+9999="]


def hf_greedy(policy, prompts, max_new_tokens):
    ids = [policy.encode_prompt(p) for p in prompts]
    w = max(map(len, ids))
    inp = torch.tensor([[policy.pad_id] * (w - len(i)) + i for i in ids])
    att = torch.tensor([[0] * (w - len(i)) + [1] * len(i) for i in ids])
    out = policy.model.generate(input_ids=inp, attention_mask=att, do_sample=False, max_new_tokens=max_new_tokens,
                                pad_token_id=policy.pad_id, eos_token_id=policy.eos_ids)
    res = []
    for row in out[:, w:].tolist():
        r = []
        for t in row:
            r.append(t)
            if t in policy.eos_ids:
                break
        res.append(r)
    return res


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "recurrent", "recurrent-prefix", "mamba"])
def test_greedy_matches_generate(arch):
    model, tok = make_tiny(arch, seed=3)
    policy = Policy(model, tok)
    ours = policy.sample(PROMPTS, n=1, temperature=0, max_new_tokens=24)
    ref = hf_greedy(policy, PROMPTS, 24)
    assert ours.response_ids == ref


def test_greedy_stops_at_eos_on_trained_like_model():
    model, tok = make_tiny("llama", seed=0)
    # force EOS to be the argmax everywhere: the response is exactly [eos]
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.weight[tok.eos_token_id] = 1.0
        model.model.norm.weight.fill_(1.0)
    policy = Policy(model, tok)
    s = policy.sample(["1+2="], n=3, temperature=1.0, max_new_tokens=10)
    # ties do not matter: argmax and sampling both put mass on eos
    assert all(r[-1] == tok.eos_token_id for r in s.response_ids if s.finished[s.response_ids.index(r)])


def test_sampling_reproducible_and_seed_dependent(tiny_policy):
    a = tiny_policy.sample(PROMPTS, n=4, temperature=1.0, max_new_tokens=16, seed=7)
    b = tiny_policy.sample(PROMPTS, n=4, temperature=1.0, max_new_tokens=16, seed=7)
    c = tiny_policy.sample(PROMPTS, n=4, temperature=1.0, max_new_tokens=16, seed=8)
    assert a.response_ids == b.response_ids
    assert a.response_ids != c.response_ids
    assert a.group == [g for g in range(len(PROMPTS)) for _ in range(4)]
    for r, f in zip(a.response_ids, a.finished):
        assert len(r) <= 16
        assert f == (r[-1] in tiny_policy.eos_ids)
        assert all(t not in tiny_policy.eos_ids for t in r[:-1])


def test_sampling_batch_size_does_not_change_greedy(tiny_policy):
    a = tiny_policy.sample(PROMPTS, n=2, temperature=0, max_new_tokens=16, batch_size=3)
    b = tiny_policy.sample(PROMPTS, n=2, temperature=0, max_new_tokens=16, batch_size=64)
    assert a.response_ids == b.response_ids


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=2, max_size=12), st.floats(0.05, 1.0))
def test_top_p_keeps_smallest_nucleus(logits, top_p):
    x = torch.tensor([logits])
    kept = torch.isfinite(filter_top_p(x, top_p))[0]
    p = x.softmax(-1)[0]
    # every kept token is at least as likely as every dropped one (ties may go either way)
    if (~kept).any():
        assert float(p[kept].min()) >= float(p[~kept].max()) - 1e-6
    # the kept mass reaches top_p, and without its least likely member it would not
    assert float(p[kept].sum()) >= top_p - 1e-6
    if int(kept.sum()) > 1:
        assert float(p[kept].sum() - p[kept].min()) < top_p + 1e-6


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "recurrent", "recurrent-prefix", "mamba"])
@pytest.mark.parametrize("chunk", [1, 3, None])
def test_score_equals_full_logits(arch, chunk):
    model, tok = make_tiny(arch, seed=5)
    policy = Policy(model, tok)
    s = policy.sample(PROMPTS, n=2, temperature=1.0, max_new_tokens=12, seed=1)
    scored = policy.score(s.prompt_ids, s.response_ids, top_k=4, chunk_tokens=chunk, batch_tokens=40)
    for p, r, sc in zip(s.prompt_ids, s.response_ids, scored):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p + r])).logits[0].float()
        lp = logits.log_softmax(-1)[len(p) - 1:len(p) + len(r) - 1]
        y = torch.tensor(r)
        assert torch.allclose(sc.logprob, lp.gather(-1, y[:, None]).squeeze(-1), atol=1e-5)
        ent = -(lp.exp() * lp).sum(-1)
        assert torch.allclose(sc.entropy, ent, atol=1e-5)
        v, i = lp.topk(4, -1)
        assert torch.allclose(sc.topk_logprobs, v, atol=1e-5)
        assert torch.equal(sc.argmax, lp.argmax(-1))
        assert sc.token_ids.tolist() == r


def test_entropy_is_in_nats_over_full_vocab(tiny_policy):
    with torch.no_grad():
        tiny_policy.model.lm_head.weight.zero_()  # uniform distribution
    sc = tiny_policy.score([[5, 6]], [[7, 8, 9]])[0]
    assert torch.allclose(sc.entropy, torch.full((3,), math.log(len(tiny_policy.tokenizer))), atol=1e-5)
    assert torch.allclose(sc.logprob, torch.full((3,), -math.log(len(tiny_policy.tokenizer))), atol=1e-5)
