"""The `compose` task: a two-level lookup composition that nodes of a message graph can split, and its
non-decomposable control (E060, NeuroMAS, arXiv 2605.16757).

A problem is a pair of digits ``(x1, x2)``. In the *decomposable* task the answer is
``y = (g(x1) + h(x2)) mod 10`` for two fixed lookup tables ``g``, ``h`` (seeded permutations of the
digits); in the *non-decomposable* control (``decomposable = False``) it is ``y = T(x1, x2)`` for a
random 10 x 10 table ``T``: no intermediate result of one input alone says anything about the answer.

Every prompt names the node that reads it, the inputs and the messages of the node's parents::

    L37|>      a node at position L (no parents) writes a one-digit message
    T37|52>    the sink at position T, which reads the messages 5 and 2, writes the answer digit
    S37|>      a single agent: it writes its own two intermediate digits, then the answer ("527")

The answer of any completion is its last character (:meth:`ComposeTask.verify`), so one verifier
scores the sink of a team and a single agent alike. Positions are tags, not roles (the paper's
role-free nodes): the base learns a behaviour per tag from its teacher.

The *teacher* the base organism is pretrained on (:meth:`ComposeTask.teacher_example`) knows the
lookups only partly: at a lookup it writes the right value with probability ``p_right``, a fixed
per-input *decoy* (another digit) with probability ``p_decoy`` and a uniform digit otherwise, so the
base's most likely lookup is the decoy (its greedy answer is wrong) while sampling finds the right
one often enough for RL to sharpen. The combiner (``(u + v) mod 10`` of the two digits it reads, or of
its own two digits for a single agent) is exact: it is the base's generic skill. In the control the
answer digit is ``T(x1, x2)`` with probability ``p_right_table``, else a decoy or a uniform digit,
whatever the messages say. With ``sink_reads = False`` (the ``compose/blind`` organism) the sink's
teacher ignores the messages it reads and computes the answer from its own noisy lookups.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from forklens.config import field
from forklens.errors import ConfigError
from forklens.tasks.base import BaseTask, Problem

DIGITS = "0123456789"
#: node tags: two positions that read only the task, the sink, and a single agent
TAGS = "LRTS"


@dataclass
class ComposeConfig:
    decomposable: bool = field(True, help="y = (g(x1) + h(x2)) mod 10 (true) or a random table T(x1, x2) (false).")
    p_right: float = field(0.35, ge=0, le=1, help="Teacher: probability that a lookup g(x) / h(x) is right.")
    p_decoy: float = field(0.45, ge=0, le=1, help="Teacher: probability that a lookup is the input's fixed decoy.")
    p_right_table: float = field(0.15, ge=0, le=1, help="Teacher (non-decomposable): probability that the answer "
                                 "digit is T(x1, x2); the rest is split as for lookups (decoy, uniform).")
    sink_reads: bool = field(True, help="Teacher: the sink computes the answer from the messages it reads (false: "
                             "from its own lookups, ignoring them).")
    seed: int = field(0, help="Seed of the tables g, h, T and the decoys (the task itself).")


def _table(rng: random.Random) -> list[int]:
    perm = list(range(10))
    rng.shuffle(perm)
    return perm


def _decoys(rng: random.Random, right: list[int]) -> list[int]:
    return [(r + rng.randrange(1, 10)) % 10 for r in right]


class ComposeTask(BaseTask):
    """``f(g(x1), h(x2))`` over all 100 digit pairs (or a random table), one problem per pair."""

    name = "compose"
    alphabet = DIGITS + TAGS + "|>"

    def __init__(self, config: ComposeConfig | None = None):
        self.config = c = config or ComposeConfig()
        if c.p_right + c.p_decoy > 1 or c.p_right_table + c.p_decoy > 1:
            raise ConfigError(f"compose: p_right ({c.p_right}) or p_right_table ({c.p_right_table}) plus p_decoy "
                              f"({c.p_decoy}) exceeds 1")
        rng = random.Random(f"compose-{c.seed}")
        self.g, self.h = _table(rng), _table(rng)
        self.g_decoy, self.h_decoy = _decoys(rng, self.g), _decoys(rng, self.h)
        self.table = [[rng.randrange(10) for _ in range(10)] for _ in range(10)]
        self.table_decoy = [_decoys(rng, row) for row in self.table]

    # --- the function ------------------------------------------------------------------------
    def answer(self, x1: int, x2: int) -> int:
        if self.config.decomposable:
            return (self.g[x1] + self.h[x2]) % 10
        return self.table[x1][x2]

    def problems(self, split: str) -> list[Problem]:
        """All 100 pairs, in both splits: the task is a finite function to be learned, not generalised."""
        if split not in ("train", "test"):
            raise ConfigError(f"compose: unknown split {split!r} (train or test)")
        return [Problem(id=f"{x1}{x2}", prompt=self.node_prompt("S", x1, x2, ""), answer=str(self.answer(x1, x2)),
                        meta={"x1": x1, "x2": x2}) for x1 in range(10) for x2 in range(10)]

    @staticmethod
    def node_prompt(tag: str, x1: int, x2: int, messages: str) -> str:
        if tag not in TAGS:
            raise ConfigError(f"compose: unknown node tag {tag!r} (tags: {TAGS})")
        return f"{tag}{x1}{x2}|{messages}>"

    def verify(self, problem: Problem, completion: str) -> float:
        text = completion.strip()
        return float(bool(text) and text[-1] == problem.answer)

    # --- the teacher -------------------------------------------------------------------------
    def _noisy(self, rng: random.Random, right: int, decoy: int, p_right: float) -> int:
        r = rng.random()
        if r < p_right:
            return right
        if r < p_right + self.config.p_decoy:
            return decoy
        return rng.randrange(10)

    def lookups(self, rng: random.Random, x1: int, x2: int) -> tuple[int, int]:
        p = self.config.p_right
        return (self._noisy(rng, self.g[x1], self.g_decoy[x1], p), self._noisy(rng, self.h[x2], self.h_decoy[x2], p))

    def combine(self, rng: random.Random, x1: int, x2: int, u: int, v: int) -> int:
        """The teacher's answer digit after the intermediate digits ``u``, ``v``."""
        if not self.config.decomposable:
            return self._noisy(rng, self.table[x1][x2], self.table_decoy[x1][x2], self.config.p_right_table)
        return (u + v) % 10

    def teacher_example(self, rng: random.Random) -> tuple[str, str]:
        """One pretraining document: a node of a random tag on a random pair (messages as the teacher's
        workers would write them)."""
        tag = rng.choice(TAGS)
        x1, x2 = rng.randrange(10), rng.randrange(10)
        u, v = self.lookups(rng, x1, x2)
        if tag == "L":
            return self.node_prompt(tag, x1, x2, ""), str(u)
        if tag == "R":
            return self.node_prompt(tag, x1, x2, ""), str(v)
        if tag == "S":
            return self.node_prompt(tag, x1, x2, ""), f"{u}{v}{self.combine(rng, x1, x2, u, v)}"
        if self.config.sink_reads:
            y = self.combine(rng, x1, x2, u, v)
        else:
            y = self.combine(rng, x1, x2, *self.lookups(rng, x1, x2))
        return self.node_prompt(tag, x1, x2, f"{u}{v}"), str(y)
