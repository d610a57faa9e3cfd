"""Rollouts: the one batch type that flows between sampling, rewards, objectives and disk.

Sequences are stored right-padded as ``input_ids`` [B, L] = prompt + response + padding. Per-token
fields are aligned with ``input_ids``: ``response_mask[b, t] = 1`` when token t of row b is a response
token (a token the policy produced and the objective trains on). Per-sequence fields are [B].
Optional per-token ``tags`` (e.g. ``decision_mask``, ``env_mask``) and per-sequence ``extras`` travel
with the rows through :meth:`select` and :meth:`split`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Sequence

import torch


@dataclass
class Rollouts:
    input_ids: torch.Tensor  # [B, L] long
    attention_mask: torch.Tensor  # [B, L] long
    response_mask: torch.Tensor  # [B, L] float: 1 at response tokens
    prompt_lens: torch.Tensor  # [B] long
    rewards: torch.Tensor | None = None  # [B] float
    advantages: torch.Tensor | None = None  # [B] float (or [B, L] for per-token advantages)
    group_ids: torch.Tensor | None = None  # [B] long: rows with the same id answer the same prompt
    truncated: torch.Tensor | None = None  # [B] bool: hit max_new_tokens before EOS
    old_logprobs: torch.Tensor | None = None  # [B, L] behaviour-policy log-probs (None = on-policy)
    ref_logprobs: torch.Tensor | None = None  # [B, L] frozen reference log-probs (for the KL term)
    tags: dict[str, torch.Tensor] = field(default_factory=dict)  # extra [B, L] per-token masks/values
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # extra [B] per-sequence values

    @classmethod
    def from_ids(cls, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
                 pad_id: int, **kwargs) -> "Rollouts":
        if len(prompt_ids) != len(response_ids):
            raise ValueError("prompt_ids and response_ids must have the same length")
        width = max(len(p) + len(r) for p, r in zip(prompt_ids, response_ids))
        b = len(prompt_ids)
        ids = torch.full((b, width), pad_id, dtype=torch.long)
        attn = torch.zeros((b, width), dtype=torch.long)
        resp = torch.zeros((b, width), dtype=torch.float32)
        for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
            n = len(p) + len(r)
            ids[i, :n] = torch.tensor(list(p) + list(r), dtype=torch.long)
            attn[i, :n] = 1
            resp[i, len(p):n] = 1.0
        lens = torch.tensor([len(p) for p in prompt_ids], dtype=torch.long)
        return cls(input_ids=ids, attention_mask=attn, response_mask=resp, prompt_lens=lens, **kwargs)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def response_lens(self) -> torch.Tensor:
        return self.response_mask.sum(-1)

    def _map(self, fn_rows, fn_tokens) -> "Rollouts":
        changes = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            if f.name == "tags":
                changes[f.name] = {k: fn_tokens(t) for k, t in v.items()}
            elif f.name == "extras":
                changes[f.name] = {k: fn_rows(t) for k, t in v.items()}
            elif f.name in ("input_ids", "attention_mask", "response_mask", "old_logprobs", "ref_logprobs") or (
                f.name == "advantages" and v.dim() == 2
            ):
                changes[f.name] = fn_tokens(v)
            else:
                changes[f.name] = fn_rows(v)
        return replace(self, **changes)

    def select(self, rows: torch.Tensor | Sequence[int]) -> "Rollouts":
        """The given rows, with padding columns beyond the longest selected row trimmed."""
        idx = torch.as_tensor(rows, dtype=torch.long)
        width = int(self.attention_mask[idx].sum(-1).max()) if len(idx) else 0
        return self._map(lambda t: t[idx], lambda t: t[idx, :width])

    def split(self, micro_batch_size: int) -> list["Rollouts"]:
        return [self.select(range(s, min(s + micro_batch_size, len(self))))
                for s in range(0, len(self), micro_batch_size)]

    def to(self, device) -> "Rollouts":
        return self._map(lambda t: t.to(device), lambda t: t.to(device))

    @classmethod
    def cat(cls, parts: Sequence["Rollouts"], pad_id: int = 0) -> "Rollouts":
        width = max(p.input_ids.shape[1] for p in parts)

        def pad(t: torch.Tensor, value) -> torch.Tensor:
            return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

        padded = [p._map(lambda t: t, lambda t: pad(t, pad_id if t.dtype == torch.long else 0)) for p in parts]
        out = {}
        for f in fields(cls):
            vals = [getattr(p, f.name) for p in padded]
            if f.name in ("tags", "extras"):
                out[f.name] = {k: torch.cat([v[k] for v in vals]) for k in vals[0]}
            elif all(v is None for v in vals):
                out[f.name] = None
            else:
                out[f.name] = torch.cat(vals)
        return cls(**out)

    def save(self, path: str | Path) -> None:
        torch.save({f.name: getattr(self, f.name) for f in fields(self)}, str(path))

    @classmethod
    def load(cls, path: str | Path) -> "Rollouts":
        return cls(**torch.load(str(path), weights_only=True))
