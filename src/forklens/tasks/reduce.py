"""The `reduce` task: the sum modulo 10 of a list of digits, solved flat or by delegating parts of the list.

A node sees at most ``window`` digits: a longer list is shown as its first ``window`` digits and ``+``
(the rest is out of view, as an input larger than a context), so nothing but delegation can answer it.
A node answers with one digit, or delegates (the ``delegate(subgoal)`` action of
:mod:`forklens.policy.delegation`): ``/`` hands the two halves of its list to two fresh episodes of
the same policy, ``#`` hands four near-equal parts to four (fewer when the list is shorter). The
environment appends the children's answers and ``>``, and the node answers the combination::

    prompt 3907=              response 9<eos>                  (direct)
    prompt 39071234=          response /[95>]4<eos>            (halves; the children answered 9 and 5)
    prompt 39071234+=         response #[0514>]0<eos>          (more than window digits: only delegation sees them)

A delegation call that is not allowed (depth limit, node budget, a one-digit list, or a fixed scaffold
that decides for the node) gets the observation ``x``; the node must then answer by itself. A child
that gives no answer is reported as ``?``.

**The teacher** the base organism is pretrained on answers a list of up to ``window`` digits directly
with probability ``p_direct`` (one digit: always) and otherwise delegates, with ``#`` rather than ``/``
with probability ``p_wide``; a list out of view it always delegates. A fraction ``p_refuse`` of its
calls are refused and it answers anyway (the right answer, which out of view is a guess for the
model). Children's answers in its traces are always right. ``teacher_delegates = false`` (the control)
never delegates: the base has no delegation behaviour. The base's errors are its own: summing many
digits in one token exceeds a 2-layer model, while combining two answers does not.

Train and test lists are drawn from different seeds, and a test list that is also a training list is
redrawn while an unseen list of its length exists (so the shortest test lists may repeat training lists,
e.g. every bit list of 2 with ``modulus = 2``). ``modulus = 2`` makes the lists bits and the task parity:
combining two children's answers is then XOR (4 cases) instead of a sum mod 10 (100 cases).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

from forklens.config import field
from forklens.errors import ConfigError
from forklens.policy import Samples
from forklens.policy.delegation import TreeBatch, sample_trees
from forklens.tasks.base import BaseTask, Problem, RolloutSettings

HALVES, WIDE = "/", "#"
REFUSED = "x"
MISSING = "?"
MORE = "+"
ANSWER_RE = re.compile(r"(\d)$")


@dataclass
class ReduceConfig:
    modulus: int = field(10, ge=2, le=10, help="Digits are drawn from 0..modulus-1 and the answer is their sum mod "
                         "modulus (10: sum mod 10; 2: parity of a bit list, where combining two answers is XOR).")
    window: int = field(8, ge=1, help="Digits a node sees; a longer list is shown as its first `window` digits and '+'.")
    train_lengths: list[int] = field(default_factory=lambda: [2, 4, 8, 16, 32], ge=1,
                                     help="List lengths of the training split (drawn uniformly).")
    test_lengths: list[int] = field(default_factory=lambda: [2, 4, 8, 16, 32, 64, 128], ge=1,
                                    help="List lengths of the test split (n_test_per_length each).")
    n_train: int = field(2000, ge=1, help="Training problems.")
    n_test_per_length: int = field(32, ge=1, help="Test problems per length.")
    p_direct: float = field(0.7, ge=0, le=1, help="Teacher: probability of answering a list in view directly.")
    p_wide: float = field(0.3, ge=0, le=1, help="Teacher: probability that a delegation is '#' (four parts), not '/'.")
    p_refuse: float = field(0.15, ge=0, le=1, help="Teacher: fraction of its delegation calls shown refused.")
    teacher_delegates: bool = field(True, help="Teacher delegates at all (false: the no-delegation control base).")
    teacher_max_length: int = field(64, ge=1, help="Longest list in the teacher's traces.")
    p_short: float = field(0.6, ge=0, le=1, help="Teacher: fraction of traces on lists in view (length <= window).")
    max_depth: int = field(8, ge=0, help="Rollouts: delegation depth limit (0: flat episodes, every call refused).")
    max_nodes: int = field(256, ge=1, help="Rollouts: node budget per tree (a call past it is refused).")
    seed: int = field(0, help="Seed of the splits.")


def reduce_answer(digits: str, modulus: int = 10) -> str:
    return str(sum(int(c) for c in digits) % modulus)


def split_parts(digits: str, call: str) -> list[str]:
    """The parts a call delegates: two halves for ``/``, four near-equal parts for ``#`` (one digit each
    when the list is shorter); ``[]`` for a one-digit list (nothing to split)."""
    n = len(digits)
    if n < 2:
        return []
    k = 2 if call == HALVES else min(4, n)
    cuts = [round(i * n / k) for i in range(k + 1)]
    return [digits[cuts[i]:cuts[i + 1]] for i in range(k)]


@dataclass
class ReduceState:
    answering: bool = False  # after children's answers or a refusal: the next turn is the answer
    may_delegate: bool = True  # False under a fixed scaffold at a leaf
    calls: int = 0


class ReduceEnv:
    """The delegation environment of the task (:class:`forklens.policy.delegation.TreeEnv`). With
    ``scaffold_leaf > 0`` it is the fixed splitting scaffold: it halves every list longer than
    ``scaffold_leaf`` itself (the model only combines) and refuses every call at a shorter one."""

    stop_strings = (HALVES, WIDE)

    def __init__(self, task: "ReduceTask", scaffold_leaf: int = 0):
        if scaffold_leaf < 0:
            raise ValueError(f"scaffold_leaf must be >= 0, got {scaffold_leaf}")
        self.task, self.scaffold_leaf = task, scaffold_leaf

    def reset(self, problem: Problem, depth: int) -> tuple[ReduceState, str]:
        state = ReduceState()
        if self.scaffold_leaf:
            if len(problem.meta["digits"]) > self.scaffold_leaf:
                return state, HALVES
            state.may_delegate = False
        return state, ""

    def subgoals(self, problem: Problem, state: ReduceState, turn_text: str) -> list[Problem] | None:
        if state.answering or turn_text not in (HALVES, WIDE):
            return None
        state.calls += 1
        if not state.may_delegate:
            return []
        parts = split_parts(problem.meta["digits"], turn_text)
        return [self.task.problem(f"{problem.id}.{i}", part) for i, part in enumerate(parts)]

    def refuse(self, problem: Problem, state: ReduceState) -> str:
        state.answering = True
        return REFUSED

    def step(self, problem: Problem, state: ReduceState, turn_text: str) -> tuple[str, bool]:
        return "", True  # a turn that is not a call ends the node

    def children_done(self, problem: Problem, state: ReduceState, answers: list[str | None]) -> tuple[str, bool]:
        state.answering = True
        return "".join(a if a is not None else MISSING for a in answers) + ">", False

    def answer(self, text: str) -> str | None:
        return parse_answer(text)


def parse_answer(text: str) -> str | None:
    m = ANSWER_RE.search(text)
    return m.group(1) if m else None


class ReduceTask(BaseTask):
    """Sum modulo 10 over lists of digits, with a delegation action; rollouts are delegation trees."""

    name = "reduce"
    alphabet = "0123456789" + HALVES + WIDE + "=" + MORE + ">" + REFUSED + MISSING

    def __init__(self, config: ReduceConfig | None = None, scaffold_leaf: int = 0):
        self.config = config or ReduceConfig()
        c = self.config
        if not c.train_lengths or not c.test_lengths:
            raise ConfigError("reduce task: train_lengths and test_lengths must not be empty")
        self.env = ReduceEnv(self, scaffold_leaf)
        self._split_cache: dict[str, list[Problem]] = {}

    def view(self, digits: str) -> str:
        w = self.config.window
        return (digits + "=") if len(digits) <= w else (digits[:w] + MORE + "=")

    def problem(self, pid: str, digits: str) -> Problem:
        return Problem(id=pid, prompt=self.view(digits), answer=reduce_answer(digits, self.config.modulus),
                       meta={"digits": digits, "length": len(digits)})

    def problems(self, split: str) -> list[Problem]:
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
        if split not in self._split_cache:
            c = self.config
            rng = random.Random(f"reduce-{split}-{c.seed}")
            if split == "train":
                lengths = [rng.choice(c.train_lengths) for _ in range(c.n_train)]
            else:
                lengths = [n for n in c.test_lengths for _ in range(c.n_test_per_length)]
            seen = set() if split == "train" else {p.meta["digits"] for p in self.problems("train")}
            seen_by_length = Counter(len(d) for d in seen)
            out = []
            for i, n in enumerate(lengths):
                digits = self.draw(rng, n)
                # redraw a training list while an unseen list of this length exists (short bit lists may all be seen)
                while split == "test" and digits in seen and c.modulus ** n > seen_by_length[n]:
                    digits = self.draw(rng, n)
                out.append(self.problem(f"{split}{i}", digits))
            self._split_cache[split] = out
        return self._split_cache[split]

    def combine_context(self, digits: str, call: str = HALVES) -> str:
        """The text of a node that delegated ``digits`` with ``call`` and got every child's answer right: what
        it sees before its combining turn (the base's combine check)."""
        m = self.config.modulus
        return self.view(digits) + call + "".join(reduce_answer(p, m) for p in split_parts(digits, call)) + ">"

    def draw(self, rng: random.Random, n: int) -> str:
        return "".join(rng.choice("0123456789"[:self.config.modulus]) for _ in range(n))

    def teacher_trajectory(self, rng: random.Random) -> tuple[str, list[tuple[str, bool]]]:
        """One node's trace from the teacher: (prompt, [(segment, written by the environment), ...])."""
        c = self.config
        if rng.random() < c.p_short or c.teacher_max_length <= c.window:
            n = rng.randint(1, min(c.window, c.teacher_max_length))
        else:
            n = rng.randint(c.window + 1, c.teacher_max_length)
        digits = self.draw(rng, n)
        m = c.modulus
        prompt, ans = self.view(digits), reduce_answer(digits, m)
        direct = n == 1 or not c.teacher_delegates or (n <= c.window and rng.random() < c.p_direct)
        if direct:
            return prompt, [(ans, False)]
        call = WIDE if rng.random() < c.p_wide else HALVES
        if rng.random() < c.p_refuse:
            return prompt, [(call, False), (REFUSED, True), (ans, False)]
        obs = self.combine_context(digits, call)[len(prompt) + 1:]
        return prompt, [(call, False), (obs, True), (ans, False)]

    def verify(self, problem: Problem, completion: str) -> float:
        return 1.0 if parse_answer(completion) == problem.answer else 0.0

    def rollout_trees(self, policy, problems: Sequence[Problem], n: int, sampling: RolloutSettings, seed: int = 0,
                      batch_size: int | None = None) -> TreeBatch:
        """``n`` delegation trees per problem (depth limit and node budget from the task config; one
        model turn holds at most ``sampling.turn_tokens`` tokens)."""
        extra = {"batch_size": batch_size} if batch_size is not None else {}
        return sample_trees(policy, self.env, problems, n=n, temperature=sampling.temperature, top_p=sampling.top_p,
                            turn_tokens=sampling.turn_tokens, max_depth=self.config.max_depth,
                            max_nodes=self.config.max_nodes, seed=seed, **extra)

    def rollout(self, policy, problems: Sequence[Problem], n: int, sampling: RolloutSettings, seed: int = 0,
                batch_size: int | None = None) -> Samples:
        """The root episodes of ``n`` trees per problem (their transcripts end with the tree's answer);
        ``tokens_processed`` counts every node."""
        trees = self.rollout_trees(policy, problems, n, sampling, seed, batch_size)
        roots = [trees.nodes[r] for r in trees.roots]
        return Samples(prompt_ids=[r.prompt_ids for r in roots], response_ids=[r.response_ids for r in roots],
                       finished=[r.finished for r in roots], group=[r.problem_index for r in roots],
                       texts=[r.text for r in roots], tokens_processed=trees.tokens_processed,
                       env_masks=[r.env_mask for r in roots], episodes=roots)

    def rollout_metrics(self, problems: Sequence[Problem], samples: Samples) -> dict[str, float]:
        roots = samples.episodes or []
        return {"root_delegation_rate": sum(r.delegations > 0 for r in roots) / max(1, len(roots))}
