"""The lean Llama-family decoder equals the transformers forward, and the sampler falls back safely."""

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import make_tiny
from forklens.policy.fast_decode import StaticKVDecoder, fast_decode_supported, verify_fast_decoder
from forklens.policy.sample import KVStepper, left_pad, next_token, sample_batch

PROMPTS = [[5, 6, 7, 8], [9, 10], [3, 4, 5, 6, 7, 8, 9], [11]]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "mistral"])
@pytest.mark.parametrize("fixed", [False, True])
def test_fast_decoder_matches_transformers_step_by_step(arch, fixed):
    model, _ = make_tiny(arch, layers=3)
    assert fast_decode_supported(model, 32)
    ids, attn, pos = left_pad(PROMPTS, 0, "cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        fast = StaticKVDecoder(model, ids, attn, pos, max_new_tokens=12, fixed=fixed)
        ref = KVStepper(model, ids, attn, pos)
        assert torch.allclose(fast.logits, ref.logits, atol=1e-5, rtol=0)
        p = pos[:, -1:] + 1
        for _ in range(12):
            tok = torch.randint(3, 14, (len(PROMPTS),), generator=g)
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], 1)
            got, want = fast.step(tok, attn, p), ref.step(tok, attn, p)
            assert torch.allclose(got, want, atol=1e-5, rtol=0)
            p = p + 1


def test_unsupported_architectures_and_switch(monkeypatch):
    gpt2, _ = make_tiny("gpt2")
    assert not fast_decode_supported(gpt2, 16)
    llama, _ = make_tiny("llama")
    monkeypatch.setenv("FORKLENS_FAST_DECODE", "0")
    assert not fast_decode_supported(llama, 16)


def test_sliding_window_shorter_than_sequence_falls_back():
    model, _ = make_tiny("mistral")
    for layer in model.model.layers:
        layer.self_attn.sliding_window = 8
    assert fast_decode_supported(model, 8) and not fast_decode_supported(model, 9)


def test_mismatching_model_is_detected_and_sampling_falls_back():
    """If the fast path computed anything other than what transformers computes (simulated: the last
    MLP doubles its output during the fast prefill only), verification fails with a warning, the
    verdict is remembered, and the sampler decodes through transformers: greedy equals `generate`."""
    model, _ = make_tiny("llama", seed=3)
    ids, attn, pos = left_pad(PROMPTS, 0, "cpu")
    mlp = model.model.layers[-1].mlp
    orig, calls = mlp.forward, {"n": 0}

    def tampered(x):
        calls["n"] += 1
        return orig(x) * (2.0 if calls["n"] == 1 else 1.0)  # call 1 is the fast prefill

    mlp.forward = tampered
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok = verify_fast_decoder(model, ids, attn, pos)
    assert calls["n"] == 3  # fast prefill, fast step, reference forward
    assert ok is False and any("does not match" in str(w.message) for w in caught)
    assert verify_fast_decoder(model, ids, attn, pos) is False  # remembered, not re-run
    assert calls["n"] == 3
    mlp.forward = orig
    out, _, _ = sample_batch(model, [PROMPTS[0]], pad_id=0, eos_ids=[], max_new_tokens=6, temperature=0.0,
                             top_p=1.0, generator=None)
    ref = model.generate(input_ids=torch.tensor([PROMPTS[0]]), attention_mask=torch.ones(1, 4, dtype=torch.long),
                         do_sample=False, max_new_tokens=6, min_new_tokens=6, pad_token_id=0, eos_token_id=None)
    assert out[0] == ref[0, 4:].tolist()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_dead=st.integers(0, 6), temp=st.sampled_from([0.5, 1.0, 2.0]))
def test_inverse_cdf_sampling_never_draws_impossible_tokens(seed, n_dead, temp):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(16, 8, generator=g) * 3
    logits[:, :n_dead] = float("-inf")
    tok = next_token(logits, temp, 1.0, torch.Generator().manual_seed(seed))
    assert bool((tok >= n_dead).all()) and bool((tok < 8).all())


def test_inverse_cdf_sampling_has_the_right_distribution():
    """200k draws from a fixed 5-token distribution: every frequency within 4 standard errors."""
    probs = torch.tensor([0.5, 0.25, 0.15, 0.0999, 0.0001])
    logits = probs.log().expand(200_000, 5)
    tok = next_token(logits, 1.0, 1.0, torch.Generator().manual_seed(0))
    freq = torch.bincount(tok, minlength=5).double() / len(tok)
    se = (probs.double() * (1 - probs.double()) / len(tok)).sqrt()
    assert bool(((freq - probs.double()).abs() <= 4 * se + 1e-12).all()), freq
