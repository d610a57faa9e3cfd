"""The built-in sampler: batched, left-padded, KV-cached decoding with temperature and top-p.

Rows that finish (emit EOS) keep a slot in the batch but their later tokens are discarded. Sampling
draws from a ``torch.Generator`` seeded by the caller, so the same seed gives the same tokens.
Temperature 0 is greedy decoding (argmax), token-for-token the same as ``generate(do_sample=False)``.
"""

from __future__ import annotations

import inspect
import math

import torch

from forklens.policy.fast_decode import StaticKVDecoder, fast_decode_supported, verify_fast_decoder


def _accepts(model, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def filter_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of tokens whose probability reaches ``top_p``."""
    if top_p >= 1.0:
        return logits
    sorted_logits, sorted_idx = torch.sort(logits, descending=True, dim=-1)
    probs = sorted_logits.softmax(-1)
    # drop a token if the mass strictly before it already reaches top_p (the top token always stays)
    drop = (probs.cumsum(-1) - probs) >= top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, sorted_idx, sorted_logits)


def next_token(logits: torch.Tensor, temperature: float, top_p: float,
               generator: torch.Generator | None) -> torch.Tensor:
    """Greedy at temperature 0, else one draw per row from softmax(logits / temperature), top-p filtered.

    The draw is by inverse CDF: one uniform number per row against the cumulative probabilities
    (:func:`inverse_cdf_draw`), which costs O(V) per row like the softmax itself, whereas
    ``torch.multinomial`` draws an exponential variate for every vocabulary entry (a fifth of a CPU
    decoding step at vocabulary 8k). A token of probability 0 is never drawn."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = sampling_probs(logits, temperature, top_p)
    u = torch.rand(probs.shape[0], 1, generator=generator, dtype=torch.float64, device=probs.device)
    return inverse_cdf_draw(probs, u)


def sampling_probs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """float32 softmax(logits / temperature) after top-p filtering: what :func:`next_token` draws from."""
    logits = logits.float() if temperature == 1 else logits.float() / temperature
    return filter_top_p(logits, top_p).softmax(-1)


def _block_size(vocab: int) -> int:
    """Tokens per block of the two-level draw: a power of two near sqrt(V), 0 (one level) below 1,024."""
    return 0 if vocab < 1024 else 1 << max(5, round(math.log2(vocab) / 2))


def inverse_cdf_draw(probs: torch.Tensor, u: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """Rows of ``probs`` [B, V] (non-negative, any positive total), uniforms ``u`` [B, 1] in [0, 1)
    (float64) -> the token whose cumulative-probability interval holds ``u`` times the row total.

    Two levels for large vocabularies (``block`` tokens per block; default :func:`_block_size`): the
    block totals (float32 sums of ``block`` terms, so as exact as the float32 probabilities themselves)
    and their float64 running sum pick the block, then the float64 running sum inside that one block
    picks the token. Only B x block entries are summed sequentially and no float64 copy of the whole
    row is made (the one-level float64 cumulative sum over V was the largest non-matrix cost of a CPU
    decoding step at vocabulary 8k). The target is kept strictly below the chosen block's own total, so a token of
    probability 0 is never drawn, at the block or at the token level; ``block=0`` is the one-level draw."""
    b, v = probs.shape
    block = _block_size(v) if block is None else block
    if not block or block >= v:
        cdf = probs.double().cumsum(-1)
        target = torch.minimum(u * cdf[:, -1:], torch.nextafter(cdf[:, -1:], cdf.new_zeros(())))
        return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_(max=v - 1)
    nb = -(-v // block)
    padded = probs if nb * block == v else torch.nn.functional.pad(probs, (0, nb * block - v))
    blocks = padded.view(b, nb, block)
    totals = blocks.sum(-1).double()  # float32 sums of `block` terms (no float64 copy of the whole row)
    ends = totals.cumsum(-1)
    x = torch.minimum(u * ends[:, -1:], torch.nextafter(ends[:, -1:], ends.new_zeros(())))
    j = torch.searchsorted(ends, x, right=True).clamp_(max=nb - 1)  # ends[j-1] <= x < ends[j]
    start = torch.where(j > 0, ends.gather(1, (j - 1).clamp(min=0)), torch.zeros_like(x))
    inner = blocks.gather(1, j[:, :, None].expand(b, 1, block)).squeeze(1).double().cumsum(-1)
    r = torch.minimum(x - start, torch.nextafter(inner[:, -1:], inner.new_zeros(())))
    k = torch.searchsorted(inner, r.clamp(min=0), right=True).clamp_(max=block - 1)
    return (j * block + k).squeeze(-1)


def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, position_ids) for prompts left-padded to the longest one."""
    b, width = len(prompts), max(len(p) for p in prompts)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long, device=device)
    attn = torch.zeros((b, width), dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        input_ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long, device=device)
        attn[i, width - len(p):] = 1
    return input_ids, attn, (attn.cumsum(-1) - 1).clamp(min=0)


class KVStepper:
    """One model's KV-cached decoding state: a prefill of left-padded prompts, then one token per step.

    ``logits`` always holds the next-token logits [B, V]. Works with transformers 4.x
    (``past_key_values``) and 5.x (``cache``) argument names.
    """

    def __init__(self, model, input_ids: torch.Tensor, attn: torch.Tensor, position_ids: torch.Tensor):
        self.model = model
        self.cache_arg = "cache" if _accepts(model, "cache") else "past_key_values"
        kwargs = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
        out = model(input_ids=input_ids, attention_mask=attn, position_ids=position_ids, use_cache=True, **kwargs)
        self.past, self.logits = _cache_of(out), out.logits[:, -1, :]

    def step(self, tok: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Feed ``tok`` [B] at positions ``pos`` [B, 1] with the extended mask ``attn``; new logits."""
        out = self.model(input_ids=tok[:, None], attention_mask=attn, position_ids=pos, use_cache=True,
                         **{self.cache_arg: self.past})
        self.past, self.logits = _cache_of(out), out.logits[:, -1, :]
        return self.logits


@torch.no_grad()
def sample_batch(model, prompts: list[list[int]], *, pad_id: int, eos_ids: list[int], max_new_tokens: int,
                 temperature: float, top_p: float, generator: torch.Generator | None
                 ) -> tuple[list[list[int]], list[bool], int]:
    """Decode one batch. Returns (responses, finished flags, tokens processed by the model)."""
    device = next(model.parameters()).device
    b = len(prompts)
    input_ids, attn, position_ids = left_pad(prompts, pad_id, device)
    if (fast_decode_supported(model, input_ids.shape[1] + max_new_tokens)
            and verify_fast_decoder(model, input_ids, attn, position_ids)):
        state = StaticKVDecoder(model, input_ids, attn, position_ids, max_new_tokens)
    else:
        state = KVStepper(model, input_ids, attn, position_ids)
    processed = attn.sum()  # a device tensor: no host synchronisation per step
    eos = torch.tensor(eos_ids, device=device)
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    check_every = 8 if device.type == "cuda" else 1  # on a GPU, let the host run ahead of the device
    tokens = []
    next_pos = position_ids[:, -1:] + 1
    for _ in range(max_new_tokens):
        tok = next_token(state.logits, temperature, top_p, generator)
        tok = torch.where(finished, torch.full_like(tok, pad_id), tok)
        tokens.append(tok)
        processed = processed + (~finished).sum()
        finished = finished | torch.isin(tok, eos)
        if len(tokens) == max_new_tokens or (len(tokens) % check_every == 0 and bool(finished.all())):
            break
        attn = torch.cat([attn, torch.ones((b, 1), dtype=attn.dtype, device=device)], dim=1)
        state.step(tok, attn, next_pos)
        next_pos = next_pos + 1
    gen = torch.stack(tokens, dim=1).tolist() if tokens else [[] for _ in range(b)]
    responses, done = [], []
    eos_set = set(eos_ids)
    for row in gen:
        out_row = []
        for t in row:
            out_row.append(t)
            if t in eos_set:
                break
        responses.append(out_row)
        done.append(bool(out_row) and out_row[-1] in eos_set)
    return responses, done, int(processed)
