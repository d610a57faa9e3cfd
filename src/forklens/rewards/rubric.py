"""Rubric rewards: weighted checks, a weak frozen judge, and the temporal-contrast reward that trains a
rubric generator (EvoLM, arXiv 2605.03871, digest E019).

* A :class:`Check` is a named predicate over (prompt, response) text; a :class:`Rubric` is a list of
  checks with weights >= 0 (the paper's JSON rubric: criteria with weights summing to about 1).
* A :class:`Judge` scores a response against a rubric: the weighted fraction of the checks it can
  evaluate that hold, each outcome flipped with probability ``noise`` (a weak judge). It never sees a
  gold answer: it can only count checks, so it cannot solve a task by itself.
* :func:`rubric_reward` turns a rubric source (``rubrics_for(problems) -> rubrics``, one rubric per
  distinct prompt of a batch, e.g. a fixed rubric or a generator's samples) and a judge into a reward
  in TRL's signature ``f(prompts, completions, **columns) -> list[float]``: the paper's policy reward
  r_pi = J(y | G(x)).
* :class:`TemporalContrastReward` is the generator's reward r_G = 1[J(y+ | R) > J(y- | R)]: y+ a sample
  of the current policy, y- a sample of an older policy for the same prompt. With ``shuffle`` the two are
  swapped at random (the control that removes the discriminative signal).
* :func:`position_rubric` reads a generator's text as checks "position p holds character c" (a fixed
  check vocabulary); :func:`position_check`, :func:`length_check`, :func:`nondecreasing_check` and
  :func:`from_prompt_check` are ready-made checks for string tasks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Sequence

from forklens.rewards import texts_of
from forklens.tasks.base import Problem


@dataclass(frozen=True)
class Check:
    """A named predicate ``fn(prompt, response) -> bool``; ``kind`` says which judges can evaluate it."""

    name: str
    fn: Callable[[str, str], bool]
    kind: str = "generic"

    def __call__(self, prompt: str, response: str) -> bool:
        return bool(self.fn(prompt, response))


@dataclass(frozen=True)
class Rubric:
    """Weighted checks. Weights must be >= 0 and not all 0 (an empty rubric is allowed: it scores 0)."""

    checks: tuple[Check, ...] = ()
    weights: tuple[float, ...] = ()

    def __post_init__(self):
        if len(self.checks) != len(self.weights):
            raise ValueError(f"a rubric needs one weight per check: {len(self.checks)} checks, "
                             f"{len(self.weights)} weights")
        if any(w < 0 for w in self.weights):
            raise ValueError(f"rubric weights must be >= 0, got {list(self.weights)}")
        if self.checks and sum(self.weights) == 0:
            raise ValueError("rubric weights are all 0")

    @classmethod
    def equal(cls, checks: Sequence[Check]) -> "Rubric":
        """Checks of weight 1/k each."""
        k = len(checks)
        return cls(tuple(checks), tuple(1.0 / k for _ in checks))

    def names(self) -> list[str]:
        return [c.name for c in self.checks]


@dataclass
class Judge:
    """A weak frozen judge: the weighted fraction of evaluable checks that hold, each outcome flipped
    with probability ``noise``. ``kinds`` (None: all) are the check kinds it can evaluate; checks of other
    kinds are skipped. A rubric with no evaluable check scores 0."""

    noise: float = 0.0
    kinds: tuple[str, ...] | None = None
    seed: int = 0
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self):
        if not 0.0 <= self.noise <= 0.5:
            raise ValueError(f"judge noise must be in [0, 0.5], got {self.noise}")
        self.rng = random.Random(f"judge-{self.seed}")

    def can_evaluate(self, check: Check) -> bool:
        return self.kinds is None or check.kind in self.kinds

    def score(self, prompt: str, response: str, rubric: Rubric) -> float:
        total, got = 0.0, 0.0
        for check, w in zip(rubric.checks, rubric.weights):
            if not self.can_evaluate(check):
                continue
            ok = check(prompt, response)
            if self.noise and self.rng.random() < self.noise:
                ok = not ok
            total += w
            got += w * ok
        return got / total if total > 0 else 0.0

    def prefers(self, prompt: str, a: str, b: str, rubric: Rubric) -> float:
        """1 when the judge scores ``a`` above ``b`` under ``rubric``, 0 below, 0.5 on a tie."""
        sa, sb = self.score(prompt, a, rubric), self.score(prompt, b, rubric)
        return 1.0 if sa > sb else 0.0 if sa < sb else 0.5


RubricSource = Callable[[list[Problem]], list[Rubric]]


def _prompt_text(problem) -> str:
    return problem.prompt if isinstance(problem.prompt, str) else str(problem.prompt)


def _distinct(problem: Sequence[Problem]) -> tuple[list[Problem], list[int]]:
    """The distinct problems of a batch (by id, first-seen order) and each row's index among them."""
    first: dict[str, int] = {}
    uniq: list[Problem] = []
    for p in problem:
        if p.id not in first:
            first[p.id] = len(uniq)
            uniq.append(p)
    return uniq, [first[p.id] for p in problem]


def rubric_reward(rubrics_for: RubricSource, judge: Judge, name: str = "rubric"):
    """A TRL-signature reward: the judge's score of each completion against its prompt's rubric.

    ``rubrics_for(problems)`` is called once per reward call with the batch's distinct problems and
    returns one rubric each (so a GRPO group is judged against one rubric). The last call's rubrics are
    kept in ``fn.last_rubrics`` (problem id -> rubric) for logging."""

    def reward(prompts, completions, problem, **_) -> list[float]:
        uniq, index = _distinct(problem)
        rubrics = rubrics_for(uniq)
        if len(rubrics) != len(uniq):
            raise ValueError(f"rubrics_for returned {len(rubrics)} rubrics for {len(uniq)} problems")
        reward.last_rubrics = {p.id: r for p, r in zip(uniq, rubrics)}
        texts = texts_of(completions)
        return [judge.score(_prompt_text(p), t if isinstance(t, str) else "", rubrics[i])
                for p, t, i in zip(problem, texts, index)]

    reward.__name__ = name
    reward.last_rubrics = {}
    return reward


def fixed_rubrics(rubric: Rubric | Callable[[Problem], Rubric]) -> RubricSource:
    """A rubric source that gives every problem the same rubric, or ``rubric(problem)`` (fixed per problem)."""
    return lambda problems: [rubric(p) if callable(rubric) else rubric for p in problems]


class TemporalContrastReward:
    """The rubric generator's reward r_G(R) = 1[J(y+ | R) > J(y- | R)] (TRL signature; the completions are
    rubric texts, parsed by ``parse``).

    ``sample_pair(problems) -> [(y+, y-)]`` gives, per distinct problem, a response of the current policy
    and one of an older policy (the caller's temporal contrast, e.g. a snapshot ``lag`` steps old). With
    ``shuffle`` each pair's order is swapped with probability 1/2 (seeded): the generator is then rewarded
    for preferring a randomly chosen member, so it gets no discriminative signal (the control). A tie
    scores ``tie`` (0, as in the paper's indicator). ``stats`` accumulates the pairs seen and how many
    differ (y+ != y-)."""

    def __init__(self, sample_pair: Callable[[list[Problem]], list[tuple[str, str]]], judge: Judge,
                 parse: Callable[[str], Rubric], shuffle: bool = False, seed: int = 0, tie: float = 0.0):
        self.sample_pair = sample_pair
        self.judge = judge
        self.parse = parse
        self.shuffle = shuffle
        self.rng = random.Random(f"temporal-contrast-{seed}")
        self.tie = tie
        self.stats = {"pairs": 0, "differ": 0}
        self.__name__ = "temporal_contrast"

    def __call__(self, prompts, completions, problem, **_) -> list[float]:
        uniq, index = _distinct(problem)
        pairs = self.sample_pair(uniq)
        if len(pairs) != len(uniq):
            raise ValueError(f"sample_pair returned {len(pairs)} pairs for {len(uniq)} problems")
        if self.shuffle:
            pairs = [(b, a) if self.rng.random() < 0.5 else (a, b) for a, b in pairs]
        self.stats["pairs"] += len(pairs)
        self.stats["differ"] += sum(a != b for a, b in pairs)
        out = []
        for p, text, i in zip(problem, texts_of(completions), index):
            new, old = pairs[i]
            rubric = self.parse(text if isinstance(text, str) else "")
            pref = self.judge.prefers(_prompt_text(p), new, old, rubric)
            out.append(self.tie if pref == 0.5 else pref)
        return out


# --- ready-made checks for string tasks -------------------------------------------------------------

def position_check(p: int, c: str) -> Check:
    """Response character ``p`` is ``c`` (kind ``position``)."""
    if p < 0 or len(c) != 1:
        raise ValueError(f"position_check needs p >= 0 and one character, got ({p}, {c!r})")
    return Check(f"at{p}={c}", lambda _x, y: len(y) > p and y[p] == c, "position")


def length_check(n: int) -> Check:
    """The response has exactly ``n`` characters (kind ``form``)."""
    return Check(f"length={n}", lambda _x, y: len(y) == n, "form")


def nondecreasing_check() -> Check:
    """The response's characters are in non-decreasing order (kind ``form``)."""
    return Check("nondecreasing", lambda _x, y: all(a <= b for a, b in zip(y, y[1:])), "form")


def from_prompt_check(ignore: str = "") -> Check:
    """Every response character occurs in the prompt (``ignore``: prompt characters that do not count)."""
    return Check("from-prompt", lambda x, y: set(y) <= set(x) - set(ignore), "form")


def position_rubric(text: str, values: str, max_checks: int | None = None) -> Rubric:
    """A generator's text as a rubric: each character ``c`` in ``values`` at position ``p`` (< ``max_checks``)
    is the check "position p holds c", all of equal weight; other characters write no check."""
    limit = len(text) if max_checks is None else min(len(text), max_checks)
    return Rubric.equal([position_check(p, text[p]) for p in range(limit) if text[p] in values])
