"""A lean KV-cached decoder for the Llama family (Llama, Mistral, Qwen2, Qwen3), used by the sampler.

Why: on a GPU a decoding step of a small or mid-size model through the transformers forward is bound
by Python and kernel launches (cache objects, mask builders, keyword plumbing), not by its matrix
products. This decoder calls the model's own modules (embeddings, norms, projections, MLPs, rotary
embedding, LoRA layers included) but keeps the keys and values in one preallocated buffer per layer
and builds the masks itself, so a step has fixed shapes and is replayed as a CUDA graph. On CPU,
where the matrix products dominate, a step instead keeps its non-matrix work to a few operations
(rotary rows from a table, scale and mask inside one ``baddbmm``, residuals inside ``addmm``, plain
linears and norms without module calls), so sampling runs close to its matrix products alone
(docs/results.md, "Long traces" and the sampler's floor).

It is an optimisation, never a second source of truth: the first time a model is decoded with it,
its prefill and first step are compared with the transformers forward of the same tokens
(:func:`verify_fast_decoder`), and a model that does not match within the dtype's tolerance (or any
architecture outside the family, or sliding-window attention shorter than the sequence) is decoded
through transformers instead. Set ``FORKLENS_FAST_DECODE=0`` to always use transformers.
"""

from __future__ import annotations

import os
import sys
import warnings
import weakref

import torch
import torch.nn.functional as F

SUPPORTED = {"llama", "mistral", "qwen2", "qwen3"}
_VERIFIED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> {(dtype, device): matches}
_GQA = "enable_gqa" in (F.scaled_dot_product_attention.__doc__ or "")


def _inner(model):
    """The ``*ForCausalLM`` module inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _plain(mod) -> bool:
    """No hook and no per-instance ``forward``: calling the module is exactly its class's forward, so
    the decoder may compute that forward itself."""
    g = torch.nn.modules.module
    return ("forward" not in vars(mod) and not mod._forward_hooks and not mod._forward_pre_hooks
            and not g._global_forward_hooks and not g._global_forward_pre_hooks)


def _linear(mod):
    """``mod`` as a function: a plain ``nn.Linear`` becomes ``F.linear`` on its own parameters (the same
    tensors, so in-place optimizer updates are seen; no module-call overhead per decoding step); any
    other module (a LoRA layer, a quantised linear) is called as it is."""
    if type(mod) is torch.nn.Linear and _plain(mod):
        weight, bias = mod.weight, mod.bias
        return lambda x: F.linear(x, weight, bias)
    return mod


def _linear_add(mod):
    """``(x, residual) -> residual + mod(x)``; for a plain bias-free ``nn.Linear`` one ``addmm`` (the
    residual added inside the matrix product) over the rows of ``x`` [..., in] and ``residual`` [..., out]."""
    if type(mod) is torch.nn.Linear and _plain(mod) and mod.bias is None:
        weight = mod.weight
        return lambda x, res: torch.addmm(res.reshape(-1, res.shape[-1]), x.reshape(-1, x.shape[-1]),
                                          weight.t()).view(res.shape)
    return lambda x, res: res + mod(x)


def _rms_norm(mod):
    """A transformers Llama-family RMSNorm (``weight * x / rms(x)``, computed in fp32) as a function,
    or the module itself if it is anything else."""
    weight, eps = getattr(mod, "weight", None), getattr(mod, "variance_epsilon", None)
    if (not type(mod).__name__.endswith("RMSNorm") or not isinstance(weight, torch.Tensor) or eps is None
            or not _plain(mod)):
        return mod
    shape = (weight.shape[-1],)
    if weight.dtype == torch.float32:
        return lambda x: F.rms_norm(x, shape, weight, eps) if x.dtype == torch.float32 else mod(x)
    return mod


def _mlp(mlp):
    """``(x, residual) -> residual + mlp(x)``: the gated MLP ``down(act(gate(x)) * up(x))`` with its
    linears as functions (the residual added inside the down projection), or the module called."""
    parts = [getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")]
    if (any(p is None for p in parts) or type(mlp).forward.__qualname__.split(".")[0] not in _GATED_MLPS
            or not _plain(mlp)):
        return lambda x, res: res + mlp(x)
    gate, up, down = _linear(parts[0]), _linear(parts[1]), _linear_add(parts[2])
    act = parts[3]
    return lambda x, res: down(act(gate(x)) * up(x), res)


_GATED_MLPS = {"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP"}


def fast_decode_supported(model, total_len: int) -> bool:
    """Architecture check: the Llama family, with no sliding window shorter than ``total_len``."""
    if os.environ.get("FORKLENS_FAST_DECODE", "1") == "0":
        return False
    m = _inner(model)
    cfg = getattr(m, "config", None)
    if getattr(cfg, "model_type", None) not in SUPPORTED:
        return False
    body = getattr(m, "model", None)
    if not all(hasattr(body, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")) or not hasattr(m, "lm_head"):
        return False
    windows = [getattr(layer.self_attn, "sliding_window", None) for layer in body.layers]
    if getattr(cfg, "use_sliding_window", True):
        windows.append(getattr(cfg, "sliding_window", None))
    return all(w is None or w >= total_len for w in windows)


class StaticKVDecoder:
    """Same interface as :class:`forklens.policy.sample.KVStepper`: ``logits`` [B, V] after the
    prefill, then ``step(tok, attn, pos)`` per token. The cache holds ``width + max_new_tokens``
    positions; ``attn`` is ignored (every row advances by one position per step).

    With ``fixed`` (default: on a GPU) a decoding step has fixed shapes: it attends over the whole
    cache under the validity mask and writes its keys and values at a slot held in a device tensor, so
    on CUDA the step is captured once as a CUDA graph and replayed, which removes the kernel-launch
    overhead that dominates decoding of small and mid-size models (``FORKLENS_CUDA_GRAPHS=0`` runs the
    same steps eagerly). Otherwise (CPU) a step attends over the filled part of the cache only.
    """

    def __init__(self, model, input_ids: torch.Tensor, attn: torch.Tensor, position_ids: torch.Tensor,
                 max_new_tokens: int, fixed: bool | None = None):
        m = _inner(model)
        self.body, self.lm_head = m.model, m.lm_head
        self.rotate = sys.modules[type(self.body.layers[0].self_attn).__module__].apply_rotary_pos_emb
        self.plan = [(_rms_norm(ly.input_layernorm), _linear(ly.self_attn.q_proj), _linear(ly.self_attn.k_proj),
                      _linear(ly.self_attn.v_proj), _linear_add(ly.self_attn.o_proj),
                      _rms_norm(ly.post_attention_layernorm), _mlp(ly.mlp)) for ly in self.body.layers]
        self.final_norm, self.head = _rms_norm(self.body.norm), _linear(self.lm_head)
        b, width = input_ids.shape
        self.cap = cap = width + max_new_tokens
        cfg = m.config
        n_kv = cfg.num_key_value_heads
        self.n_rep = cfg.num_attention_heads // n_kv
        head_dim = self.body.layers[0].self_attn.head_dim
        dtype = self.body.embed_tokens.weight.dtype
        dev = input_ids.device
        self.fixed = dev.type == "cuda" if fixed is None else fixed
        # zeroed, not empty: a fixed-shape step reads every slot (masked), so unwritten slots must be
        # finite; and on CPU, zeroing touches the fresh pages in order once, which measured ~4x cheaper
        # than faulting them in during the strided per-step writes
        self.k = [torch.zeros(b, n_kv, cap, head_dim, dtype=dtype, device=dev) for _ in self.body.layers]
        self.v = [torch.zeros_like(k) for k in self.k]
        valid = attn.bool()
        causal = torch.ones(width, width, dtype=torch.bool, device=dev).tril()
        # a left-pad query attends to itself, so no row is fully masked (no NaN in the cache)
        mask = (causal & valid[:, None, :]) | torch.eye(width, dtype=torch.bool, device=dev)
        self.logits = self._prefill(input_ids, position_ids, mask[:, None])
        self.t = width
        self.table = self._rotary_table(int(position_ids.max()) + max_new_tokens + 1, dev)
        # the decoding steps' additive padding mask, one row per (sequence, key/value head): 0 where a
        # prompt token or a decoded token sits, -inf at left padding and at slots not yet filled
        bias = torch.full((b, 1, cap), float("-inf"), dtype=dtype, device=dev)
        bias[:, 0, :width].masked_fill_(valid, 0.0)
        self.bias = bias.repeat_interleave(n_kv, 0)
        self.graphs = self.fixed and dev.type == "cuda" and os.environ.get("FORKLENS_CUDA_GRAPHS", "1") != "0"
        self._graph = None
        if self.fixed:
            self._tok = torch.zeros(b, dtype=torch.long, device=dev)
            self._pos = torch.zeros(b, 1, dtype=torch.long, device=dev)
            self._slot = torch.zeros(1, dtype=torch.long, device=dev)

    def _rotary_table(self, n_pos: int, dev):
        """(cos, sin * sign) for positions ``0 .. n_pos - 1`` from the model's own rotary module, computed
        once, so a decoding step reads its row instead of recomputing it; ``sign`` folds the negation
        of ``rotate_half`` into the table (``rotate_half(x) * sin == roll(x, d / 2) * (sin * sign)``,
        exactly). None (each step calls the module) for position-dependent scalings (dynamic NTK,
        LongRoPE) or a partial rotary dimension."""
        rope = getattr(self.body.rotary_emb, "rope_type", "default")
        if "dynamic" in rope or "longrope" in rope:
            return None
        x = self.body.embed_tokens.weight[:1][None]
        cos, sin = self.body.rotary_emb(x, torch.arange(n_pos, device=dev)[None])
        d = cos.shape[-1]
        if d != self.body.layers[0].self_attn.head_dim or d % 2:
            return None
        sign = torch.ones(d, dtype=sin.dtype, device=dev)
        sign[: d // 2] = -1
        return cos[0], sin[0] * sign

    def _rotary_rows(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The table's (cos, signed sin) rows for one decoding step at positions ``pos`` [B, 1], shaped
        [B, 1, 1, D] to broadcast over heads."""
        cos_t, sin_t = self.table
        return cos_t[pos[:, 0]][:, None, None], sin_t[pos[:, 0]][:, None, None]

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """``x * cos + rotate_half(x) * sin`` with the table's signed ``sin``."""
        return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), sin)

    def _attend(self, q, k, v, mask, scale):
        """The prefill's attention (``q`` over several positions) with the fused kernel."""
        if self.n_rep > 1 and not _GQA:
            k, v = k.repeat_interleave(self.n_rep, 1), v.repeat_interleave(self.n_rep, 1)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale,
                                              **({"enable_gqa": True} if self.n_rep > 1 else {}))

    def _prefill(self, ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Run the prompts ``ids`` [B, S] at positions ``pos`` under ``mask``; their keys and values go to
        cache slots ``0..S``. Returns the last position's logits."""
        b, s = ids.shape
        h = self.body.embed_tokens(ids)
        cos, sin = self.body.rotary_emb(h, pos)
        for i, (layer, (norm1, q_proj, k_proj, v_proj, o_proj, norm2, mlp)) in enumerate(
                zip(self.body.layers, self.plan)):
            a = layer.self_attn
            x = norm1(h)
            q = q_proj(x).view(b, s, -1, a.head_dim)
            k = k_proj(x).view(b, s, -1, a.head_dim)
            if hasattr(a, "q_norm"):  # Qwen3: RMSNorm over each head
                q, k = a.q_norm(q), a.k_norm(k)
            q, k = self.rotate(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
            v = v_proj(x).view(b, s, -1, a.head_dim).transpose(1, 2)
            self.k[i][:, :, :s], self.v[i][:, :, :s] = k, v
            o = self._attend(q, k, v, mask, a.scaling)
            h = o_proj(o.transpose(1, 2).reshape(b, s, -1), h)
            h = mlp(norm2(h), h)
        return self.head(self.final_norm(h[:, -1]))

    def _decode_step(self, tok: torch.Tensor, pos: torch.Tensor, slot: torch.Tensor | None = None) -> torch.Tensor:
        """One token per row at positions ``pos`` [B, 1]. The attention scale and the padding mask go
        inside one ``baddbmm`` (an additive bias per key/value row: 0 where valid, -inf elsewhere), the
        rotary rows come from the table when there is one, the residual adds happen inside the products.

        ``slot`` None (CPU): keys and values go to slot ``t`` and the step attends over the filled slots
        only. ``slot`` a device tensor holding ``t`` (fixed shapes, for CUDA graphs): they go to that
        slot and the step attends over the whole cache, the unfilled slots masked by the bias."""
        b = tok.shape[0]
        if slot is None:
            t, n = self.t, self.t + 1
            self.bias[:, :, t] = 0.0
        else:
            n = self.cap
            self.bias.index_fill_(2, slot, 0.0)
        bias = self.bias[:, :, :n]
        h = self.body.embed_tokens(tok[:, None])
        cos, sin = self.body.rotary_emb(h, pos) if self.table is None else self._rotary_rows(pos)
        for i, (layer, (norm1, q_proj, k_proj, v_proj, o_proj, norm2, mlp)) in enumerate(
                zip(self.body.layers, self.plan)):
            a = layer.self_attn
            d = a.head_dim
            x = norm1(h)
            q = q_proj(x).view(b, -1, 1, d)  # [B, heads, 1, D]: one position, so no transpose
            k = k_proj(x).view(b, -1, 1, d)
            if hasattr(a, "q_norm"):
                q, k = a.q_norm(q), a.k_norm(k)
            if self.table is None:
                q, k = self.rotate(q, k, cos, sin)
            else:
                q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
            v = v_proj(x).view(b, -1, 1, d)
            if slot is None:
                self.k[i][:, :, t:n], self.v[i][:, :, t:n] = k, v
            else:
                self.k[i].index_copy_(2, slot, k)
                self.v[i].index_copy_(2, slot, v)
            kv = self.k[i].shape[1]
            keys = self.k[i][:, :, :n].reshape(b * kv, n, d)  # views: the cache is [B, kv, cap, D]
            values = self.v[i][:, :, :n].reshape(b * kv, n, d)
            w = torch.baddbmm(bias, q.view(b * kv, -1, d), keys.transpose(1, 2), alpha=a.scaling).softmax(-1)
            h = o_proj(torch.bmm(w, values).view(b, 1, -1), h)
            h = mlp(norm2(h), h)
        return self.head(self.final_norm(h[:, -1]))

    def _fixed_step(self) -> torch.Tensor:
        return self._decode_step(self._tok, self._pos, slot=self._slot)

    def _capture(self) -> None:
        """Record one fixed-shape step as a CUDA graph (after warm-up runs on a side stream, as
        capture requires). The warm-up writes the current slot, which the first real step rewrites."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._fixed_step()
        torch.cuda.current_stream().wait_stream(stream)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._out = self._fixed_step()

    def step(self, tok: torch.Tensor, attn=None, pos: torch.Tensor | None = None) -> torch.Tensor:
        if not self.fixed:
            self.logits = self._decode_step(tok, pos)
        else:
            self._tok.copy_(tok)
            self._pos.copy_(pos)
            self._slot.fill_(self.t)
            if not self.graphs:
                self.logits = self._fixed_step()
            else:
                if self._graph is None:
                    self._capture()
                self._graph.replay()
                self.logits = self._out.clone()
        self.t += 1
        return self.logits


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-4 if dtype == torch.float32 else 3e-2


@torch.no_grad()
def verify_fast_decoder(model, input_ids: torch.Tensor, attn: torch.Tensor, position_ids: torch.Tensor) -> bool:
    """Do the fast prefill and one fast step give transformers' logits for the same tokens?

    Checked on up to two rows (one left-padded if there is one): prefill logits at the last prompt
    position, then the logits after one more token, against a plain ``model(...)`` forward over the
    whole sequence. The result is remembered per (model, dtype, device)."""
    seen = _VERIFIED.setdefault(model, {})
    key = (_inner(model).model.embed_tokens.weight.dtype, input_ids.device)
    if key in seen:
        return seen[key]
    rows = sorted({0, int(attn.sum(-1).argmin())})
    ids, am, pos = input_ids[rows], attn[rows], position_ids[rows]
    tok = ids[:, -1:].clone()
    ok = True
    try:
        fast = StaticKVDecoder(model, ids, am, pos, max_new_tokens=1)
        first = fast.logits.float()
        second = fast.step(tok[:, 0], None, pos[:, -1:] + 1).float()
        full_ids = torch.cat([ids, tok], 1)
        full_am = torch.cat([am, torch.ones_like(tok)], 1)
        full_pos = torch.cat([pos, pos[:, -1:] + 1], 1)
        ref = model(input_ids=full_ids, attention_mask=full_am, position_ids=full_pos).logits.float()
        tol = _tolerance(fast.k[0].dtype)
        for got, want in ((first, ref[:, -2]), (second, ref[:, -1])):
            scale = max(1.0, float(want.abs().max()))
            if float((got - want).abs().max()) > tol * scale:
                ok = False
    except Exception as exc:  # any architecture surprise: fall back, but say so
        warnings.warn(f"forklens fast decoder unavailable for {type(_inner(model)).__name__} ({exc}); "
                      "decoding through transformers")
        ok = False
    else:
        if not ok:
            warnings.warn(f"forklens fast decoder does not match transformers on {type(_inner(model)).__name__}; "
                          "decoding through transformers")
    seen[key] = ok
    return ok
