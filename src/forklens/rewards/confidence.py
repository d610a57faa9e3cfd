"""The premature-confidence probe and its shaping reward (arXiv 2605.24396; docs/rewards.md).

**Probe.** Cut a response's chain of thought at 0, 20, 40, 60, 80 and 100% of its length (in
characters), append a *forced-answer suffix*, sample ``m`` short completions and grade them against
the gold answer: ``c_j`` = fraction correct at cut ``j``. A model that works the problem out has a
rising trajectory (Spearman correlation with position >= 0.4: *progressive*); one that is already
sure (or never sure) before reasoning has a flat or falling one (*premature*). A constant trajectory
has no defined rank correlation; :func:`spearman` returns 0 for it, so it counts as premature.

**Forcing an answer** is task-specific (:func:`forcing_for`):

* ``arith``: the chain of thought is the scratchpad before ``A=``; the forced prompt is
  ``prompt + cut + ";A="`` (just ``A=`` at a step boundary or at 0%), the completion is the digits;
* ``lengths`` and ``shortcut``: the same rule as ``arith`` (the chain of steps before ``A=``, joined
  with ``;``), with two-digit answers (the cue in a ``shortcut`` prompt is never part of the cut);
* ``agent``: the chain of thought is the transcript (calls and observations) before the final
  ``!``; the forced prompt is ``prompt + cut + "!"``, the completion is the answer;
* any other task or a JSONL file: the text before the last ``marker`` (default ``"Answer:"``); the
  forced prompt appends the marker; the completion's first line is compared with the answer.

**Shaping reward.** ``P = eta * sum_j c_j w_j`` with ``w = (0.5, 0.3, 0.1, -0.1, -0.3, -0.5)`` and
``eta = 1``: the weights sum to zero, so a flat trajectory gets 0, early certainty a penalty and a
rising trajectory a bonus. :class:`ConfidenceReward` returns ``-P`` so that, composed with the
outcome reward at weight 1, it is subtracted before group normalisation as in the paper. It samples
from the policy it holds (the one being trained, so the probe follows the policy): at most ``6 * m``
forced completions of at most ``max_answer_tokens`` tokens per scored response, fewer when responses
share forced prompts (identical cuts are sampled once).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

from forklens.tasks.answers import equivalent
from forklens.rewards import problems_from, texts_of

POSITIONS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
WEIGHTS = (0.5, 0.3, 0.1, -0.1, -0.3, -0.5)
PROGRESSIVE_RHO = 0.4
MAX_REASONING_CHARS = 100_000  # longer chains are cut here before the probe (bounded cost)


# ------------------------------------------------------------------------------------ forcing


@dataclass
class MarkerForcing:
    """Force an answer by appending ``marker``; the chain of thought is the text before its last occurrence."""

    marker: str = "Answer:"
    max_answer_tokens: int = 16
    join: str = ""  # text put between a non-empty cut and the marker

    def reasoning(self, completion) -> str:
        if not isinstance(completion, str):
            return ""
        at = completion.rfind(self.marker)
        text = completion[:at] if at >= 0 else completion
        return text[:MAX_REASONING_CHARS]

    def forced_prompt(self, prompt: str, cut: str) -> str:
        return prompt + cut + (self.join if cut and self.join and not cut.endswith(self.join) else "") + self.marker

    def correct(self, problem, answer_text: str) -> bool:
        gold = getattr(problem, "answer", None)
        if gold is None:
            return False
        first = answer_text.strip().splitlines()[0] if answer_text.strip() else ""
        return bool(first) and equivalent(first, str(gold))


@dataclass
class TaskForcing(MarkerForcing):
    """Marker forcing graded by the task's own verifier on ``marker + completion``."""

    task: object = None

    def correct(self, problem, answer_text: str) -> bool:
        return bool(self.task.verify(problem, self.marker + answer_text.strip()) > 0)


@dataclass
class AgentForcing(TaskForcing):
    """Agent episodes: only a final ``!ANSWER`` is the answer (``!`` inside a transcript is a forced marker)."""

    def reasoning(self, completion) -> str:
        if not isinstance(completion, str):
            return ""
        tail = max(0, len(completion) - 64)
        m = re.search(r"!([a-z]+|[0-9]+)\s*$", completion[tail:])
        text = completion[: tail + m.start()] if m else completion
        return text[:MAX_REASONING_CHARS]


def forcing_for(task) -> MarkerForcing:
    """The forced-answer rule of a built-in task (see the module docstring)."""
    name = getattr(task, "name", None)
    if name == "arith":
        return TaskForcing(marker="A=", max_answer_tokens=task.config.digits + 2, join=";", task=task)
    if name == "agent":
        return AgentForcing(marker="!", max_answer_tokens=task.config.entity_len + 1, task=task)
    if name in ("lengths", "shortcut"):  # two-digit answers after the chain's steps, as in arith
        return TaskForcing(marker="A=", max_answer_tokens=3, join=";", task=task)
    return TaskForcing(marker="Answer:", task=task) if task is not None else MarkerForcing()


def truncate(reasoning: str, frac: float) -> str:
    """The first ``round(frac * len)`` characters."""
    return reasoning[: int(round(frac * len(reasoning)))]


# ------------------------------------------------------------------------------------ the probe


def confidence_trajectories(policy, forcing: MarkerForcing, problems: Sequence, completions: Sequence,
                            m: int = 10, temperature: float = 1.0, seed: int = 0,
                            positions: Sequence[float] = POSITIONS, batch_size: int = 512,
                            stats: dict | None = None) -> list[list[float]]:
    """``c_j`` at each position for each (problem, completion): the fraction of ``m`` forced answers
    that are correct. Identical forced prompts (same problem, same cut: common within a GRPO group
    and always at 0%) share one set of ``m`` samples, so identical responses get identical rewards.
    Prompts that would not fit the policy's context lose tokens from the left (the forced marker
    stays). ``stats``, when given, accumulates ``tokens_processed`` and ``unique_prompts``."""
    if m < 1:
        raise ValueError(f"m must be >= 1, got {m}")
    keys: list[int] = []  # the unique prompt of each (response, position)
    unique: dict[tuple, int] = {}  # identical forced prompts share their m samples
    prompts: list[list[int]] = []
    owner: list[int] = []  # a problem of each unique prompt, for grading
    for i, (p, c) in enumerate(zip(problems, completions)):
        r = forcing.reasoning(c)
        for f in positions:
            ids = policy.encode_prompt(forcing.forced_prompt(p.prompt, truncate(r, f)))
            ctx = policy.context
            if ctx is not None and len(ids) + forcing.max_answer_tokens > ctx:
                ids = ids[len(ids) + forcing.max_answer_tokens - ctx:]
            key = (p.id, p.answer, tuple(ids))
            if key not in unique:
                unique[key] = len(prompts)
                prompts.append(ids)
                owner.append(i)
            keys.append(unique[key])
    if not prompts:
        return []
    s = policy.sample(prompts, n=m, temperature=temperature, max_new_tokens=forcing.max_answer_tokens,
                      seed=seed, batch_size=batch_size)
    if stats is not None:
        stats["tokens_processed"] = stats.get("tokens_processed", 0) + s.tokens_processed
        stats["unique_prompts"] = stats.get("unique_prompts", 0) + len(prompts)
    hits = [0] * len(prompts)
    for g, text in zip(s.group, s.texts):
        hits[g] += forcing.correct(problems[owner[g]], text)
    k = len(positions)
    return [[hits[keys[i * k + j]] / m for j in range(k)] for i in range(len(problems))]


def _ranks(xs: Sequence[float]) -> list[float]:
    """1-based ranks, ties get their average rank."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for t in range(i, j + 1):
            ranks[order[t]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson on average ranks); 0.0 when either side is constant."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"spearman needs two sequences of one length >= 2, got {len(x)} and {len(y)}")
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return 0.0
    return sxy / math.sqrt(sxx * syy)


def is_progressive(trajectory: Sequence[float], positions: Sequence[float] = POSITIONS,
                   threshold: float = PROGRESSIVE_RHO) -> bool:
    return spearman(trajectory, positions) >= threshold


def premature_penalty(trajectory: Sequence[float], weights: Sequence[float] = WEIGHTS, eta: float = 1.0) -> float:
    """``P = eta * sum_j c_j w_j``."""
    if len(trajectory) != len(weights):
        raise ValueError(f"{len(trajectory)} confidences for {len(weights)} weights")
    return eta * sum(c * w for c, w in zip(trajectory, weights))


class ConfidenceReward:
    """``-P`` per completion as a TRL-signature reward; holds the policy it probes.

    ``reward_fns=[verifier_reward(task), ConfidenceReward(policy, task)]`` gives the paper's
    ``outcome - P``. Each call draws ``6 * m`` forced completions per response (``m = 10`` as in the
    paper by default), seeded by ``seed`` and a call counter. Completions that are not strings get
    ``0.0``; problems without a gold answer get ``None``.
    """

    __name__ = "confidence"

    def __init__(self, policy, task=None, forcing: MarkerForcing | None = None, m: int = 10, eta: float = 1.0,
                 weights: Sequence[float] = WEIGHTS, temperature: float = 1.0, seed: int = 0):
        if len(weights) != len(POSITIONS):
            raise ValueError(f"need {len(POSITIONS)} weights, got {len(weights)}")
        self.policy = policy
        self.forcing = forcing or forcing_for(task)
        self.m, self.eta, self.weights, self.temperature = m, eta, tuple(weights), temperature
        self.seed = seed
        self.calls = 0
        self.forced_samples = 0  # forced completions drawn so far (the reward's cost, after sharing)
        self.tokens_processed = 0  # tokens the probe ran through the policy (for FLOP accounting)

    def __call__(self, prompts, completions, problem=None, answer=None, **_) -> list[float | None]:
        completions = texts_of(completions)  # chat-format completions (TRL) as their text
        problems = problems_from(prompts, problem, answer)
        live = [i for i in range(len(completions))
                if isinstance(completions[i], str) and getattr(problems[i], "answer", None) is not None]
        stats: dict = {}
        traj = confidence_trajectories(self.policy, self.forcing, [problems[i] for i in live],
                                       [completions[i] for i in live], m=self.m, temperature=self.temperature,
                                       seed=self.seed * 1_000_003 + self.calls, stats=stats)
        self.tokens_processed += stats.get("tokens_processed", 0)
        self.calls += 1
        self.forced_samples += stats.get("unique_prompts", 0) * self.m
        out: list[float | None] = [None if getattr(p, "answer", None) is None else 0.0 for p in problems]
        for i, t in zip(live, traj):
            out[i] = -premature_penalty(t, self.weights, self.eta)
        return out
