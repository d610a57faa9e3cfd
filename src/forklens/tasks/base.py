"""The task interface: problems with prompts, answers and an exact verifier."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence


@dataclass(frozen=True)
class Problem:
    """One problem: the prompt text the model sees and the gold answer the verifier checks against."""

    id: str
    prompt: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


class Task(Protocol):
    """A source of problems plus a verifier. Organisms also provide teacher traces for pretraining."""

    name: str

    def problems(self, split: str) -> list[Problem]:
        """The problems of a split (``"train"`` or ``"test"``), in a fixed order."""

    def verify(self, problem: Problem, completion: str) -> float:
        """Reward of a completion: 1.0 if its final answer is correct, else 0.0."""


def rewards_for(task: Task, problems: Sequence[Problem], completions: Sequence[str]) -> list[float]:
    return [task.verify(p, c) for p, c in zip(problems, completions)]
