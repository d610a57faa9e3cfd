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


def _matches_step_by_step(model, steps: int = 6, fixed: bool | None = None) -> None:
    ids, attn, pos = left_pad(PROMPTS, 0, "cpu")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        fast = StaticKVDecoder(model, ids, attn, pos, max_new_tokens=steps, fixed=fixed)
        ref = KVStepper(model, ids, attn, pos)
        assert torch.allclose(fast.logits, ref.logits, atol=1e-5, rtol=0)
        p = pos[:, -1:] + 1
        for _ in range(steps):
            tok = torch.randint(3, 14, (len(PROMPTS),), generator=g)
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], 1)
            assert torch.allclose(fast.step(tok, attn, p), ref.step(tok, attn, p), atol=1e-5, rtol=0)
            p = p + 1


def test_lora_layers_and_hooks_are_called_as_modules():
    """The decoder computes a plain nn.Linear / RMSNorm / gated MLP itself, but a LoRA layer, a module
    with a forward hook or with a per-instance forward is called as it is: the logits still equal
    transformers' step by step, and the hook fires once per prefill and per step."""
    from peft import LoraConfig, get_peft_model

    model, _ = make_tiny("llama", layers=2)
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    for name, p in lora.named_parameters():
        if "lora_B" in name:  # non-zero adapters, so a decoder that skipped them would differ
            torch.nn.init.normal_(p, std=0.5)
    _matches_step_by_step(lora)
    plain, _ = make_tiny("llama", layers=2, seed=4)
    calls = {"n": 0}

    def double(module, args, out):
        calls["n"] += 1
        return out * 2

    plain.model.layers[0].mlp.up_proj.register_forward_hook(double)
    plain.model.layers[1].post_attention_layernorm.register_forward_hook(lambda m, a, o: o + 0.5)
    _matches_step_by_step(plain, steps=5)
    assert calls["n"] == 2 * (1 + 5)  # fast and reference: one prefill and five steps each


@pytest.mark.parametrize("fixed", [False, True])
def test_position_dependent_rope_scaling_is_not_tabulated(fixed):
    """Dynamic NTK scaling changes the rotary frequencies with the sequence length, so the decoder
    must not read a precomputed table for it; the step still matches transformers."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=20, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=8, pad_token_id=0,
                      rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})
    model = LlamaForCausalLM(cfg).eval()
    ids, attn, pos = left_pad(PROMPTS, 0, "cpu")
    assert StaticKVDecoder(model, ids, attn, pos, max_new_tokens=2).table is None
    _matches_step_by_step(model, steps=6, fixed=fixed)  # positions reach 13, past the 8 where the scaling starts
    plain, _ = make_tiny("llama")
    assert StaticKVDecoder(plain, ids, attn, pos, max_new_tokens=2).table is not None


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), vocab=st.sampled_from([1024, 1500, 4096]), dead=st.floats(0.0, 0.99),
       dead_blocks=st.integers(0, 6))
def test_two_level_draw_never_draws_impossible_tokens(seed, vocab, dead, dead_blocks):
    """Large vocabularies take the two-level draw (block totals, then one block): with random dead
    tokens and whole dead blocks, every drawn token has positive probability."""
    from forklens.policy.sample import _block_size, inverse_cdf_draw

    g = torch.Generator().manual_seed(seed)
    block = _block_size(vocab)
    assert block and block < vocab
    logits = torch.randn(32, vocab, generator=g) * 4
    logits[torch.rand(32, vocab, generator=g) < dead] = float("-inf")
    for j in range(dead_blocks):
        logits[:, j * 2 * block:(j * 2 + 1) * block] = float("-inf")
    logits[:, -1] = 0.0  # at least one live token per row
    probs = logits.softmax(-1)
    u = torch.rand(32, 1, generator=g, dtype=torch.float64)
    u[0] = 1 - 2**-53  # the largest uniform
    tok = inverse_cdf_draw(probs, u)
    assert bool((probs.gather(1, tok[:, None]) > 0).all())


def test_two_level_draw_equals_the_one_level_inverse_cdf():
    """The same uniforms pick the same tokens as one cumulative sum over the whole row, except where a
    uniform falls within float32 rounding of a boundary (at most a handful of 4,000 rows)."""
    from forklens.policy.sample import inverse_cdf_draw

    g = torch.Generator().manual_seed(0)
    probs = (torch.randn(4000, 8192, generator=g) * 2).softmax(-1)
    u = torch.rand(4000, 1, generator=g, dtype=torch.float64)
    two, one = inverse_cdf_draw(probs, u), inverse_cdf_draw(probs, u, block=0)
    assert int((two != one).sum()) <= 4


def test_two_level_draw_has_the_right_distribution():
    """200k draws over a 2,048-token vocabulary whose mass sits in a few tokens spread over blocks:
    each frequency within 4 standard errors, and nothing outside them."""
    from forklens.policy.sample import inverse_cdf_draw

    probs = torch.zeros(2048)
    probs[[0, 63, 64, 700, 1500, 2047]] = torch.tensor([0.3, 0.2, 0.15, 0.2, 0.1499, 0.0001])
    n = 200_000
    tok = inverse_cdf_draw(probs.expand(n, -1), torch.rand(n, 1, generator=torch.Generator().manual_seed(0),
                                                              dtype=torch.float64))
    freq = torch.bincount(tok, minlength=2048).double() / n
    se = (probs.double() * (1 - probs.double()) / n).sqrt()
    assert bool(((freq - probs.double()).abs() <= 4 * se + 1e-12).all())
