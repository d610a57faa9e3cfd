"""A tiny Hugging Face causal LM with two pretraining options the Llama organisms lack: recurrent depth
(HRM-Text's two-module H/L recurrence with truncated backprop, arXiv 2605.20613) and a PrefixLM mask
(bidirectional attention over the prompt, causal over the response).

One class covers both arms of a comparison, so that they share every block:

* ``architecture="transformer"``: ``num_layers`` pre-norm blocks, applied once;
* ``architecture="recurrent"``: two modules of ``num_layers`` blocks each, L (fast) and H (slow). With
  ``z_H = e = embed(x)`` and ``z_L`` a learned vector, each of ``h_cycles`` cycles applies
  ``z_L <- L(z_L + z_H + e)`` ``l_cycles`` times, then ``z_H <- H(z_H + z_L)``: ``h_cycles * (l_cycles + 1)``
  module applications with the parameters of two. ``h_cycles = l_cycles = 1`` is the no-recurrence
  control (same parameters, two applications). Training back-propagates through the last
  ``bptt_steps`` applications only (the earlier ones run without a graph: truncated BPTT); the
  pretraining recipe warms it up (:mod:`forklens.organisms.base`). ``magic_norm`` ends each module
  with an RMSNorm (HRM-Text's MagicNorm: a bounded recurrent state under pre-norm blocks).

PrefixLM: the prompt is every token up to and including the first ``prompt_end_token_id`` of a row;
prompt tokens attend to each other both ways, everything else attends causally. A KV-cached decoding
step only ever adds tokens after the prompt, so cached decoding equals the full forward when every
prompt ends with that token (the organism recipe checks this).

The config's ``num_hidden_layers`` is the number of attention applications per forward pass (the
KV-cache layers, which is what ``generate`` sizes its cache by), not a count of parameters.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

ARCHITECTURES = ("transformer", "recurrent")


class RecurrentLMConfig(PretrainedConfig):
    model_type = "forklens-recurrent"

    def __init__(self, vocab_size: int = 32, hidden_size: int = 64, intermediate_size: int = 192,
                 num_attention_heads: int = 4, num_layers: int = 1, architecture: str = "recurrent",
                 h_cycles: int = 2, l_cycles: int = 3, bptt_steps: int = 0, magic_norm: bool = True,
                 prefix_lm: bool = False, prompt_end_token_id: int | None = None,
                 max_position_embeddings: int = 128, rms_norm_eps: float = 1e-6, initializer_range: float = 0.02,
                 **kwargs):
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture={architecture!r}; expected one of {', '.join(ARCHITECTURES)}")
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden_size={hidden_size} is not a multiple of num_attention_heads={num_attention_heads}")
        if min(num_layers, h_cycles, l_cycles) < 1 or bptt_steps < 0:
            raise ValueError("num_layers, h_cycles and l_cycles must be >= 1 and bptt_steps >= 0")
        if prefix_lm and prompt_end_token_id is None:
            raise ValueError("prefix_lm needs prompt_end_token_id (the token that closes every prompt)")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_attention_heads = num_attention_heads
        self.num_layers = num_layers
        self.architecture = architecture
        self.h_cycles = h_cycles
        self.l_cycles = l_cycles
        self.bptt_steps = bptt_steps
        self.magic_norm = magic_norm
        self.prefix_lm = prefix_lm
        self.prompt_end_token_id = prompt_end_token_id
        self.max_position_embeddings = max_position_embeddings
        self.rms_norm_eps = rms_norm_eps
        self.initializer_range = initializer_range
        kwargs.pop("num_hidden_layers", None)  # derived below (a saved config carries it)
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)
        self.num_hidden_layers = self.applications * num_layers

    @property
    def applications(self) -> int:
        """Module applications per forward pass (1 for the transformer)."""
        return self.h_cycles * (self.l_cycles + 1) if self.architecture == "recurrent" else 1

    def schedule(self) -> list[str]:
        """The module applied at each step, in order (``L``/``H``; ``T`` for the transformer)."""
        if self.architecture == "transformer":
            return ["T"]
        return (["L"] * self.l_cycles + ["H"]) * self.h_cycles


class _Block(nn.Module):
    """Pre-norm attention + SiLU MLP with learned absolute positions added at the embedding."""

    def __init__(self, cfg: RecurrentLMConfig):
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.attn_norm = nn.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=False)
        self.o_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)
        self.mlp_norm = nn.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.up = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, cache: DynamicCache | None, layer_idx: int):
        b, t, d = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = cache.update(k, v, layer_idx)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
        x = x + self.o_proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.down(F.silu(self.up(self.mlp_norm(x))))


class _Module(nn.Module):
    def __init__(self, cfg: RecurrentLMConfig):
        super().__init__()
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps) if cfg.magic_norm else nn.Identity()

    def forward(self, x, mask, cache, first_layer: int):
        for j, block in enumerate(self.blocks):
            x = block(x, mask, cache, first_layer + j)
        return self.norm(x)


class RecurrentLMPreTrainedModel(PreTrainedModel):
    config_class = RecurrentLMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _supports_sdpa = True

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.RMSNorm):
            nn.init.ones_(module.weight)
        elif isinstance(module, RecurrentLMModel):
            nn.init.normal_(module.z_l_init, mean=0.0, std=std)


def attention_mask_4d(input_ids: torch.Tensor, key_valid: torch.Tensor, past: int,
                      prompt_end_token_id: int | None) -> torch.Tensor:
    """[B, Q, K] boolean: query i (at index ``past + i``) may attend key j. Causal over valid keys; with
    ``prompt_end_token_id`` (PrefixLM, prefill only) the prompt's tokens also see each other both ways.
    A query always sees itself (padding rows stay finite)."""
    b, q = input_ids.shape
    k = key_valid.shape[1]
    qi = torch.arange(past, past + q, device=input_ids.device)[:, None]
    kj = torch.arange(k, device=input_ids.device)[None, :]
    allowed = (kj <= qi)[None] & key_valid[:, None, :].bool()
    if prompt_end_token_id is not None and past == 0:
        is_end = (input_ids == prompt_end_token_id) & key_valid.bool()
        has = is_end.any(-1)
        end = torch.where(has, is_end.int().argmax(-1), torch.full_like(has, -1, dtype=torch.long))
        in_prompt = (kj <= end[:, None]) & key_valid.bool()  # [B, K]
        allowed = allowed | (in_prompt[:, :, None] & in_prompt[:, None, :])
    return allowed | (kj == qi)[None]


class RecurrentLMModel(RecurrentLMPreTrainedModel):
    """The body: embeddings, the module schedule, and the final norm (``last_hidden_state``)."""

    def __init__(self, config: RecurrentLMConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        if config.architecture == "recurrent":
            self.l_module = _Module(config)
            self.h_module = _Module(config)
            self.z_l_init = nn.Parameter(torch.zeros(config.hidden_size))
        else:
            self.t_module = _Module(config)
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.bptt_steps = config.bptt_steps  # runtime value; the pretraining recipe warms it up
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: DynamicCache | None = None,
                use_cache: bool | None = None, inputs_embeds: torch.Tensor | None = None,
                past_key_values: DynamicCache | None = None, **kwargs) -> BaseModelOutputWithPast:
        if input_ids is None:
            raise ValueError(f"{type(self).__name__} needs input_ids (inputs_embeds are not supported)")
        cfg = self.config
        cache = cache if cache is not None else past_key_values
        if use_cache and cache is None:
            cache = DynamicCache()
        past = cache.get_seq_length() if cache is not None else 0
        b, q = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones((b, past + q), dtype=torch.long, device=input_ids.device)
        if attention_mask.shape[1] != past + q:
            raise ValueError(f"attention_mask has {attention_mask.shape[1]} positions; expected {past + q}")
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -q:]
        if int(position_ids.max()) >= cfg.max_position_embeddings:
            raise ValueError(f"position {int(position_ids.max())} is beyond max_position_embeddings="
                             f"{cfg.max_position_embeddings}")
        mask = attention_mask_4d(input_ids, attention_mask, past, cfg.prompt_end_token_id if cfg.prefix_lm else None)
        x = self.embed_tokens(input_ids) + self.embed_positions(position_ids)
        store = cache if use_cache else None
        n_layers = cfg.num_layers
        if cfg.architecture == "transformer":
            x = self.t_module(x, mask, store, 0)
        else:
            schedule = cfg.schedule()
            n = len(schedule)
            start = n - min(self.bptt_steps, n) if (self.training and self.bptt_steps) else 0
            grad_on = torch.is_grad_enabled()
            z_h, z_l = x, self.z_l_init.expand_as(x)
            for i, name in enumerate(schedule):
                if grad_on and i == start and start > 0:
                    z_h, z_l = z_h.detach(), z_l.detach()  # truncated BPTT: no graph before this step
                with torch.set_grad_enabled(grad_on and i >= start):
                    if name == "L":  # the input is injected at every L step (so it gets gradient under truncation)
                        z_l = self.l_module(z_l + z_h + x, mask, store, i * n_layers)
                    else:
                        z_h = self.h_module(z_h + z_l, mask, store, i * n_layers)
            x = z_h
        return BaseModelOutputWithPast(last_hidden_state=self.norm(x), cache=store)


class RecurrentLMForCausalLM(RecurrentLMPreTrainedModel, GenerationMixin):
    _tied_weights_keys: list[str] = []

    def __init__(self, config: RecurrentLMConfig):
        super().__init__(config)
        self.model = RecurrentLMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: DynamicCache | None = None,
                use_cache: bool | None = None, labels: torch.Tensor | None = None, logits_to_keep: int = 0,
                past_key_values: DynamicCache | None = None, **kwargs) -> CausalLMOutputWithPast:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         cache=cache if cache is not None else past_key_values, use_cache=use_cache)
        hidden = out.last_hidden_state
        logits = self.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=out.cache)


AutoConfig.register(RecurrentLMConfig.model_type, RecurrentLMConfig, exist_ok=True)
AutoModelForCausalLM.register(RecurrentLMConfig, RecurrentLMForCausalLM, exist_ok=True)
