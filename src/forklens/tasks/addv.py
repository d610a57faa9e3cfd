"""The `addv` task: addition of variable-length operands, pretrained on gold traces only.

Unlike :mod:`forklens.tasks.arith`, no teacher coin is planted: every pretraining trace is correct,
so the base model's mistakes are its own (limited training, limited capacity, or lengths it never
saw). Operands are written without zero padding, so the position of a column's digits in the prompt
depends on both operand lengths: the model has to find the k-th digit from the right of each operand
by attention, and a wrong lookup can land on any of ten digits (forks with more than two branches)::

    prompt    "4739+85="
    response  "9+5+0=14;3+8+1=12;7+0+1=08;4+0+0=04;A=4824" <eos>

Each step ``x+y+c=ss`` adds one column (a missing digit of the shorter operand is written ``0``
in the scratchpad only), ``c`` is the carry into the column and ``ss`` the two-digit column sum;
the answer is the sum without leading zeros. The verifier compares the integer after ``A=`` with
the true sum, so it ignores the scratchpad.

Lengths: the RL and test problems have operand lengths drawn uniformly from
``min_digits..max_digits`` (independently per operand); pretraining traces from
``pretrain_min_digits..pretrain_max_digits`` (0: the same range), so a length-generalisation
organism pretrains on short operands and is trained and tested on longer ones.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from forklens.config import field
from forklens.errors import ConfigError
from forklens.tasks.answers import equivalent
from forklens.tasks.arith import distinct_problems
from forklens.tasks.base import BaseTask, Problem

ANSWER_RE = re.compile(r"A=(\d+)")


@dataclass
class AddvConfig:
    min_digits: int = field(1, ge=1, help="Shortest operand of the RL / test problems (digits).")
    max_digits: int = field(5, ge=1, help="Longest operand of the RL / test problems (digits).")
    pretrain_min_digits: int = field(0, ge=0, help="Shortest operand of the pretraining traces (0: min_digits).")
    pretrain_max_digits: int = field(0, ge=0, help="Longest operand of the pretraining traces (0: max_digits).")
    n_test: int = field(200, ge=1, help="Held-out test problems.")
    test_fraction: float = field(0.1, gt=0, lt=1, help="Fraction of operand pairs reserved for the test split.")
    seed: int = field(0, help="Seed of the split sampling.")

    def check(self) -> None:
        """Raise :class:`ConfigError` on inconsistent length ranges (called by :class:`AddvTask`)."""
        if self.min_digits > self.max_digits:
            raise ConfigError(f"addv: min_digits {self.min_digits} > max_digits {self.max_digits}")
        lo, hi = self.pretrain_range()
        if lo > hi:
            raise ConfigError(f"addv: pretrain_min_digits {lo} > pretrain_max_digits {hi}")

    def pretrain_range(self) -> tuple[int, int]:
        return (self.pretrain_min_digits or self.min_digits, self.pretrain_max_digits or self.max_digits)


def gold_trace(a: int, b: int) -> str:
    """The correct scratchpad and answer for ``a + b`` (columns from the right, no operand padding)."""
    xs, ys = [int(ch) for ch in str(a)][::-1], [int(ch) for ch in str(b)][::-1]
    steps, carry = [], 0
    for i in range(max(len(xs), len(ys))):
        x = xs[i] if i < len(xs) else 0
        y = ys[i] if i < len(ys) else 0
        s = x + y + carry
        steps.append(f"{x}+{y}+{carry}={s:02d}")
        carry = s // 10
    return ";".join(steps) + f";A={a + b}"


def n_carries(a: int, b: int) -> int:
    """Columns whose sum overflows (a carry into the next column or the answer's leading 1)."""
    carry, count = 0, 0
    xs, ys = str(a)[::-1], str(b)[::-1]
    for i in range(max(len(xs), len(ys))):
        s = (int(xs[i]) if i < len(xs) else 0) + (int(ys[i]) if i < len(ys) else 0) + carry
        carry = s // 10
        count += carry
    return count


def digit_match(predicted: str, answer: str) -> float:
    """Share of the answer's digits that ``predicted`` gets right, aligned from the units digit, over the
    longer of the two (so a missing or extra leading digit costs one); leading zeros are ignored. 1.0 only
    for the exact answer: a dense outcome reward (it reads the final answer only, never the scratchpad)."""
    p, a = predicted.lstrip("0") or "0", answer.lstrip("0") or "0"
    if not (p.isdigit() and a.isdigit()):
        raise ValueError(f"digit_match: {predicted!r} and {answer!r} must be non-negative integers")
    hits = sum(x == y for x, y in zip(reversed(p), reversed(a)))
    return hits / max(len(p), len(a))


def sample_operand(rng: random.Random, digits: int) -> int:
    """A uniformly random integer with exactly ``digits`` digits (0-9 for one digit)."""
    return rng.randrange(10) if digits == 1 else rng.randrange(10 ** (digits - 1), 10 ** digits)


class AddvTask(BaseTask):
    """Variable-length addition on gold traces; train and test splits are disjoint operand pairs."""

    name = "addv"
    alphabet = "0123456789+=;A"

    def __init__(self, config: AddvConfig | None = None):
        self.config = config or AddvConfig()
        self.config.check()
        self._split_cache: dict[str, list[Problem]] = {}

    def _is_test(self, a: int, b: int) -> bool:
        h = (a * 1_000_003 + b * 998_244_353 + 12_345) % 10_007
        return h < int(self.config.test_fraction * 10_007)

    @staticmethod
    def prompt(a: int, b: int) -> str:
        return f"{a}+{b}="

    def make_problem(self, a: int, b: int) -> Problem:
        return Problem(id=f"{a}+{b}", prompt=self.prompt(a, b), answer=str(a + b),
                       meta={"a": a, "b": b, "carries": n_carries(a, b),
                             "digits": max(len(str(a)), len(str(b)))})

    def sample_pair(self, rng: random.Random, split: str, lo: int, hi: int) -> tuple[int, int]:
        for _ in range(10_000):
            a = sample_operand(rng, rng.randint(lo, hi))
            b = sample_operand(rng, rng.randint(lo, hi))
            if self._is_test(a, b) == (split == "test"):
                return a, b
        raise ValueError(f"addv: could not draw a {split} pair with {lo}..{hi} digits")

    def problems(self, split: str) -> list[Problem]:
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
        if split not in self._split_cache:
            c = self.config
            rng = random.Random(f"addv-{split}-{c.seed}-{c.min_digits}-{c.max_digits}")
            n = c.n_test if split == "test" else 4096
            space = sum(9 * 10 ** (d - 1) + (d == 1) for d in range(c.min_digits, c.max_digits + 1)) ** 2
            n = min(n, int(space * (c.test_fraction if split == "test" else 1 - c.test_fraction) * 0.5))
            self._split_cache[split] = distinct_problems(
                lambda: self.sample_pair(rng, split, c.min_digits, c.max_digits), n, self.make_problem)
        return self._split_cache[split]

    def expert_response(self, problem: Problem) -> str:
        return gold_trace(problem.meta["a"], problem.meta["b"])

    def teacher_example(self, rng: random.Random) -> tuple[str, str]:
        """A gold (prompt, response) pair on a train-split problem of the pretraining lengths."""
        a, b = self.sample_pair(rng, "train", *self.config.pretrain_range())
        return self.prompt(a, b), gold_trace(a, b)

    def digit_reward(self, problem: Problem, completion: str) -> float:
        """Per-digit outcome reward: :func:`digit_match` of the integer after ``A=`` (0 without one)."""
        m = ANSWER_RE.search(completion)
        return 0.0 if m is None else digit_match(m.group(1), problem.answer)

    def verify(self, problem: Problem, completion: str) -> float:
        m = ANSWER_RE.search(completion)
        return 1.0 if m is not None and equivalent(m.group(1), problem.answer) else 0.0
