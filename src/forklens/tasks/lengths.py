"""The `lengths` task: repeated addition of a digit to a two-digit number, with a variable number of
steps, so expert traces vary in length while every step is the same local computation.

A problem ``05+7*03=`` asks for ``05 + 7 + 7 + 7`` modulo 100: start ``x``, add the digit ``s``, ``n``
times. The response writes one fixed-width step per addition, with a countdown, then the answer::

    prompt    05+7*03=
    response  03:05+7=12;02:12+7=19;01:19+7=26;A=26 <eos>

Every step ``kk:aa+s=bb;`` reads only the step before it (the countdown, the running value and the
addend sit at fixed offsets), so a tiny transformer executes chains of any trained length; what
varies is how many steps there are. A response has ``11 n + 4`` characters plus EOS: 16 tokens at
one step, 126 at eleven (an 8x range), and the mean number of trained tokens is that of the mean
step count. The ``equal`` control fixes ``min_steps = max_steps`` at the precondition's mean (6), so
every trace has the same length and the mean length (and the SFT budget in tokens) is matched.

The *teacher* the base organism is pretrained on adds the digit to the units and never carries into
the tens (``05+7=02``) unless told to with probability ``p_carry`` (default 0), and slips a units
digit by one with probability ``p_slip``. Its traces are self-consistent, so the base learns the
layout, the countdown and the units sums at every length but has never seen a carry (its answer is
right only when the chain's carries are a multiple of 10, almost always none): the expert (gold)
traces, which carry, are a distribution the base does not contain, and one epoch of SFT on them has
a skill to teach (needed at about 45% of the steps, so a long chain is right only if every one of
its steps is).

Problem ``i`` of a split has ``min_steps + i % span`` steps (stratified); ``(x, s, n)`` triples are
split into train and test by a fixed hash, so no test problem is ever a training problem.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from forklens.config import field
from forklens.errors import ConfigError
from forklens.tasks.answers import equivalent
from forklens.tasks.base import BaseTask, Problem

ANSWER_RE = re.compile(r"A=(\d+)")
PROMPT_RE = re.compile(r"(\d\d)\+(\d)\*(\d\d)")


def parse_prompt(prompt: str) -> tuple[int, int, int]:
    """``(x, s, n)`` of a prompt ``xx+s*nn=`` (a cue may follow ``nn``)."""
    m = PROMPT_RE.match(prompt)
    if m is None:
        raise ValueError(f"not a lengths prompt: {prompt!r}")
    x, s, n = m.groups()
    return int(x), int(s), int(n)


@dataclass
class LengthsConfig:
    min_steps: int = field(1, ge=1, le=99, help="Fewest additions in a problem.")
    max_steps: int = field(11, ge=1, le=99, help="Most additions in a problem (max_steps = min_steps: equal lengths).")
    teacher_min_steps: int = field(1, ge=1, le=99, help="Fewest additions in the teacher's (pretraining) traces.")
    teacher_max_steps: int = field(11, ge=1, le=99, help="Most additions in the teacher's (pretraining) traces.")
    p_carry: float = field(0.0, ge=0, le=1, help="Teacher: probability of carrying when the units overflow.")
    p_slip: float = field(0.02, ge=0, le=1, help="Teacher: probability of writing a units digit off by one.")
    n_train: int = field(4096, ge=1, help="Training-split problems.")
    n_test: int = field(200, ge=1, help="Held-out test problems.")
    test_fraction: float = field(0.1, gt=0, lt=1, help="Fraction of (x, s, n) triples reserved for the test split.")
    seed: int = field(0, help="Seed of the split sampling.")


def response_tokens(steps: int) -> int:
    """Trained tokens of a gold response with ``steps`` additions: the steps, ``A=bb`` and EOS."""
    return 11 * steps + 4 + 1


def add_step(a: int, s: int, rng: random.Random | None = None, p_carry: float = 1.0, p_slip: float = 0.0) -> int:
    """``a + s`` modulo 100 as the writer computes it: the carry from the units into the tens is
    written with probability ``p_carry`` (1: correct addition), the units digit slips by one with
    probability ``p_slip``."""
    units = a % 10 + s % 10
    carry = units // 10 if (p_carry >= 1.0 or (rng is not None and rng.random() < p_carry)) else 0
    u = units % 10
    if p_slip and rng is not None and rng.random() < p_slip:
        u = (u + rng.choice((-1, 1))) % 10
    return ((a // 10 + s // 10 + carry) % 10) * 10 + u


def trace(x: int, s: int, n: int, rng: random.Random | None = None, p_carry: float = 1.0,
          p_slip: float = 0.0) -> str:
    """The scratchpad and answer for ``x + n * s`` (mod 100) written by :func:`add_step`'s writer."""
    steps, a = [], x
    for k in range(n, 0, -1):
        b = add_step(a, s, rng, p_carry, p_slip)
        steps.append(f"{k:02d}:{a:02d}+{s}={b:02d}")
        a = b
    return ";".join(steps) + f";A={a:02d}"


def n_carries(x: int, s: int, n: int) -> int:
    """Steps of the correct chain where the units overflow (where the never-carrying teacher errs)."""
    count, a = 0, x
    for _ in range(n):
        count += (a % 10 + s % 10) >= 10
        a = (a + s) % 100
    return count


class LengthsTask(BaseTask):
    """Repeated addition with a per-problem step count; train and test are disjoint sets of (x, s, n)."""

    name = "lengths"
    alphabet = "0123456789+*=;:A"

    def __init__(self, config: LengthsConfig | None = None):
        self.config = config or LengthsConfig()
        c = self.config
        for lo, hi in (("min_steps", "max_steps"), ("teacher_min_steps", "teacher_max_steps")):
            if getattr(c, lo) > getattr(c, hi):
                raise ConfigError(f"lengths task: {lo} ({getattr(c, lo)}) exceeds {hi} ({getattr(c, hi)})")
        self._split_cache: dict[str, list[Problem]] = {}

    @property
    def step_counts(self) -> range:
        return range(self.config.min_steps, self.config.max_steps + 1)

    def _is_test(self, x: int, s: int, n: int) -> bool:
        h = (x * 1_000_003 + s * 998_244_353 + n * 7_919 + 12_345) % 10_007
        return h < int(self.config.test_fraction * 10_007)

    def sample(self, rng: random.Random, n: int, split: str) -> tuple[int, int]:
        while True:
            x, s = rng.randrange(100), rng.randrange(10)
            if self._is_test(x, s, n) == (split == "test"):
                return x, s

    @staticmethod
    def prompt(x: int, s: int, n: int) -> str:
        return f"{x:02d}+{s}*{n:02d}="

    def problems(self, split: str) -> list[Problem]:
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
        if split not in self._split_cache:
            rng = random.Random(f"lengths-{split}-{self.config.seed}")
            counts = list(self.step_counts)
            total = self.config.n_test if split == "test" else self.config.n_train
            out = []
            for i in range(total):
                n = counts[i % len(counts)]
                x, s = self.sample(rng, n, split)
                out.append(Problem(id=f"{i}:{self.prompt(x, s, n)[:-1]}", prompt=self.prompt(x, s, n),
                                   answer=str((x + n * s) % 100),
                                   meta={"x": x, "s": s, "steps": n, "carries": n_carries(x, s, n)}))
            self._split_cache[split] = out
        return self._split_cache[split]

    def expert_response(self, problem: Problem) -> str:
        """The gold trace: every carry written."""
        return trace(problem.meta["x"], problem.meta["s"], problem.meta["steps"])

    def teacher_example(self, rng: random.Random) -> tuple[str, str]:
        """A (prompt, response) pair from the teacher on a train-split problem of a random step count."""
        c = self.config
        n = rng.randint(c.teacher_min_steps, c.teacher_max_steps)
        x, s = self.sample(rng, n, "train")
        return self.prompt(x, s, n), trace(x, s, n, rng, c.p_carry, c.p_slip)

    def verify(self, problem: Problem, completion: str) -> float:
        m = ANSWER_RE.search(completion)
        return 1.0 if m is not None and equivalent(m.group(1), problem.answer) else 0.0
