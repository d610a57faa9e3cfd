"""Teacher-forced per-token statistics, computed without materialising [tokens x vocab] at once.

The model body runs once per batch; the LM head (the only part that touches the vocabulary) is
applied to the *selected* positions in chunks of ``chunk_tokens`` rows. For each chunk we keep only
what the caller asked for (log-prob of the token, entropy, top-k), so peak memory is
``chunk_tokens x vocab`` floats whatever the sequence length.

``head_logits`` reproduces the model's own logits from its final hidden states. For architectures
that post-process logits (Gemma's soft-capping, Cohere's logit scale, Granite's scaling) the known
transforms are applied, and :func:`verify_head` checks on real input that the result equals
``model(...).logits`` before any number is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from forklens.errors import DataError


def body_and_head(model):
    """(transformer body, output projection) of a Hugging Face causal LM, PEFT-wrapped or not."""
    inner = model
    if hasattr(inner, "get_base_model"):  # peft.PeftModel
        inner = inner.get_base_model()
    body = inner.base_model if inner.base_model is not inner else None
    head = inner.get_output_embeddings()
    if body is None or head is None:
        raise ValueError(f"{type(inner).__name__} does not expose a base model and an output embedding")
    return inner, body, head


def head_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """Logits (float32) from final hidden states, as the model's own forward would compute them."""
    inner, _, head = body_and_head(model)
    logits = head(hidden).float()
    cfg = inner.config
    scale = getattr(cfg, "logit_scale", None)  # Cohere
    if isinstance(scale, (int, float)) and scale != 1:
        logits = logits * scale
    scaling = getattr(cfg, "logits_scaling", None)  # Granite divides
    if isinstance(scaling, (int, float)) and scaling != 1:
        logits = logits / scaling
    cap = getattr(cfg, "final_logit_softcapping", None)  # Gemma 2/3
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def hidden_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  position_ids: torch.Tensor | None = None) -> torch.Tensor:
    _, body, _ = body_and_head(model)
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    out = body(**kwargs)
    return out[0] if isinstance(out, tuple) else out.last_hidden_state


@torch.no_grad()
def verify_head(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
    """Raise if body+head logits differ from ``model(...).logits`` (an unknown logits transform)."""
    ids, mask = input_ids[:1, :32], attention_mask[:1, :32]
    ref = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
    ours = head_logits(model, hidden_states(model, ids, mask))
    valid = mask[0].bool()
    err = (ref[0, valid] - ours[0, valid]).abs().max().item()
    tol = 1e-3 * max(1.0, ref[0, valid].abs().max().item())
    if err > tol:
        raise ValueError(
            f"{type(model).__name__}: logits from the final hidden state differ from the model's own "
            f"logits by {err:.3g}; this architecture transforms its logits in a way forklens does not know"
        )


@dataclass
class PackedBatch:
    """Prompt+response sequences right-padded into one batch for teacher forcing."""

    rows: list[int]  # indices of the input sequences, in batch order
    input_ids: torch.Tensor  # [b, width]
    attention_mask: torch.Tensor  # [b, width]
    predicts_response: torch.Tensor  # [b, width] bool: positions whose next token is a response token
    targets: torch.Tensor  # [N] the response tokens, in the order of predicts_response's True entries


def pack_for_scoring(prompt_ids, response_ids, pad_id: int, batch_tokens: int, group_lengths=None):
    """Yield :class:`PackedBatch` es of sequences sorted by length, each at most ``batch_tokens`` padded
    tokens (a longer sequence gets a batch of its own). ``group_lengths`` (optional, one per sequence)
    replaces ``len(prompt) + len(response)`` for sorting and sizing, so a caller that pads the same
    rows with other prompts (:func:`pad_rows`) can keep every version inside the budget. Raises
    DataError for an empty prompt."""
    if len(prompt_ids) != len(response_ids):
        raise ValueError("prompt_ids and response_ids must have the same length")
    lengths = list(group_lengths) if group_lengths is not None else [
        len(p) + len(r) for p, r in zip(prompt_ids, response_ids)]
    order = sorted(range(len(prompt_ids)), key=lambda i: lengths[i])
    i = 0
    while i < len(order):
        rows, width = [order[i]], lengths[order[i]]
        while i + len(rows) < len(order):
            w = max(width, lengths[order[i + len(rows)]])
            if w * (len(rows) + 1) > batch_tokens:
                break
            rows.append(order[i + len(rows)])
            width = w
        i += len(rows)
        yield pad_rows(rows, prompt_ids, response_ids, pad_id)


def pad_rows(rows: list[int], prompt_ids, response_ids, pad_id: int) -> PackedBatch:
    """The sequences ``rows`` (prompt + response each) right-padded into one :class:`PackedBatch`."""
    width = max(len(prompt_ids[j]) + len(response_ids[j]) for j in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    sel = torch.zeros((len(rows), width), dtype=torch.bool)
    for r, j in enumerate(rows):
        p, y = list(prompt_ids[j]), list(response_ids[j])
        if not p:
            raise DataError(f"sequence {j} has an empty prompt; nothing predicts its first token")
        ids[r, :len(p) + len(y)] = torch.tensor(p + y, dtype=torch.long)
        attn[r, :len(p) + len(y)] = 1
        sel[r, len(p) - 1:len(p) + len(y) - 1] = True
    targets = torch.cat([ids[r, 1:][sel[r, :-1]] for r in range(len(rows))])
    return PackedBatch(rows, ids, attn, sel, targets)


@dataclass
class TokenStats:
    """Per-position statistics for the selected positions (flattened, in order)."""

    logprob: torch.Tensor  # [N] log-prob of the given target token
    entropy: torch.Tensor  # [N] nats, full vocabulary, temperature 1
    topk_ids: torch.Tensor | None  # [N, k]
    topk_logprobs: torch.Tensor | None  # [N, k]
    argmax: torch.Tensor  # [N]


def chunked_token_stats(model, hidden: torch.Tensor, targets: torch.Tensor, top_k: int = 0,
                        chunk_tokens: int | None = None, max_chunk_bytes: int = 256 * 2**20) -> TokenStats:
    """Apply the LM head to ``hidden`` [N, H] chunk by chunk; stats of ``targets`` [N]."""
    n = hidden.shape[0]
    _, _, head = body_and_head(model)
    vocab = head.weight.shape[0]
    if chunk_tokens is None:
        # logits, log-softmax and one temporary: ~3 float32 copies of the chunk
        chunk_tokens = max(1, max_chunk_bytes // (vocab * 4 * 3))
    lps, ents, tids, tlps, amax = [], [], [], [], []
    for s in range(0, n, chunk_tokens):
        logits = head_logits(model, hidden[s:s + chunk_tokens])
        logp = torch.log_softmax(logits, dim=-1)
        del logits
        lps.append(logp.gather(-1, targets[s:s + chunk_tokens, None]).squeeze(-1))
        ents.append(-(logp.exp() * logp).sum(-1))
        if top_k:
            v, i = logp.topk(top_k, dim=-1)
            tids.append(i)
            tlps.append(v)
            amax.append(i[:, 0])
        else:
            amax.append(logp.argmax(-1))
        del logp
    cat = lambda xs: torch.cat(xs) if xs else None  # noqa: E731
    empty = hidden.new_zeros(0, dtype=torch.float32)
    return TokenStats(
        logprob=cat(lps) if lps else empty,
        entropy=cat(ents) if ents else empty,
        topk_ids=cat(tids),
        topk_logprobs=cat(tlps),
        argmax=cat(amax) if amax else torch.zeros(0, dtype=torch.long),
    )


#: LM-head budget of the trainer's forward: the full [tokens x vocab] logits (with their log-softmax,
#: its exponential and their gradients, ~4 float32 copies) are materialised at once while they fit
#: in this many bytes; beyond it the head runs in checkpointed chunks (train.logits_chunk_mb)
TRAIN_HEAD_BYTES = 8 * 2**30


def token_logprobs_and_entropy(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                               target_mask: torch.Tensor, with_entropy: bool = True,
                               gather_ids: torch.Tensor | None = None, max_chunk_bytes: int | None = None):
    """Differentiable log-probs (and entropy) of ``input_ids`` at positions where ``target_mask`` is 1.

    Returns ``(logprobs, entropy, gathered)``: two [B, L] tensors aligned with ``input_ids`` (zeros
    elsewhere) and, when ``gather_ids`` [B, L, K] is given, the log-probs of those K token ids at each
    target position ([B, L, K], zeros elsewhere; objectives that need more of the distribution than
    the target token, such as a top-K KL, ask for it this way). Position t is predicted from the
    hidden state at t-1; only target positions go through the LM head. This is the forward pass the
    trainer differentiates.

    Long sequences: when ~4 float32 copies of the [targets x vocab] logits would exceed
    ``max_chunk_bytes`` (default :data:`TRAIN_HEAD_BYTES`), the head runs on chunks of target positions,
    each under activation checkpointing, so only one chunk's logits exist at a time in the forward
    *and* the backward pass (the backward recomputes each chunk's head once). Values and gradients
    equal the unchunked computation up to float32 summation order.
    """
    hidden = hidden_states(model, input_ids, attention_mask)
    tm = target_mask.bool().clone()
    tm[:, 0] = False  # nothing predicts position 0
    pred_mask = torch.zeros_like(tm)
    pred_mask[:, :-1] = tm[:, 1:]
    rows = hidden[pred_mask]  # [N, H], in the order of tm's True entries
    targets = input_ids[tm]
    g_ids = gather_ids[tm].long() if gather_ids is not None else None
    vocab = body_and_head(model)[2].weight.shape[0]
    chunk = max(1, (max_chunk_bytes or TRAIN_HEAD_BYTES) // (vocab * 4 * 4))
    n = rows.shape[0]
    if n <= chunk:
        lp, ent, g = _head_stats(model, rows, targets, with_entropy, g_ids)
    else:
        parts = []
        for s in range(0, n, chunk):
            args = (model, rows[s:s + chunk], targets[s:s + chunk], with_entropy,
                    None if g_ids is None else g_ids[s:s + chunk])
            parts.append(checkpoint(_head_stats, *args, use_reentrant=False) if torch.is_grad_enabled()
                         else _head_stats(*args))
        lp = torch.cat([p[0] for p in parts])
        ent = torch.cat([p[1] for p in parts]) if with_entropy else None
        g = torch.cat([p[2] for p in parts]) if g_ids is not None else None
    out_lp = torch.zeros(tm.shape, dtype=lp.dtype, device=lp.device).masked_scatter(tm, lp)
    out_ent = None
    if with_entropy:
        out_ent = torch.zeros(tm.shape, dtype=ent.dtype, device=ent.device).masked_scatter(tm, ent)
    gathered = None
    if g_ids is not None:
        k = g_ids.shape[-1]
        gathered = torch.zeros((*tm.shape, k), dtype=g.dtype, device=g.device).masked_scatter(
            tm[..., None].expand(-1, -1, k), g)
    return out_lp, out_ent, gathered


def _head_stats(model, rows: torch.Tensor, targets: torch.Tensor, with_entropy: bool,
                gather_ids: torch.Tensor | None):
    """Log-prob of ``targets``, entropy (no gradient) and the log-probs of ``gather_ids`` for hidden ``rows``."""
    logp_all = F.log_softmax(head_logits(model, rows), dim=-1)
    lp = logp_all.gather(-1, targets[:, None]).squeeze(-1)
    ent = None
    if with_entropy:
        with torch.no_grad():
            ent = -(logp_all.exp() * logp_all).sum(-1)
    g = logp_all.gather(-1, gather_ids) if gather_ids is not None else None
    return lp, ent, g


class TokenLogProbs(torch.nn.Module):
    """The trainer's differentiable forward as a module: ``(input_ids, attention_mask, target_mask) ->
    (logprobs, entropy)`` [B, L]. Data-parallel wrappers (DDP, FSDP via accelerate) wrap *this*
    module, so their forward hooks run while only response positions go through the LM head."""

    def __init__(self, model, max_chunk_bytes: int | None = None):
        super().__init__()
        self.model = model
        self.max_chunk_bytes = max_chunk_bytes

    def forward(self, input_ids, attention_mask, target_mask, with_entropy: bool = True, gather_ids=None):
        return token_logprobs_and_entropy(self.model, input_ids, attention_mask, target_mask, with_entropy,
                                          gather_ids, max_chunk_bytes=self.max_chunk_bytes)
