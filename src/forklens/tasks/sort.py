"""The `sort` task: sort ``n_digits`` digits; the true utility is the fraction of correct positions.

A prompt is ``n_digits`` random digits followed by ``>`` (e.g. ``530912>``); the answer is the digits in
non-decreasing order (``012359``). The true utility U(y) of a response is the fraction of the answer's
positions it gets right (a partial-credit utility, as in the smallest faithful test of EvoLM, arXiv
2605.03871); ``verify`` returns U.

The teacher is noisy: each answer position is replaced by a uniformly random digit with probability
``p_noise``, so a model pretrained on it makes mistakes that are partly its own (limited capacity) and
partly the teacher's, and its most likely digit at a position is usually, not always, right.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

from forklens.config import field
from forklens.errors import ConfigError
from forklens.policy import Samples
from forklens.tasks.base import BaseTask, Problem

DIGITS = "0123456789"


@dataclass
class SortConfig:
    n_digits: int = field(6, ge=2, le=16, help="Digits per prompt (and answer length).")
    prompt_end: str = field(">", help="The character that ends each prompt.")
    p_noise: float = field(0.3, ge=0, le=1, help="Teacher probability of writing a random digit at a position.")
    n_train: int = field(512, ge=1, help="Training problems.")
    n_test: int = field(128, ge=1, help="Test problems.")
    seed: int = field(0, help="Seed of the problems.")


class SortTask(BaseTask):
    name = "sort"

    def __init__(self, config: SortConfig | None = None):
        self.config = config or SortConfig()
        if len(self.config.prompt_end) != 1 or self.config.prompt_end in DIGITS:
            raise ConfigError(f"sort: prompt_end must be one non-digit character, got {self.config.prompt_end!r}")
        self.alphabet = DIGITS + self.config.prompt_end

    def digits_of(self, prompt: str) -> str:
        return prompt[: self.config.n_digits]

    def answer_of(self, prompt: str) -> str:
        return "".join(sorted(self.digits_of(prompt)))

    def utility(self, prompt: str, text: str) -> float:
        """Fraction of the answer's positions that ``text`` gets right."""
        gold = self.answer_of(prompt)
        return sum(a == b for a, b in zip(gold, text)) / len(gold)

    def make_prompt(self, rng: random.Random) -> str:
        return "".join(rng.choice(DIGITS) for _ in range(self.config.n_digits)) + self.config.prompt_end

    def teacher_example(self, rng: random.Random) -> tuple[str, str]:
        prompt = self.make_prompt(rng)
        answer = "".join(rng.choice(DIGITS) if rng.random() < self.config.p_noise else d
                         for d in self.answer_of(prompt))
        return prompt, answer

    def problems(self, split: str) -> list[Problem]:
        if split not in ("train", "test"):
            raise ConfigError(f"sort: unknown split {split!r} (train or test)")
        n = self.config.n_train if split == "train" else self.config.n_test
        rng = random.Random(f"sort-{split}-{self.config.seed}")
        out = []
        for i in range(n):
            prompt = self.make_prompt(rng)
            out.append(Problem(id=f"{split}-{i}", prompt=prompt, answer=self.answer_of(prompt)))
        return out

    def verify(self, problem: Problem, completion: str) -> float:
        return self.utility(problem.prompt, completion)

    def rollout_metrics(self, problems: Sequence[Problem], samples: Samples) -> dict[str, float]:
        """The rollout's mean true utility (logged as ``utility`` whatever the reward)."""
        texts = samples.texts
        return {"utility": sum(self.utility(p.prompt, t) for p, t in zip(problems, texts)) / len(texts)} if texts else {}
