"""The task interface: problems with prompts, answers, an exact verifier, and how they are rolled out.

A task owns its rollout: :meth:`Task.rollout` draws ``n`` completions per problem from a policy.
:class:`BaseTask` gives plain single-turn sampling; a task with tools overrides it with episodes in
which an environment appends observations (:class:`forklens.tasks.agent.AgentTask`). Everything above
(GRPO, evaluation, pass@k) calls ``task.rollout`` and never asks which kind it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from forklens.errors import ConfigError
from forklens.policy import Samples


@dataclass(frozen=True)
class Problem:
    """One problem: the prompt text the model sees and the gold answer the verifier checks against."""

    id: str
    prompt: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


class RolloutSettings(Protocol):
    """What a rollout reads from a sampling config (``SamplingConfig``, ``EvalConfig`` or :class:`Sampling`)."""

    temperature: float  # 0 = greedy
    top_p: float
    max_new_tokens: int  # completion cap of a single-turn rollout
    T: int  # tool-call cap of a multi-turn rollout (forced answer at the cap)
    turn_tokens: int  # token cap of one model turn of a multi-turn rollout


@dataclass
class Sampling:
    """Rollout settings for callers without a config (see :class:`RolloutSettings`)."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    T: int = 5
    turn_tokens: int = 12


class Task(Protocol):
    """A source of problems plus a verifier and a rollout. Organisms also provide teacher traces."""

    name: str

    def problems(self, split: str) -> list[Problem]:
        """The problems of a split (``"train"`` or ``"test"``), in a fixed order."""

    def verify(self, problem: Problem, completion: str) -> float:
        """Reward of a completion: 1.0 if its final answer is correct, else 0.0."""

    def rollout(self, policy, problems: Sequence[Problem], n: int, sampling: RolloutSettings, seed: int = 0,
                batch_size: int | None = None) -> Samples:
        """``n`` completions per problem, prompt-major (:class:`~forklens.policy.Samples`)."""

    def check_caps(self, Ts: Sequence[int]) -> None:
        """Raise ConfigError for tool-call caps ``Ts`` the task cannot run (a task without tools: any T != 0)."""

    def rollout_metrics(self, problems: Sequence[Problem], samples: Samples) -> dict[str, float]:
        """Task-specific diagnostics of a rollout (``problems`` aligned with the samples), for logging."""


class BaseTask:
    """Defaults for a task: single-turn sampling of each problem's prompt, no tools (so the only
    tool-call cap is 0), no extra metrics."""

    default_caps: tuple[int, ...] = (0,)  # the tool-call caps a PASS@(k, T) grid uses by default

    def check_caps(self, Ts: Sequence[int]) -> None:
        """Raise :class:`ConfigError` for tool-call caps this task cannot run."""
        if any(T != 0 for T in Ts):
            raise ConfigError(f"task {self.name!r} has no tools: only T=0 applies (got T={list(Ts)})")

    def rollout(self, policy, problems: Sequence[Problem], n: int, sampling: RolloutSettings, seed: int = 0,
                batch_size: int | None = None) -> Samples:
        extra = {"batch_size": batch_size} if batch_size is not None else {}
        return policy.sample([p.prompt for p in problems], n=n, temperature=sampling.temperature,
                             top_p=sampling.top_p, max_new_tokens=sampling.max_new_tokens, seed=seed, **extra)

    def rollout_metrics(self, problems: Sequence[Problem], samples: Samples) -> dict[str, float]:
        return {}

