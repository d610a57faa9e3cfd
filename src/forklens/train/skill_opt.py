"""Skill optimisation: train a scaffold's skill text, not the weights (arXiv 2605.23904, SkillOpt).

The skill is a list of lines (rules, worked examples, rule tokens) given to a frozen model through a
:class:`~forklens.policy.scaffold.Scaffold`. Each step:

1. a *proposer* looks at the current skill (and, through its closure, at rollouts and their failures)
   and returns candidate edits, best first: add a line, delete a line, replace a line;
2. at most L of them are applied, L being the **textual learning rate**, cosine-decayed from
   ``edits_start`` to ``edits_end`` over the steps (the paper's default 4 -> 2);
3. the **gate**: the edited skill is kept only if its held-out selection score is strictly higher
   than the current one; rejected edits are remembered and handed back to the proposer as negative
   feedback, so it can avoid them.

Controls the paper reports, as settings: ``gate=False`` (accept every edit) and
``edits_start=edits_end=None`` (unbounded edits: every proposal applied). The random-skill control is
the caller's (:func:`random_skill`). Everything here is pure Python around two callables, so the
same loop runs on an organism executor or on any HF model with an evaluation function.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

from forklens.errors import ConfigError

__all__ = ["Edit", "SkillOptConfig", "SkillOptResult", "apply_edits", "edit_budget", "optimize_skill",
           "random_skill"]


@dataclass(frozen=True)
class Edit:
    """One change to a skill: ``add`` inserts ``text`` before line ``index`` (``index == len`` appends),
    ``delete`` removes line ``index``, ``replace`` sets line ``index`` to ``text``."""

    op: Literal["add", "delete", "replace"]
    index: int
    text: str = ""

    def __post_init__(self) -> None:
        if self.op not in ("add", "delete", "replace"):
            raise ConfigError(f"an edit's op is add, delete or replace, got {self.op!r}")
        if self.index < 0:
            raise ConfigError(f"an edit's index must be >= 0, got {self.index}")


def apply_edits(lines: Sequence[str], edits: Sequence[Edit]) -> list[str]:
    """The skill after ``edits``, applied in order; each index refers to the skill as the earlier edits
    left it. An index out of range raises ConfigError naming the edit."""
    out = list(lines)
    for e in edits:
        limit = len(out) if e.op == "add" else len(out) - 1
        if e.index > limit:
            raise ConfigError(f"edit {e} is out of range for a skill of {len(out)} line(s)")
        if e.op == "add":
            out.insert(e.index, e.text)
        elif e.op == "delete":
            del out[e.index]
        else:
            out[e.index] = e.text
    return out


def edit_budget(step: int, steps: int, start: int | None, end: int | None) -> int | None:
    """The textual learning rate at ``step`` (0-based): ``start`` cosine-decayed to ``end`` over
    ``steps`` steps and rounded; ``None`` (unbounded) when ``start`` is None."""
    if start is None:
        return None
    end = start if end is None else end
    if steps <= 1:
        return start
    frac = step / (steps - 1)
    return int(round(end + (start - end) * 0.5 * (1 + math.cos(math.pi * frac))))


@dataclass
class SkillOptConfig:
    steps: int = 8
    edits_start: int | None = 4  # None: unbounded (every proposed edit is applied)
    edits_end: int | None = 2
    gate: bool = True  # False: accept every edited skill (the control without the selection gate)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"skill optimisation needs steps >= 1, got {self.steps}")
        for name in ("edits_start", "edits_end"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1 (or None for unbounded), got {value}")


@dataclass
class SkillOptResult:
    skill: list[str]  # the final skill (the best gated one when gate=True)
    score: float  # its selection score
    history: list[dict] = field(default_factory=list)  # one record per step
    evaluations: int = 0  # selection-score evaluations, the optimiser's main cost

    @property
    def accepted(self) -> int:
        return sum(1 for h in self.history if h["accepted"])


Proposer = Callable[[list[str], list[Edit], random.Random], Sequence[Edit]]


def optimize_skill(initial: Sequence[str], propose: Proposer, select_score: Callable[[list[str]], float],
                   config: SkillOptConfig | None = None, seed: int = 0) -> SkillOptResult:
    """Optimise a skill by bounded, gated edits (see the module docstring).

    ``propose(skill, rejected_edits, rng)`` returns candidate edits, best first (relative to ``skill``;
    applied in order). ``select_score(skill)`` is the held-out selection score (higher is better)."""
    cfg = config or SkillOptConfig()
    rng = random.Random(seed)
    skill = list(initial)
    score = float(select_score(skill))
    result = SkillOptResult(skill=skill, score=score, evaluations=1)
    rejected: list[Edit] = []
    for step in range(cfg.steps):
        proposed = list(propose(list(skill), list(rejected), rng))
        budget = edit_budget(step, cfg.steps, cfg.edits_start, cfg.edits_end)
        applied = proposed if budget is None else proposed[:budget]
        record = {"step": step, "budget": budget, "proposed": len(proposed), "applied": len(applied),
                  "accepted": False, "score_before": score}
        if applied:
            candidate = apply_edits(skill, applied)
            cand_score = float(select_score(candidate))
            result.evaluations += 1
            record["candidate_score"] = cand_score
            if not cfg.gate or cand_score > score:
                skill, score = candidate, cand_score
                record["accepted"] = True
            else:
                rejected.extend(applied)
        record["score"] = score
        record["skill_lines"] = len(skill)
        result.history.append(record)
    result.skill, result.score = skill, score
    return result


def random_skill(vocabulary: Sequence[str], lines: int, rng: random.Random) -> list[str]:
    """The random-skill control: ``lines`` lines drawn uniformly from ``vocabulary``."""
    if not vocabulary:
        raise ConfigError("random_skill needs a non-empty vocabulary of lines")
    return [rng.choice(list(vocabulary)) for _ in range(lines)]
