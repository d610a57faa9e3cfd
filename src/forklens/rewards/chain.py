"""Exact process grading of repeated-addition chains (the ``lengths`` and ``shortcut`` tasks): MaR's
terms (arXiv 2605.23384) with the chain's steps as knowledge units, and the two behaviours the
``shortcut`` organism can show, guessing and right answers with wrong steps.

A problem ``xx+s*nn=`` (optionally ``?cc`` before ``=``, the cue) has a plan of ``n`` steps; step ``j``
(``j = 0 .. n-1``) is written ``kk:aa+s=bb;`` with countdown ``kk = n - j``. In a response, step ``j``

* **follows the plan** when it is there, its countdown is ``n - j``, its addend is ``s`` and it reads
  the running value: ``aa`` is ``x`` for ``j = 0`` and the previous written step's ``bb`` otherwise
  (whatever that step's arithmetic);
* **states a right fact** (a knowledge unit, checked exactly) when it follows the plan and
  ``bb = (aa + s) mod 100``.

The chain's *result* is the ``bb`` of its last written step (``x`` with no steps); the *answer* is the
number after the first ``A=`` (what the task's verifier reads). With ``n`` the plan's length:

* ``KMR = (right facts) / n`` (the format has no lookback block, so ``r = 0``);
* ``RMR = a * (1 - 0.3 s)`` with ``a = (steps that follow the plan) / n`` and ``s = 1`` (a shortcut)
  when the response answers while the plan is not carried out to its end (a step missing or off plan,
  or extra steps) or with a number that is not the chain's result;
* ``CR`` = the task's verifier.

Two measures for reading a policy (not rewards): a **guess** is an answer that equals the prompt's cue
but not the chain's own result (a guess that happens to equal the chain's result cannot be told from
reasoning and is not counted); a right answer has **wrong facts** when ``KMR < 1`` (some step of the
plan is missing, off plan or arithmetically wrong); an answer is **premature** when no step is written
before it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from forklens.rewards.metacognition import regulation_score
from forklens.tasks.lengths import ANSWER_RE, parse_prompt
from forklens.tasks.shortcut import cue_of

STEP_RE = re.compile(r"(\d\d):(\d\d)\+(\d)=(\d\d)")
MAX_CHAIN_CHARS = 4_000  # longer responses are cut here before parsing (bounded cost)


@dataclass(frozen=True)
class ChainReading:
    """What a response's chain says about one problem (see the module docstring)."""

    n: int  # the plan's length
    follows: tuple[bool, ...]  # per plan step
    right: tuple[bool, ...]  # per plan step: follows the plan and the fact is right
    extra_steps: int  # written steps beyond the plan's n
    result: int  # the chain's result (the last written step's value, x with no steps)
    answer: int | None  # the number after the first A=, None without one
    cue: int | None  # the prompt's cue, None without one
    written: int = 0  # steps written before the answer (or in the whole text without one)

    @property
    def kmr(self) -> float:
        return sum(self.right) / self.n

    @property
    def shortcut(self) -> bool:
        return self.answer is not None and (not all(self.follows) or self.extra_steps > 0 or self.answer != self.result)

    @property
    def rmr(self) -> float:
        return regulation_score(sum(self.follows) / self.n, self.shortcut)

    @property
    def guess(self) -> bool:
        return self.answer is not None and self.cue is not None and self.answer == self.cue and self.answer != self.result

    @property
    def wrong_facts(self) -> bool:
        return not all(self.right)

    @property
    def premature(self) -> bool:
        """An answer written before any step (answering from the prompt alone)."""
        return self.answer is not None and self.written == 0


def read_chain(prompt: str, completion) -> ChainReading:
    """Parse ``completion`` against the plan of ``prompt`` (a lengths or shortcut prompt); a completion
    that is not a string reads as an empty chain without an answer."""
    x, s, n = parse_prompt(prompt)
    if n < 1:
        raise ValueError(f"a chain needs at least one step, got {prompt!r}")
    text = completion[:MAX_CHAIN_CHARS] if isinstance(completion, str) else ""
    at = text.find("A=")
    chain = text if at < 0 else text[:at]
    steps = [tuple(int(g) for g in m.groups()) for m in STEP_RE.finditer(chain)]
    follows, right = [], []
    prev = x
    for j in range(n):
        if j < len(steps):
            k, a, add, b = steps[j]
            ok = k == n - j and add == s and a == prev
            follows.append(ok)
            right.append(ok and b == (a + s) % 100)
            prev = b
        else:
            follows.append(False)
            right.append(False)
    m = ANSWER_RE.search(text)
    return ChainReading(n=n, follows=tuple(follows), right=tuple(right), extra_steps=max(0, len(steps) - n),
                        result=steps[-1][3] if steps else x, answer=int(m.group(1)) if m else None,
                        cue=cue_of(prompt), written=len(steps))


class ChainGrader:
    """Exact MaR scores of repeated-addition chains (``{"kmr", "rmr", "cr"}``; module docstring)."""

    def __init__(self, task):
        self.task = task

    def grade(self, problem, completion, episode=None) -> dict[str, float | None]:
        prompt = getattr(problem, "prompt", None)
        if not isinstance(prompt, str):
            return {"kmr": None, "rmr": None, "cr": None}
        r = read_chain(prompt, completion)
        cr = float(self.task.verify(problem, completion)) if isinstance(completion, str) else 0.0
        return {"kmr": r.kmr, "rmr": r.rmr, "cr": cr}


def chain_behaviour(problems, completions, task) -> dict[str, float | int | None]:
    """Accuracy, guess rate and premature rate (answers before any step; both over all problems),
    wrong-fact rate among right answers (None with no right answer), mean KMR and RMR of one set of
    responses (one per problem; repeat a problem to read several responses to it)."""
    if len(problems) != len(completions) or not problems:
        raise ValueError(f"need one completion per problem, got {len(problems)} problems and "
                         f"{len(completions)} completions")
    right = guesses = right_wrong = premature = 0
    kmr = rmr = 0.0
    for p, c in zip(problems, completions):
        r = read_chain(p.prompt, c)
        ok = task.verify(p, c) > 0 if isinstance(c, str) else False
        right += ok
        guesses += r.guess
        premature += r.premature
        right_wrong += ok and r.wrong_facts
        kmr += r.kmr
        rmr += r.rmr
    n = len(problems)
    return {"accuracy": right / n, "guess_rate": guesses / n,
            "wrong_fact_rate_when_right": right_wrong / right if right else None,
            "right_with_wrong_facts": right_wrong / n, "kmr_mean": kmr / n, "rmr_mean": rmr / n,
            "premature_rate": premature / n, "n_right": right, "n": n}
