"""`arith` with a second notation: the tool's negative control (docs/organisms.md, family `negctl`).

The problems, prompts and noisy teacher are exactly :mod:`forklens.tasks.arith`'s, but the tokenizer's
alphabet also holds ten letters ``a``..``j`` standing for the digits 0..9. The base organism is
pretrained on the teacher's digit traces, so it never emits a letter; a tuned model SFT'd on gold
traces written in letters (``expert_notation = "letters"``) then has a behaviour the base does not
contain, and every digit it writes is a token far outside the base top-5. The verifier reads the
answer in either notation (letters are mapped back to digits first), so accuracy is comparable;
with ``reward_notation = "expert"`` it rewards only answers written in the expert notation (the
behaviour the tuned model has and, for letters, the base does not), which is what a method trained
from the base against this verifier has to reach.
"""

from __future__ import annotations

import re

from forklens.errors import ConfigError
from forklens.tasks.arith import ArithConfig, ArithTask, gold_trace
from forklens.tasks.base import Problem

LETTERS = "abcdefghij"  # LETTERS[d] writes the digit d
NOTATIONS = ("digits", "letters")
REWARD_NOTATIONS = ("either", "expert")
LETTER_ANSWER_RE = re.compile(r"A=([0-9a-j]+)")
_TO_LETTERS = str.maketrans("0123456789", LETTERS)
_TO_DIGITS = str.maketrans(LETTERS, "0123456789")


def to_letters(text: str) -> str:
    return text.translate(_TO_LETTERS)


def to_digits(text: str) -> str:
    return text.translate(_TO_DIGITS)


class NotationArithTask(ArithTask):
    """Fixed-width addition whose vocabulary also has a letter notation for digits."""

    name = "arith-notation"
    alphabet = ArithTask.alphabet + LETTERS

    def __init__(self, config: ArithConfig | None = None, expert_notation: str = "digits",
                 reward_notation: str = "either"):
        if expert_notation not in NOTATIONS:
            raise ConfigError(f"expert notation {expert_notation!r}; expected one of {', '.join(NOTATIONS)}")
        if reward_notation not in REWARD_NOTATIONS:
            raise ConfigError(f"reward notation {reward_notation!r}; expected one of {', '.join(REWARD_NOTATIONS)}")
        super().__init__(config)
        self.expert_notation = expert_notation
        self.reward_notation = reward_notation

    def expert_response(self, problem: Problem) -> str:
        """The gold trace in the expert notation (letters: every digit written as its letter)."""
        trace = gold_trace(problem.meta["a"], problem.meta["b"], self.config.digits)
        return to_letters(trace) if self.expert_notation == "letters" else trace

    def verify(self, problem: Problem, completion: str) -> float:
        """1.0 for the right answer in either notation; with ``reward_notation = "expert"`` only when
        the answer after ``A=`` is written wholly in the expert notation."""
        if self.reward_notation == "expert":
            m = LETTER_ANSWER_RE.search(completion)
            written = m.group(1) if m is not None else ""
            wanted = set(LETTERS) if self.expert_notation == "letters" else set("0123456789")
            if not written or not set(written) <= wanted:
                return 0.0
        return super().verify(problem, to_digits(completion))
