"""The trainer's LM head in checkpointed chunks (issue 17, long traces): same values and gradients as
the one-shot head, and only one chunk's logits alive at a time."""

from __future__ import annotations

import pytest
import torch

from forklens.policy.score import TokenLogProbs, token_logprobs_and_entropy
from tests.conftest import make_tiny


def _batch(vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (3, 40), generator=g)
    attn = torch.ones_like(ids)
    attn[1, 30:] = 0
    target = torch.zeros_like(ids)
    target[:, 10:] = 1
    target[1, 30:] = 0
    gather = torch.randint(0, vocab, (3, 40, 4), generator=g)
    return ids, attn, target, gather


@pytest.mark.parametrize("budget_rows", [1, 7, 33])
def test_chunked_head_matches_values_and_gradients(budget_rows):
    model, _ = make_tiny(seed=1)
    vocab = model.get_output_embeddings().weight.shape[0]
    ids, attn, target, gather = _batch(vocab)

    def run(max_bytes):
        model.zero_grad()
        lp, ent, g = token_logprobs_and_entropy(model, ids, attn, target, True, gather, max_chunk_bytes=max_bytes)
        loss = (lp * target).sum() + 0.1 * (g * target[..., None]).sum()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return lp.detach(), ent, g.detach(), grads

    whole = run(None)  # 8 GiB budget: one shot
    chunked = run(budget_rows * vocab * 4 * 4)  # budget_rows target rows per chunk
    for a, b in zip(whole[:3], chunked[:3]):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    assert whole[3].keys() == chunked[3].keys() and len(whole[3]) > 5
    for name in whole[3]:
        assert torch.allclose(whole[3][name], chunked[3][name], atol=1e-6, rtol=1e-4), name


def test_no_grad_chunks_without_checkpointing():
    model, _ = make_tiny(seed=2)
    vocab = model.get_output_embeddings().weight.shape[0]
    ids, attn, target, _ = _batch(vocab, seed=3)
    with torch.no_grad():
        a = TokenLogProbs(model)(ids, attn, target)
        b = TokenLogProbs(model, max_chunk_bytes=5 * vocab * 16)(ids, attn, target)
    assert torch.allclose(a[0], b[0], atol=1e-6) and torch.allclose(a[1], b[1], atol=1e-6)


def test_chunked_head_keeps_one_chunk_of_logits():
    """Saved activations of the autograd graph: the one-shot head keeps [N x V] log-softmax outputs for
    the backward; the chunked head keeps only its inputs (rows of the hidden state)."""
    model, _ = make_tiny(seed=4)
    vocab = model.get_output_embeddings().weight.shape[0]
    ids, attn, target, _ = _batch(vocab, seed=5)
    n = int(target[:, 1:].sum())

    def vocab_rows_saved(max_bytes):
        """Largest number of [.. x vocab] rows in one tensor saved for the backward."""
        rows = [0]

        def pack(t):
            if t.dim() >= 1 and t.shape[-1] == vocab:
                rows.append(t.numel() // vocab)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            token_logprobs_and_entropy(model, ids, attn, target, True, max_chunk_bytes=max_bytes)
        return max(rows)

    assert vocab_rows_saved(None) == n  # the whole [N x V] log-softmax
    assert vocab_rows_saved(4 * vocab * 16) == 0  # checkpointed chunks keep only their hidden-state inputs
