"""FLOPs with attention (issue 17): the model's attention shape from its config, causal pair counts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from forklens.policy.flops import attention_pairs, attention_shape, forward_flops


def model(**cfg):
    return SimpleNamespace(config=SimpleNamespace(**cfg))


def test_attention_shape_of_common_configs():
    from transformers import GPT2Config, LlamaConfig

    assert attention_shape(model(num_hidden_layers=4, num_attention_heads=8, hidden_size=512)) == (4, 512)
    gpt2 = GPT2Config(n_layer=3, n_head=4, n_embd=64)
    assert attention_shape(SimpleNamespace(config=gpt2)) == (3, 64)
    # GQA with an explicit head size: query heads x head_dim (Qwen3 / Gemma style, head_dim != hidden / heads)
    llama = LlamaConfig(num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2, hidden_size=256,
                        head_dim=64)
    assert attention_shape(SimpleNamespace(config=llama)) == (2, 512)
    # hybrids: only softmax-attention layers have pairs
    hybrid = model(num_hidden_layers=4, num_attention_heads=2, hidden_size=32,
                   layer_types=["linear_attention", "full_attention", "linear_attention", "sliding_attention"])
    assert attention_shape(hybrid) == (2, 32)
    assert attention_shape(SimpleNamespace()) == (0, 0)
    assert attention_shape(model(d_model=16)) == (0, 0)


@settings(max_examples=50, deadline=None)
@given(lengths=st.lists(st.integers(0, 40), min_size=1, max_size=6))
def test_attention_pairs_count_the_causal_triangle(lengths):
    width = max(lengths) or 1
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    brute = sum(1 for n in lengths for q in range(n) for k in range(n) if k <= q)
    assert attention_pairs(mask) == brute


def test_forward_flops_adds_the_attention_term():
    # 10 tokens, 55 pairs, 2 layers of d_attn 8: 2*100*10 + 4*2*8*55
    assert forward_flops(100, 10, 55, (2, 8)) == pytest.approx(2000 + 3520)
    assert forward_flops(100, 10, 55, (0, 0)) == 2000
