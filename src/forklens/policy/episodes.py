"""Multi-turn episodes: the policy writes, a tool environment appends observations, until an answer.

A round gives every unfinished episode one model turn, decoded with the single-turn KV-cache
sampler (:func:`forklens.policy.sample.sample_batch`) with the environment's stop strings (``)`` for
the agent organism) added to EOS as stopping tokens. Then, per row, the environment reads the turn
and appends its observation tokens, or ends the episode. The next round re-runs the prefill over
each row's whole context (prompt, earlier turns, observations): a fresh KV cache per turn, the
simplest correct scheme, and cheap at organism scale where turns are a few tokens and prefill is one
batched forward pass.

Every turn is decoded from exactly the context a turn-by-turn loop over :meth:`Policy.sample` would
give it, so greedy episodes equal that reference loop (tested). With temperature > 0 the draws come
from one ``torch.Generator`` seeded by the caller, consumed in a fixed order (round, then batch
chunk), so a seed reproduces the episodes.

An environment provides ``stop_strings``, ``reset(problem, T) -> (state, text)`` (text appended after
the prompt before the first turn) and ``step(problem, state, turn_text) -> (observation, done)``; see
:class:`forklens.tasks.agent.ToolEnv`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from forklens.errors import DataError
from forklens.policy import Samples
from forklens.policy.sample import sample_batch


@dataclass
class Episode:
    """One episode: the prompt, then alternating model and environment segments."""

    problem_index: int
    prompt_ids: list[int]
    segments: list[tuple[list[int], bool]] = field(default_factory=list)  # (token ids, written by env)
    calls: list[str] = field(default_factory=list)  # the tool calls the model made, as text
    finished: bool = False  # ended with EOS or by the environment (False: a turn or the context ran out)
    forced: bool = False  # the answer marker was forced by the cap
    done: bool = False
    text: str = ""  # decoded transcript after the prompt (observations included, specials dropped)
    state: Any = None

    @property
    def response_ids(self) -> list[int]:
        return [t for ids, _ in self.segments for t in ids]

    @property
    def env_mask(self) -> list[int]:
        """1 at each response token written by the environment, 0 at the model's own tokens."""
        return [int(env) for ids, env in self.segments for _ in ids]

    @property
    def n_model_tokens(self) -> int:
        return sum(len(ids) for ids, env in self.segments if not env)

    def context(self) -> list[int]:
        return self.prompt_ids + self.response_ids


@dataclass
class EpisodeBatch:
    episodes: list[Episode]
    group: list[int]  # index of the problem each episode answers (prompt-major, n per problem)
    tokens_processed: int = 0  # tokens run through the model (prefills + decoding), for FLOPs

    @property
    def texts(self) -> list[str]:
        return [e.text for e in self.episodes]

    def as_samples(self) -> Samples:
        """The episodes as :class:`~forklens.policy.Samples` (with ``env_masks`` and ``episodes``)."""
        eps = self.episodes
        return Samples(prompt_ids=[e.prompt_ids for e in eps], response_ids=[e.response_ids for e in eps],
                       finished=[e.finished for e in eps], group=list(self.group), texts=self.texts,
                       tokens_processed=self.tokens_processed, env_masks=[e.env_mask for e in eps],
                       episodes=list(eps))


def stop_token_ids(tokenizer, stop_strings: Sequence[str]) -> list[int]:
    """The token ids of single-token stop strings (a char tokenizer makes every character one)."""
    ids = []
    for s in stop_strings:
        enc = tokenizer(s, add_special_tokens=False)["input_ids"]
        if len(enc) != 1:
            raise DataError(f"stop string {s!r} is {len(enc)} tokens; the episode sampler needs single tokens")
        ids.append(enc[0])
    return ids


def _encode(policy, text: str) -> list[int]:
    return list(policy.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


@torch.no_grad()
def sample_episodes(policy, env, problems: Sequence, n: int = 1, T: int = 1, temperature: float = 1.0,
                    top_p: float = 1.0, turn_tokens: int = 12, seed: int = 0, batch_size: int = 512,
                    progress: Callable[[int], None] | None = None) -> EpisodeBatch:
    """``n`` episodes per problem with at most ``T`` tool calls each (``T = 0``: answer at once).

    A turn ends at EOS, at one of ``env.stop_strings``, or after ``turn_tokens`` tokens (the episode
    is then truncated: ``finished = False``). An episode also ends truncated when its context would
    outgrow the model's. Episodes are ordered prompt-major: problem 0's ``n`` episodes first.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if turn_tokens < 1:
        raise ValueError(f"turn_tokens must be >= 1, got {turn_tokens}")
    stops = stop_token_ids(policy.tokenizer, env.stop_strings)
    stop_set = set(stops) | set(policy.eos_ids)
    eos_set = set(policy.eos_ids)
    prompts = [policy.encode_prompt(p.prompt) for p in problems]
    for i, p in enumerate(prompts):
        if not p:
            raise DataError(f"prompt {i} is empty after tokenization")
        policy.check_length(len(p) + turn_tokens, f"prompt {i} plus one turn of {turn_tokens} tokens")
    episodes: list[Episode] = []
    for g, p in enumerate(problems):
        for _ in range(n):
            state, opening = env.reset(p, T)
            ep = Episode(problem_index=g, prompt_ids=prompts[g], state=state)
            if opening:
                ep.segments.append((_encode(policy, opening), True))
                ep.forced = bool(getattr(state, "forced", False))
            episodes.append(ep)
    gen = torch.Generator(device=policy.device).manual_seed(int(seed))
    was_training = policy.model.training
    policy.model.eval()
    processed = 0
    context = policy.context
    try:
        while True:
            active = [e for e in episodes if not e.done]
            if not active:
                break
            for e in active:  # an episode whose next turn could not fit is cut here
                if context is not None and len(e.context()) + turn_tokens > context:
                    e.done, e.finished = True, False
            active = [e for e in active if not e.done]
            for s in range(0, len(active), batch_size):
                chunk = active[s:s + batch_size]
                turns, _, count = sample_batch(policy.model, [e.context() for e in chunk], pad_id=policy.pad_id,
                                               eos_ids=sorted(stop_set), max_new_tokens=turn_tokens,
                                               temperature=temperature, top_p=top_p, generator=gen)
                processed += count
                for e, turn in zip(chunk, turns):
                    _apply_turn(policy, env, problems[e.problem_index], e, turn, stop_set, eos_set)
                if progress is not None:
                    progress(len(chunk))
    finally:
        policy.model.train(was_training)
    for e in episodes:
        e.text = policy.decode(e.response_ids)
        e.calls = list(getattr(e.state, "calls", e.calls))
    return EpisodeBatch(episodes=episodes, group=[e.problem_index for e in episodes], tokens_processed=processed)


def _apply_turn(policy, env, problem, e: Episode, turn: list[int], stop_set: set[int], eos_set: set[int]) -> None:
    e.segments.append((list(turn), False))
    if not turn or turn[-1] not in stop_set:  # ran out of turn tokens
        e.done, e.finished = True, False
        return
    if turn[-1] in eos_set:
        e.done, e.finished = True, True
        return
    obs, done = env.step(problem, e.state, policy.decode(turn))
    if obs:
        e.segments.append((_encode(policy, obs), True))
    e.forced = bool(getattr(e.state, "forced", False))
    if done:
        e.done, e.finished = True, True


def episodes_to_rollouts(batch: EpisodeBatch, pad_id: int, **kwargs):
    """Right-padded :class:`Rollouts` of the episodes (see :meth:`forklens.policy.Samples.to_rollouts`)."""
    return batch.as_samples().to_rollouts(pad_id, **kwargs)
