"""The one answer checker: is a completion's final answer the gold answer?

Used wherever an answer is graded without a task-specific verifier (``forklens diff``, ``intervene``,
``probe --data``, ``train fork-contrast --prompts``, :func:`forklens.rewards.answer_reward`) and by the
arith task's verifier, so every command judges the same text the same way.

Rules (no network, no optional packages):

* **The final answer of a completion** is the content of its last ``\\boxed{...}`` when it has one;
  otherwise, for a numeric gold answer, its last number, and for any other gold answer its last
  non-empty line.
* **Numbers** compare exactly as rationals after normalisation: ``1,024`` = ``1024``, ``0.5`` =
  ``1/2`` = ``\\frac{1}{2}`` = ``\\dfrac12``, ``-0`` = ``0``, ``42.0`` = ``42``; ``$``, ``\\!``,
  ``\\left``/``\\right`` and ``\\text{...}`` wrappers are dropped.
* **Text** compares case-insensitively with whitespace collapsed and a trailing period dropped; the
  final line matches when it *ends with* the gold answer at a word boundary, so "The capital is
  Paris." answers "Paris" while "NotParis" and "112" (for "12") do not.
"""

from __future__ import annotations

import re
from decimal import Decimal
from fractions import Fraction

_NUMBER = re.compile(r"[-+]?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+(?:\.\d+)?)?")
_FRAC = re.compile(r"\\[dt]?frac\s*(?:\{([^{}]*)\}|(\d))\s*(?:\{([^{}]*)\}|(\d))")
_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
_DROP = re.compile(r"\\left|\\right|\\[!,;: ]|\$|\\%|%")


def boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces balanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j]
    return None


def _latex_to_plain(s: str) -> str:
    s = _TEXT.sub(r"\1", s)
    s = _FRAC.sub(lambda m: f"({m.group(1) or m.group(2)})/({m.group(3) or m.group(4)})", s)
    s = _DROP.sub("", s)
    return re.sub(r"\(\s*(-?[\d.,]+)\s*\)/\(\s*(-?[\d.,]+)\s*\)", r"\1/\2", s)


def _format(value: Fraction) -> str:
    """An integer as itself, a terminating decimal in decimal notation, anything else as ``p/q``."""
    if value.denominator == 1:
        return str(value.numerator)
    d = value.denominator
    for f in (2, 5):
        while d % f == 0:
            d //= f
    if d != 1:
        return f"{value.numerator}/{value.denominator}"
    return format(Decimal(value.numerator) / Decimal(value.denominator), "f").rstrip("0")


def to_number(text: str) -> Fraction | None:
    """``text`` as an exact rational when it is one number (``1,024``, ``-1.5``, ``1/2``, ``\\frac{1}{2}``)."""
    s = _latex_to_plain(str(text)).strip().rstrip(".").strip().replace(" ", "")
    if not _NUMBER.fullmatch(s):
        return None
    num, _, den = s.replace(",", "").partition("/")
    try:
        value = Fraction(num)
        return value / Fraction(den) if den else value
    except (ValueError, ZeroDivisionError):
        return None


def normalise(text: str) -> str:
    """Canonical form of an answer: a number as an integer, a terminating decimal or ``p/q`` in lowest
    terms (``$1,000.50`` -> ``1000.5``, ``\\frac{2}{6}`` -> ``1/3``, ``-0`` -> ``0``); text lower-cased, LaTeX wrappers dropped, whitespace collapsed, no
    trailing period."""
    value = to_number(text)
    if value is not None:
        return _format(value)
    s = " ".join(_latex_to_plain(str(text)).split()).lower()
    return s.rstrip(".").strip()


def final_answer(completion: str, numeric: bool) -> str | None:
    """The part of ``completion`` that states its answer (see the module docstring)."""
    box = boxed(completion)
    if box is not None:
        return box
    if numeric:
        nums = _NUMBER.findall(_latex_to_plain(completion))
        return nums[-1] if nums else None
    lines = [ln for ln in completion.splitlines() if ln.strip()]
    return lines[-1] if lines else None


def is_correct(answer: str, completion: str) -> bool:
    """True when the final answer of ``completion`` is ``answer`` (see the module docstring)."""
    gold = to_number(answer)
    got = final_answer(completion, numeric=gold is not None)
    if got is None:
        return False
    if gold is not None:
        return to_number(got) == gold
    want, have = normalise(answer), normalise(got)
    if not want:
        return False
    if not have.endswith(want):
        return False
    before = have[: len(have) - len(want)]
    return not before or not before[-1].isalnum()


def equivalent(a: str, b: str) -> bool:
    """Two stated answers are the same (numbers exactly as rationals, text by :func:`normalise`)."""
    x, y = to_number(a), to_number(b)
    if x is not None or y is not None:
        return x == y
    return normalise(a) == normalise(b)
