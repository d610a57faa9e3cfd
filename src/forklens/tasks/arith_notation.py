"""`arith` with a second notation: the tool's negative control (docs/organisms.md, family `negctl`).

The problems, prompts and noisy teacher are exactly :mod:`forklens.tasks.arith`'s, but the tokenizer's
alphabet also holds ten letters ``a``..``j`` standing for the digits 0..9. The base organism is
pretrained on the teacher's digit traces, so it never emits a letter; a tuned model SFT'd on gold
traces written in letters (``expert_notation = "letters"``) then has a behaviour the base does not
contain, and every digit it writes is a token far outside the base top-5. The verifier reads the
answer in either notation (letters are mapped back to digits first), so accuracy is comparable.
"""

from __future__ import annotations

from forklens.errors import ConfigError
from forklens.tasks.arith import ArithConfig, ArithTask, gold_trace
from forklens.tasks.base import Problem

LETTERS = "abcdefghij"  # LETTERS[d] writes the digit d
NOTATIONS = ("digits", "letters")
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

    def __init__(self, config: ArithConfig | None = None, expert_notation: str = "digits"):
        if expert_notation not in NOTATIONS:
            raise ConfigError(f"expert notation {expert_notation!r}; expected one of {', '.join(NOTATIONS)}")
        super().__init__(config)
        self.expert_notation = expert_notation

    def expert_response(self, problem: Problem) -> str:
        """The gold trace in the expert notation (letters: every digit written as its letter)."""
        trace = gold_trace(problem.meta["a"], problem.meta["b"], self.config.digits)
        return to_letters(trace) if self.expert_notation == "letters" else trace

    def verify(self, problem: Problem, completion: str) -> float:
        return super().verify(problem, to_digits(completion))
