"""FLOPs of a causal LM forward pass, attention included.

The usual 2N per token (N = parameters) counts the matrix products with weights only. Attention
adds products between activations: under a causal mask a query at position t meets t+1 keys, and
per layer each (query, key) pair costs ``2 * d_attn`` for the score ``q . k`` and ``2 * d_attn`` for
mixing the value ``a * v`` (``d_attn`` = query heads x head size; grouped-query attention shares
keys/values but every query head still does both products). A sequence of T tokens therefore costs

    forward(T) = 2 N T + 4 n_layers d_attn T (T + 1) / 2

and a training step (forward + backward) three times that. At short lengths the second term is
negligible; at 16-32k-token reasoning traces of a 0.5B model it is the larger one, so leaving it
out undercounts long-trace compute. Models without attention layers (or whose shape cannot be read
from their config) get the 2N term only, and :func:`attention_shape` says so by returning zeros.
"""

from __future__ import annotations

import torch

__all__ = ["attention_pairs", "attention_shape", "forward_flops"]


def attention_shape(model) -> tuple[int, int]:
    """``(attention layers, d_attn)`` from a Hugging Face config; ``(0, 0)`` when not found."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return 0, 0
    layers = next((getattr(cfg, k) for k in ("num_hidden_layers", "n_layer", "num_layers")
                   if isinstance(getattr(cfg, k, None), int)), 0)
    heads = next((getattr(cfg, k) for k in ("num_attention_heads", "n_head", "num_heads")
                  if isinstance(getattr(cfg, k, None), int)), 0)
    hidden = next((getattr(cfg, k) for k in ("hidden_size", "n_embd", "d_model")
                   if isinstance(getattr(cfg, k, None), int)), 0)
    if not layers or not heads or not hidden:
        return 0, 0
    head_dim = getattr(cfg, "head_dim", None)
    if not isinstance(head_dim, int) or head_dim <= 0:
        head_dim = hidden // heads
    types = getattr(cfg, "layer_types", None)  # hybrids list the attention layers among others
    if isinstance(types, (list, tuple)) and types:
        # full and sliding-window softmax attention (the pair count is an upper bound for sliding
        # windows shorter than the sequence); linear attention and recurrent layers have no pairs
        layers = sum(1 for t in types if "attention" in str(t) and "linear" not in str(t))
    return layers, heads * head_dim


def attention_pairs(attention_mask: torch.Tensor) -> float:
    """(query, key) pairs under a causal mask, summed over the rows of a right-padded batch:
    ``sum_i T_i (T_i + 1) / 2`` with T_i the row's number of real tokens."""
    lengths = attention_mask.sum(-1).to(torch.float64)
    return float((lengths * (lengths + 1) / 2).sum())


def forward_flops(n_params: int, tokens: float, pairs: float, shape: tuple[int, int]) -> float:
    """One forward pass over ``tokens`` tokens whose causal attention has ``pairs`` (query, key) pairs."""
    layers, d_attn = shape
    return 2.0 * n_params * tokens + 4.0 * layers * d_attn * pairs
