"""The `arith` model organism: multi-digit addition with a fixed-width scratchpad.

A problem is ``a+b=`` with both operands zero-padded to ``digits`` digits. The response works through
the columns from the right, one fixed-width step per column, then states the answer::

    prompt    "347+485="
    response  "7+5+0=12;4+8+1=13;3+4+1=08;A=0832" <eos>

Each step is ``x+y+c=ss`` where ``c`` is the carry into the column (the tens digit of the previous
step's sum) and ``ss`` is the two-digit column sum. The answer is the tens digit of the last sum
followed by the units digits of the steps, most significant first. Every step has the same width, so
the position of every token is a fixed function of the column: a tiny transformer learns the layout
in a couple of minutes on a laptop CPU.

The *noisy teacher* writes these traces with two kinds of wrong branch at genuine decision points:

* **carry fork**: when the previous column overflowed (true carry 1), it writes carry ``0`` with
  probability ``p_drop_carry``; the rest of the trace stays self-consistent with what it wrote, so the
  final answer is wrong. This is the fork the organism is about: a base model pretrained on these
  traces puts ``p_drop_carry`` on the wrong carry and ``1 - p_drop_carry`` on the right one. With the
  default 0.6 the wrong branch is the mode, so the base model's greedy answer is wrong whenever a
  carry occurs, while the right branch is its second choice: exactly the situation in which RL only
  needs to re-rank one token per carry.
* **digit slip**: with probability ``p_slip`` a column sum is written off by one (a wrong digit). These
  are rarer, lower-entropy forks.

The verifier parses the text after ``A=`` and compares it to the true sum as an integer, so it does
not care about the scratchpad, only the final answer.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable

from forklens.config import field
from forklens.tasks.answers import equivalent
from forklens.tasks.base import BaseTask, Problem

ANSWER_RE = re.compile(r"A=(\d+)")


@dataclass
class ArithConfig:
    digits: int = field(3, ge=1, help="Digits per operand (operands are zero-padded to this width).")
    p_drop_carry: float = field(0.6, ge=0, le=1, help="Noisy teacher: probability of writing carry 0 when the true carry is 1.")
    p_slip: float = field(0.05, ge=0, le=1, help="Noisy teacher: probability of writing a column sum off by one.")
    n_test: int = field(200, ge=1, help="Held-out test problems.")
    test_fraction: float = field(0.1, gt=0, lt=1, help="Fraction of operand pairs reserved for the test split.")
    seed: int = field(0, help="Seed of the split sampling.")


def _pad(x: int, width: int) -> str:
    return str(x).zfill(width)


def gold_trace(a: int, b: int, digits: int) -> str:
    """The correct scratchpad and answer for ``a + b``."""
    return teacher_trace(a, b, digits, random.Random(0), p_drop_carry=0.0, p_slip=0.0)


def teacher_trace(a: int, b: int, digits: int, rng: random.Random, p_drop_carry: float, p_slip: float) -> str:
    """A trace from the noisy teacher; self-consistent with the branches it takes."""
    xs = [int(ch) for ch in _pad(a, digits)][::-1]
    ys = [int(ch) for ch in _pad(b, digits)][::-1]
    steps, units = [], []
    carry = 0
    for x, y in zip(xs, ys):
        c = carry
        if c == 1 and rng.random() < p_drop_carry:
            c = 0  # wrong branch at the carry fork
        s = x + y + c
        if rng.random() < p_slip:
            s = s + 1 if (s == 0 or (s < 19 and rng.random() < 0.5)) else s - 1  # wrong digit
        steps.append(f"{x}+{y}+{c}={_pad(s, 2)}")
        units.append(s % 10)
        carry = s // 10
    answer = str(carry) + "".join(str(u) for u in reversed(units))
    return ";".join(steps) + f";A={answer}"


def distinct_problems(draw: Callable[[], tuple[int, int]], n: int,
                      make: Callable[[int, int], Problem]) -> list[Problem]:
    """The first ``n`` distinct operand pairs from ``draw()``, made into problems, in draw order."""
    seen, out = set(), []
    while len(out) < n:
        a, b = draw()
        if (a, b) not in seen:
            seen.add((a, b))
            out.append(make(a, b))
    return out


def parse_answer(completion: str) -> int | None:
    m = ANSWER_RE.search(completion)
    return int(m.group(1)) if m else None


def n_carries(a: int, b: int, digits: int) -> int:
    """How many carry forks the correct trace passes through (carries into columns 2..digits)."""
    xs = [int(ch) for ch in _pad(a, digits)][::-1]
    ys = [int(ch) for ch in _pad(b, digits)][::-1]
    carry, count = 0, 0
    for x, y in zip(xs[:-1], ys[:-1]):
        carry = (x + y + carry) // 10
        count += carry
    return count


class ArithTask(BaseTask):
    """Multi-digit addition; train and test splits are disjoint sets of operand pairs."""

    name = "arith"
    alphabet = "0123456789+=;A"

    def __init__(self, config: ArithConfig | None = None):
        self.config = config or ArithConfig()
        self._split_cache: dict[str, list[Problem]] = {}

    def _is_test(self, a: int, b: int) -> bool:
        # a fixed hash-based split: the same pair is in the same split for every seed and run
        h = (a * 1_000_003 + b * 998_244_353 + 12_345) % 10_007
        return h < int(self.config.test_fraction * 10_007)

    def prompt(self, a: int, b: int) -> str:
        d = self.config.digits
        return f"{_pad(a, d)}+{_pad(b, d)}="

    def make_problem(self, a: int, b: int) -> Problem:
        d = self.config.digits
        return Problem(
            id=f"{_pad(a, d)}+{_pad(b, d)}",
            prompt=self.prompt(a, b),
            answer=str(a + b),
            meta={"a": a, "b": b, "carries": n_carries(a, b, d)},
        )

    def sample_pair(self, rng: random.Random, split: str) -> tuple[int, int]:
        hi = 10 ** self.config.digits
        while True:
            a, b = rng.randrange(hi), rng.randrange(hi)
            if self._is_test(a, b) == (split == "test"):
                return a, b

    def problems(self, split: str) -> list[Problem]:
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
        if split not in self._split_cache:
            rng = random.Random(f"arith-{split}-{self.config.seed}")
            n = self.config.n_test if split == "test" else 4096
            self._split_cache[split] = distinct_problems(lambda: self.sample_pair(rng, split), n, self.make_problem)
        return self._split_cache[split]

    def expert_response(self, problem: Problem) -> str:
        """The gold (expert) trace for a problem: the scratchpad with every carry right."""
        return gold_trace(problem.meta["a"], problem.meta["b"], self.config.digits)

    def teacher_example(self, rng: random.Random) -> tuple[str, str]:
        """A (prompt, response) pair from the noisy teacher on a train-split problem."""
        a, b = self.sample_pair(rng, "train")
        c = self.config
        return self.prompt(a, b), teacher_trace(a, b, c.digits, rng, c.p_drop_carry, c.p_slip)

    def verify(self, problem: Problem, completion: str) -> float:
        m = ANSWER_RE.search(completion)
        return 1.0 if m is not None and equivalent(m.group(1), problem.answer) else 0.0
