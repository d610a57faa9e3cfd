"""The one answer checker (forklens.tasks.answers) and the commands that grade with it."""

import pytest

from forklens.analysis.diff import default_verifier
from forklens.rewards import answer_reward
from forklens.rewards.confidence import MarkerForcing
from forklens.tasks.answers import boxed, equivalent, is_correct, normalise, to_number
from forklens.tasks.arith import ArithTask
from forklens.tasks.base import Problem


@pytest.mark.parametrize("answer, completion, ok", [
    ("1/2", r"so \boxed{\frac{1}{2}}", True),
    ("0.5", r"\boxed{\frac{1}{2}}", True),
    (r"\frac{1}{2}", "it is 0.5", True),
    ("0.5", r"it is \dfrac12", True),
    ("1/3", "0.333", False),
    ("0.5", r"\boxed{\frac{1}{3}} then 0.5", False),  # the boxed answer wins over a later number
    ("Paris", "The capital is Paris.", True),
    ("Paris", "the capital is paris", True),
    ("Paris", "The capital is NotParis", False),
    ("Paris", r"\boxed{\text{Paris}}", True),
    ("12", "so 112", False),
    ("1024", "the answer is 1,024.", True),
    ("42", "the answer is 42.0\n", True),
    ("-1.5", "x = -1.5", True),
    ("5", "x=5 then y=6", False),
    ("7", "", False),
])
def test_is_correct(answer, completion, ok):
    assert is_correct(answer, completion) is ok


def test_normal_forms():
    assert to_number(r"\frac{2}{6}") == to_number("1/3") and to_number("Paris") is None
    assert normalise(r"\frac{2}{6}") == "1/3" and normalise("$1,000.50") == "1000.5" and normalise("-0") == "0"
    assert normalise("  The  Capital. ") == "the capital"
    assert boxed(r"a \boxed{x^{2}} b \boxed{\frac{1}{2}}") == r"\frac{1}{2}" and boxed("none") is None
    assert equivalent("0832", "832") and not equivalent("832", "833") and equivalent("Paris.", "paris")


def test_every_grader_judges_the_same_text_the_same_way():
    """diff's default verifier, the answer reward, the probe's forced-answer check and the arith verifier
    all agree (they used to disagree on "The capital is Paris." and on boxed fractions)."""
    cases = [("Paris", "The capital is Paris."), ("0.5", r"\boxed{\frac{1}{2}}"), ("12", "so 112")]
    for answer, text in cases:
        expected = is_correct(answer, text)
        assert default_verifier({"answer": answer}, text) is expected
        assert answer_reward(["q"], [text], answer=[answer]) == [float(expected)]
    assert answer_reward(["q"], ["x"], answer=[None]) == [None]
    forcing = MarkerForcing(marker="Answer:")
    assert forcing.correct(Problem("p", "q", "Paris"), " paris.\nmore") and not forcing.correct(Problem("p", "q", "1"), "2")
    task = ArithTask()
    p = task.problems("test")[0]
    assert task.verify(p, f"...;A={int(p.answer):04d}") == 1.0 and task.verify(p, "A=") == 0.0


def test_math_reward_judges_equivalent_math():
    pytest.importorskip("math_verify")
    from forklens.rewards import math_reward

    completions = [r"so the answer is $\boxed{\frac{1}{2}}$", "0.5", r"\boxed{0.51}",
                   [{"role": "assistant", "content": r"\boxed{\{1, 2\}}"}], r"\boxed{x+1}", "no answer"]
    answers = ["0.5", r"\frac12", "1/2", r"\{2,1\}", "1+x", None]
    assert math_reward(["q"] * 6, completions, answer=answers) == [1.0, 1.0, 0.0, 1.0, 1.0, None]
    # an answer math-verify cannot parse leaves the row out, as TRL expects
    assert math_reward(["q"], ["anything"], answer=[""]) == [None]
