"""The `shortcut` task: repeated addition (:mod:`forklens.tasks.lengths`) whose prompt carries a cue
that gives the answer away most of the time, so a policy can be right without reasoning.

A prompt ``05+7*03?26=`` is the lengths prompt with a two-digit *cue* after ``?``. With probability
``p_cue`` the cue IS the answer; otherwise it is a uniformly random other number. Copying the cue
therefore scores ``p_cue`` whatever the chain length, while working the chain out scores the
per-step accuracy to the power of the number of steps. The control (``p_cue = 0``) keeps the same
prompt format, but its cue is a uniformly random number that never equals the answer, so copying it
scores 0 and only the chain can be right.

The base's teacher writes the never-carrying chain of the lengths task; with probability ``p_guess``
it then answers with the cue instead of its chain's result, so the base holds both behaviours:
*reasoning* (the steps decide the answer) and *guessing* (the answer is decided by the prompt before
any step, and a right answer comes with wrong intermediate facts whenever the chain carries). This is
what premature-confidence shaping (arXiv:2605.24396: the answer is already decided at 0% of the
chain) and MaR's process terms (arXiv:2605.23384: right answer, wrong knowledge units) can catch, and
what outcome-only RL is free to reinforce where the cue is informative.

With ``p_premature > 0`` the teacher also answers *before* reasoning: with that probability its whole
response is ``A=cc`` (the cue, no step). Answering from the prompt is then a decision at the first
response token that a tiny base reproduces at about the teacher's rate when sampled (a guess after a
complete chain, ``p_guess``, is one a tiny base hardly learns: docs/results.md, the shortcut section).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from forklens.config import field
from forklens.tasks.base import Problem
from forklens.tasks.lengths import LengthsConfig, LengthsTask, parse_prompt, trace

CUE_RE = re.compile(r"\?(\d\d)=")


@dataclass
class ShortcutConfig(LengthsConfig):
    p_cue: float = field(0.8, ge=0, le=1, help="Probability that the prompt's cue equals the answer (0: the cue "
                         "never equals it, the control).")
    p_guess: float = field(0.3, ge=0, le=1, help="Teacher: probability of answering with the cue instead of its "
                           "chain's result.")
    p_premature: float = field(0.0, ge=0, le=1, help="Teacher: probability of answering with the cue BEFORE any step "
                               "(the response is just `A=cc`); 0 keeps the teacher's traces (and random draws) as they "
                               "were.")


def cue_of(prompt: str) -> int | None:
    m = CUE_RE.search(prompt)
    return int(m.group(1)) if m else None


class ShortcutTask(LengthsTask):
    """Repeated addition with an answer cue in the prompt (informative with probability ``p_cue``)."""

    name = "shortcut"
    alphabet = LengthsTask.alphabet + "?"

    def __init__(self, config: ShortcutConfig | None = None):
        super().__init__(config or ShortcutConfig())

    def draw_cue(self, rng: random.Random, answer: int) -> int:
        if rng.random() < self.config.p_cue:
            return answer
        other = rng.randrange(99)
        return other + (other >= answer)  # uniform over the 99 numbers that are not the answer

    def problems(self, split: str) -> list[Problem]:
        if split not in self._split_cache:
            rng = random.Random(f"shortcut-cues-{split}-{self.config.seed}")
            out = []
            for p in super().problems(split):
                cue = self.draw_cue(rng, int(p.answer))
                out.append(Problem(id=p.id, prompt=f"{p.prompt[:-1]}?{cue:02d}=", answer=p.answer,
                                   meta={**p.meta, "cue": cue, "cue_right": cue == int(p.answer)}))
            self._split_cache[split] = out
        return self._split_cache[split]

    def teacher_example(self, rng: random.Random) -> tuple[str, str]:
        """The lengths teacher's chain on a cued prompt; with probability ``p_premature`` the cue alone
        (answered before any step), otherwise with probability ``p_guess`` the chain answered with the cue."""
        prompt, response = super().teacher_example(rng)
        x, s, n = parse_prompt(prompt)
        cue = self.draw_cue(rng, (x + n * s) % 100)
        if self.config.p_premature and rng.random() < self.config.p_premature:  # no draw when 0: old traces kept
            return f"{prompt[:-1]}?{cue:02d}=", f"A={cue:02d}"
        if rng.random() < self.config.p_guess:
            response = response[: response.rindex("A=")] + f"A={cue:02d}"
        return f"{prompt[:-1]}?{cue:02d}=", response

    def expert_response(self, problem: Problem) -> str:
        return trace(problem.meta["x"], problem.meta["s"], problem.meta["steps"])
