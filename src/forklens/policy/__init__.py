"""Policy: a Hugging Face causal LM + tokenizer with two verbs, ``sample`` and ``score``."""

from __future__ import annotations

from dataclasses import dataclass, field
import warnings
from pathlib import Path
from typing import Sequence

import torch

from forklens.errors import DataError, ForklensWarning
from forklens.rollouts import Rollouts
from forklens.policy.load import context_length, load_causal_lm, load_tokenizer
from forklens.policy.sample import sample_batch
from forklens.policy.score import chunked_token_stats, hidden_states, pack_for_scoring, verify_head


@dataclass
class Samples:
    """Completions for a list of prompts, ``n`` per prompt, grouped prompt-major."""

    prompt_ids: list[list[int]]  # one per completion (repeated n times per prompt)
    response_ids: list[list[int]]  # includes the EOS token when the response finished
    finished: list[bool]  # False when max_new_tokens was reached before EOS (truncated)
    group: list[int]  # index of the prompt each completion answers
    texts: list[str]  # decoded responses without special tokens
    tokens_processed: int = 0  # prompt + generated tokens run through the model (for FLOPs)
    #: multi-turn rollouts: per completion, 1 at each response token written by the environment
    env_masks: list[list[int]] | None = None
    episodes: list | None = None  # multi-turn rollouts: the :class:`~forklens.policy.episodes.Episode` objects
    #: rollouts from another engine (vLLM): per completion, the engine's log-prob of each response token
    #: (NaN where it reported none); becomes ``tags["sampler_logprobs"]`` for truncated importance sampling
    sampler_logprobs: list[list[float]] | None = None

    def to_rollouts(self, pad_id: int, **kwargs) -> Rollouts:
        """Right-padded :class:`Rollouts` of the completions; ``response_mask`` = 1 only at the model's
        own tokens. Observation tokens of multi-turn rollouts stay in ``input_ids`` (the model conditions
        on them) with ``response_mask`` 0 and are marked in ``tags["env_mask"]``; ``truncated`` (unless
        given) marks completions that did not finish."""
        kwargs.setdefault("truncated", torch.tensor([not f for f in self.finished], dtype=torch.bool))
        ro = Rollouts.from_ids(self.prompt_ids, self.response_ids, pad_id, **kwargs)
        if self.sampler_logprobs is not None:
            lp = torch.full(ro.response_mask.shape, float("nan"))
            for i, (p, vals) in enumerate(zip(self.prompt_ids, self.sampler_logprobs)):
                if len(vals) != len(self.response_ids[i]):
                    raise ValueError(f"completion {i}: {len(vals)} sampler log-probs for {len(self.response_ids[i])} tokens")
                if vals:
                    lp[i, len(p):len(p) + len(vals)] = torch.tensor(vals, dtype=lp.dtype)
            ro.tags["sampler_logprobs"] = lp
        if self.env_masks is None:
            return ro
        env = torch.zeros_like(ro.response_mask)
        for i, (p, m) in enumerate(zip(self.prompt_ids, self.env_masks)):
            if m:
                env[i, len(p):len(p) + len(m)] = torch.tensor(m, dtype=env.dtype)
        ro.response_mask = ro.response_mask * (1 - env)
        ro.tags["env_mask"] = env
        return ro


@dataclass
class ScoredSequence:
    """Teacher-forced statistics of one response, one entry per response token."""

    token_ids: torch.Tensor  # [T]
    logprob: torch.Tensor  # [T] log-prob of the response token
    entropy: torch.Tensor  # [T] nats over the full vocabulary
    argmax: torch.Tensor  # [T] the model's most likely token at each position
    topk_ids: torch.Tensor | None = None  # [T, k]
    topk_logprobs: torch.Tensor | None = None  # [T, k]
    extra: dict = field(default_factory=dict)


def is_token_ids(prompt) -> bool:
    """True for a prompt given as token ids (a list of ints), False for text or chat messages."""
    return isinstance(prompt, list) and all(isinstance(t, int) for t in prompt)


class Policy:
    """A causal LM and its tokenizer. Build with :meth:`load` for a directory on disk."""

    def __init__(self, model, tokenizer, path: str | Path | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.path = str(path) if path is not None else None
        self.context = context_length(model.config)
        eos = tokenizer.eos_token_id
        cfg_eos = getattr(model.generation_config, "eos_token_id", None) if hasattr(model, "generation_config") else None
        ids = {eos}
        if isinstance(cfg_eos, int):
            ids.add(cfg_eos)
        elif isinstance(cfg_eos, (list, tuple)):
            ids.update(int(x) for x in cfg_eos)
        self.eos_ids = sorted(i for i in ids if i is not None)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        self._head_checked = False
        self.backend = None  # None: the built-in sampler; else an object with ``sample_ids`` (vLLM)
        self.weights_version = 0  # bumped by the trainer after each optimizer step

    def use_backend(self, name: str, **options) -> "Policy":
        """Sample with ``name``: ``"torch"`` (the built-in sampler) or ``"vllm"`` (needs vLLM; options
        as in :class:`forklens.policy.vllm_backend.VLLMOptions`)."""
        if name == "torch":
            self.backend = None
        elif name == "vllm":
            from forklens.policy.vllm_backend import VLLMBackend, VLLMOptions

            self.backend = VLLMBackend(self, VLLMOptions(**options))
        else:
            raise ValueError(f"unknown sampling backend {name!r}; known: torch, vllm")
        return self

    @classmethod
    def load(cls, path: str | Path, dtype: str | None = None, device: str | None = None,
             tokenizer_path: str | Path | None = None) -> "Policy":
        model = load_causal_lm(path, dtype=dtype, device=device)
        tokenizer = load_tokenizer(path, tokenizer_path)
        return cls(model, tokenizer, path)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def num_params(self, exclude_embeddings: bool = True) -> int:
        """Parameters that cost FLOPs per token (input embeddings are a lookup, not a matmul)."""
        total = sum(p.numel() for p in self.model.parameters())
        if exclude_embeddings:
            emb = self.model.get_input_embeddings()
            head = self.model.get_output_embeddings()
            if emb is not None and (head is None or head.weight is not emb.weight):
                total -= emb.weight.numel()
        return total

    # --- text <-> ids -------------------------------------------------------------------------
    def encode_prompt(self, prompt: str | list[dict], chat_template: bool = False) -> list[int]:
        """Prompt ids: a string as is (or as one user message with ``chat_template``); chat messages
        (``[{"role", "content"}, ...]``, TRL's conversational format) always through the chat template."""
        if isinstance(prompt, list):
            if not getattr(self.tokenizer, "chat_template", None):
                raise DataError(f"the tokenizer of {self.path} has no chat template, so chat-message prompts "
                                "cannot be rendered; give plain-string prompts or a tokenizer with a chat template")
            ids = self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            return list(ids)
        if chat_template:
            if not getattr(self.tokenizer, "chat_template", None):
                raise DataError(f"the tokenizer of {self.path} has no chat template; drop --chat-template")
            ids = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                     add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            return list(ids)
        return list(self.tokenizer(prompt)["input_ids"])

    def encode_response(self, text: str, add_eos: bool = True) -> list[int]:
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return ids + [self.tokenizer.eos_token_id] if add_eos else ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def unknown_chars(self, text: str) -> list[str]:
        """Characters of ``text`` that the tokenizer maps to its unknown token (a character-level organism
        meeting a character outside its alphabet); empty for byte-level tokenizers, which encode anything."""
        unk = self.tokenizer.unk_token_id
        if unk is None or unk not in self.tokenizer(text, add_special_tokens=False)["input_ids"]:
            return []
        return sorted(c for c in set(text) if self.tokenizer(c, add_special_tokens=False)["input_ids"] == [unk])

    def warn_unknown_chars(self, texts: Sequence[tuple[str, str]]) -> int:
        """One warning for all ``(where, text)`` inputs holding characters outside the vocabulary (they become
        the unknown token, so the model sees something else than the text). Returns how many there are."""
        bad = [(where, chars) for where, text in texts if (chars := self.unknown_chars(text))]
        if bad:
            where, chars = bad[0]
            warnings.warn(f"{len(bad)} input text(s) hold characters outside the vocabulary of "
                          f"{self.path or 'the model'}, which become {self.tokenizer.unk_token!r} "
                          f"(first at {where}: {''.join(chars)!r})", ForklensWarning, stacklevel=2)
        return len(bad)

    def check_length(self, n_tokens: int, what: str) -> None:
        if self.context is not None and n_tokens > self.context:
            raise DataError(
                f"{what} is {n_tokens} tokens, longer than the context of {self.path or 'the model'} "
                f"({self.context} tokens)"
            )

    # --- sampling -----------------------------------------------------------------------------
    def sample(self, prompts: Sequence[str] | Sequence[list[int]], n: int = 1, temperature: float = 1.0,
               top_p: float = 1.0, max_new_tokens: int = 64, seed: int = 0, batch_size: int = 256,
               chat_template: bool = False, progress=None) -> Samples:
        """``n`` completions per prompt (temperature 0 = greedy), consecutive per prompt, with the
        built-in KV-cache sampler or the backend chosen by :meth:`use_backend`."""
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        ids = [p if is_token_ids(p) else self.encode_prompt(p, chat_template) for p in prompts]
        for i, p in enumerate(ids):
            if not p:
                raise DataError(f"prompt {i} is empty after tokenization")
            self.check_length(len(p), f"prompt {i}")
            self.check_length(len(p) + max_new_tokens, f"prompt {i} plus max_new_tokens={max_new_tokens}")
        flat = [(g, p) for g, p in enumerate(ids) for _ in range(n)]
        if self.backend is not None:
            responses, finished, processed = self.backend.sample_ids(ids, n, temperature, top_p, max_new_tokens, seed)
            engine_lps = getattr(self.backend, "last_logprobs", None)
            if progress is not None:
                progress(len(flat))
            return Samples(prompt_ids=[p for _, p in flat], response_ids=responses, finished=finished,
                           group=[g for g, _ in flat], texts=[self.decode(r) for r in responses],
                           tokens_processed=processed, sampler_logprobs=engine_lps)
        gen = torch.Generator(device=self.device).manual_seed(int(seed))
        was_training = self.model.training
        self.model.eval()
        responses, finished, processed = [], [], 0
        try:
            for s in range(0, len(flat), batch_size):
                chunk = [p for _, p in flat[s:s + batch_size]]
                r, f, c = sample_batch(self.model, chunk, pad_id=self.pad_id, eos_ids=self.eos_ids,
                                       max_new_tokens=max_new_tokens, temperature=temperature,
                                       top_p=top_p, generator=gen)
                responses += r
                finished += f
                processed += c
                if progress is not None:
                    progress(len(chunk))
        finally:
            self.model.train(was_training)
        return Samples(
            prompt_ids=[p for _, p in flat],
            response_ids=responses,
            finished=finished,
            group=[g for g, _ in flat],
            texts=[self.decode(r) for r in responses],
            tokens_processed=processed,
        )

    # --- scoring ------------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, prompt_ids: Sequence[list[int]], response_ids: Sequence[list[int]], top_k: int = 0,
              batch_tokens: int = 16384, chunk_tokens: int | None = None) -> list[ScoredSequence]:
        """Teacher-force prompt+response; per response token: log-prob, entropy, argmax, top-k.

        Sequences are batched up to ``batch_tokens`` padded tokens; the LM head is applied in chunks
        (see :mod:`forklens.policy.score`), so memory does not grow with length x vocabulary.
        """
        for j, (p, y) in enumerate(zip(prompt_ids, response_ids)):
            self.check_length(len(p) + len(y), f"sequence {j}")
        was_training = self.model.training
        self.model.eval()
        results: list[ScoredSequence | None] = [None] * len(prompt_ids)
        device = self.device
        try:
            for pb in pack_for_scoring(prompt_ids, response_ids, self.pad_id, batch_tokens):
                ids, attn, sel = pb.input_ids.to(device), pb.attention_mask.to(device), pb.predicts_response.to(device)
                if not self._head_checked:
                    verify_head(self.model, ids, attn)
                    self._head_checked = True
                h = hidden_states(self.model, ids, attn)
                stats = chunked_token_stats(self.model, h[sel], pb.targets.to(device), top_k=top_k,
                                            chunk_tokens=chunk_tokens)
                offset = 0
                for j in pb.rows:
                    t = len(response_ids[j])
                    cut = slice(offset, offset + t)
                    results[j] = ScoredSequence(
                        token_ids=torch.tensor(list(response_ids[j]), dtype=torch.long),
                        logprob=stats.logprob[cut].cpu(),
                        entropy=stats.entropy[cut].cpu(),
                        argmax=stats.argmax[cut].cpu(),
                        topk_ids=stats.topk_ids[cut].cpu() if stats.topk_ids is not None else None,
                        topk_logprobs=stats.topk_logprobs[cut].cpu() if stats.topk_logprobs is not None else None,
                    )
                    offset += t
        finally:
            self.model.train(was_training)
        return results  # type: ignore[return-value]
