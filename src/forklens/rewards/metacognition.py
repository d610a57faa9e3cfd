"""Metacognition as reward, MaR (arXiv 2605.23384; docs/rewards.md).

The paper's rollout format is a knowledge block (numbered relevant facts), a regulation block (the
plan), an optional LOOKBACK (knowledge recovered after it was missed), the reasoning and the answer,
rewarded with ``R = KMR + RMR + CR``:

* ``KMR = (k + r) / n``: of ``n`` gold knowledge units, ``k`` named in the knowledge block and ``r``
  recovered in the lookback;
* ``RMR = a * (1 - 0.3 s)``: ``a`` = consistency of the reasoning with the plan, ``s = 1`` when a
  shortcut bypasses the plan;
* ``CR = 1`` when the answer is correct.

A **grader** turns ``(problem, completion)`` into ``{"kmr", "rmr", "cr"}`` (each in ``[0, 1]``, or
``None`` where it cannot say). Three graders:

* :class:`AgentGrader`, exact, for the agent organism. Its episodes are the structured response in
  the organism's own alphabet: the tool calls and their observations are the knowledge the episode
  gathers (gold units = the facts the question needs, one per hop, known from the generator); the
  plan is the hop sequence the question spells out; a gold fact gathered *after* an off-plan call is
  a recovery (the lookback); the answer is ``!ANSWER``. ``a`` = share of the model's calls that are
  the next open plan step when made (0 with no calls); ``s = 1`` when the episode answers while plan
  steps are still open. This needs no new organism: the ablation runs on the agent base as it is.
* :class:`TaggedGrader`, exact, for responses in the tagged text format (:func:`parse_structured`)
  on tasks whose problems carry gold ``knowledge`` units and ``plan`` steps in ``meta``.
* :class:`JudgeGrader`, for real tasks: a local Hugging Face judge model scores each criterion by its
  probability of answering yes (``P(yes) / (P(yes) + P(no))`` from the next-token log-probs) after a
  prompt template; CR stays exact when the problem has a gold answer.

:func:`mar_reward` and :func:`mar_component` wrap a grader as TRL-signature reward functions.
Malformed completions (not a string, missing blocks, empty answer, megabytes of text) get defined
scores, never an exception.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Protocol, Sequence

from forklens.errors import ConfigError
from forklens.policy import Policy
from forklens.rewards import problems_from, texts_of
from forklens.rewards.milestones import MAX_SCAN_CHARS, episode_calls, milestones
from forklens.tasks.agent import parse_answer

COMPONENTS = ("kmr", "rmr", "cr")
SHORTCUT_PENALTY = 0.3
BLOCKS = ("knowledge", "plan", "lookback", "reasoning", "answer")


class Grader(Protocol):
    def grade(self, problem, completion, episode=None) -> dict[str, float | None]:
        """``{"kmr", "rmr", "cr"}`` of one completion."""


def regulation_score(a: float, shortcut: bool) -> float:
    """``RMR = a * (1 - 0.3 s)``."""
    return a * (1.0 - SHORTCUT_PENALTY * float(shortcut))


# ------------------------------------------------------------------------------------ agent organism


class AgentGrader:
    """Exact MaR scores of agent-organism episodes (see the module docstring for the mapping)."""

    def __init__(self, task):
        self.task = task

    def grade(self, problem, completion, episode=None) -> dict[str, float | None]:
        plan = milestones(problem)
        if plan is None:
            return {c: None for c in COMPONENTS}
        if not isinstance(completion, str):
            return {"kmr": 0.0, "rmr": 0.0, "cr": 0.0}
        text = completion[:MAX_SCAN_CHARS]
        calls = episode_calls(text, episode)
        gold = set(plan)
        got, k, r, consistent, off_plan = set(), 0, 0, 0, False
        for c in calls:
            step = next((s for s in plan if s not in got), None)
            if c == step:
                consistent += 1
            if c in gold and c not in got:
                got.add(c)
                if off_plan:
                    r += 1
                else:
                    k += 1
            elif c not in gold:
                off_plan = True
        answered = parse_answer(completion[-64:]) is not None
        a = consistent / len(calls) if calls else 0.0
        shortcut = answered and len(got) < len(plan)
        return {"kmr": (k + r) / len(plan), "rmr": regulation_score(a, shortcut),
                "cr": float(self.task.verify(problem, completion))}


# ------------------------------------------------------------------------------------ tagged format


@dataclass
class StructuredResponse:
    """The blocks of a tagged response; ``None`` for a block that is missing."""

    knowledge: list[str] | None = None
    plan: list[str] | None = None
    lookback: list[str] | None = None
    reasoning: str | None = None
    answer: str | None = None


_ITEM_PREFIX = re.compile(r"^\s*(?:\d+[.)]|[-*])\s*")


def _items(block: str) -> list[str]:
    return [_ITEM_PREFIX.sub("", line).strip() for line in block.splitlines() if _ITEM_PREFIX.sub("", line).strip()]


def parse_structured(text) -> StructuredResponse:
    """Parse ``<knowledge>..</knowledge><plan>..</plan>[<lookback>..</lookback>]<reasoning>..</reasoning>
    <answer>..</answer>``. List blocks (knowledge, plan, lookback) hold one item per line, optionally
    numbered (``1.``, ``1)``) or bulleted. The first occurrence of each block counts; a block without
    its closing tag is missing. Non-strings parse to an empty response."""
    out = StructuredResponse()
    if not isinstance(text, str):
        return out
    text = text[:MAX_SCAN_CHARS]
    for name in BLOCKS:
        m = re.search(rf"<{name}>(.*?)</{name}>", text, re.DOTALL | re.IGNORECASE)
        if m is None:
            continue
        body = m.group(1)
        setattr(out, name, _items(body) if name in ("knowledge", "plan", "lookback") else body.strip())
    return out


def normalize(text: str) -> str:
    return " ".join(str(text).lower().split())


def write_structured(knowledge: Sequence[str], plan: Sequence[str], reasoning: str, answer: str,
                     lookback: Sequence[str] = ()) -> str:
    """The tagged text of a structured response (the inverse of :func:`parse_structured`)."""
    num = lambda xs: "\n".join(f"{i + 1}. {x}" for i, x in enumerate(xs))  # noqa: E731
    parts = [f"<knowledge>\n{num(knowledge)}\n</knowledge>", f"<plan>\n{num(plan)}\n</plan>"]
    if lookback:
        parts.append(f"<lookback>\n{num(lookback)}\n</lookback>")
    parts += [f"<reasoning>\n{reasoning}\n</reasoning>", f"<answer>{answer}</answer>"]
    return "\n".join(parts)


class TaggedGrader:
    """Exact MaR scores of tagged responses against ``problem.meta["knowledge"]`` (gold units) and
    ``problem.meta["plan"]`` (plan steps), matched as case- and whitespace-insensitive substrings.

    KMR: a gold unit named in the knowledge block counts in ``k``, else one named in the lookback in
    ``r``. RMR: ``a`` = the longest prefix of the plan whose steps occur in the reasoning in order,
    over the plan's length; ``s = 1`` when the response answers but the reasoning skipped a step.
    CR: the answer block equals ``problem.answer`` (normalised). Missing gold metadata gives ``None``.
    """

    def grade(self, problem, completion, episode=None) -> dict[str, float | None]:
        meta = getattr(problem, "meta", None) or {}
        units, plan = meta.get("knowledge"), meta.get("plan")
        gold_answer = getattr(problem, "answer", None)
        r = parse_structured(completion)
        out: dict[str, float | None] = {"kmr": None, "rmr": None, "cr": None}
        if units:
            named = normalize("\n".join(r.knowledge or []))
            back = normalize("\n".join(r.lookback or []))
            k = sum(normalize(u) in named for u in units)
            rec = sum(normalize(u) not in named and normalize(u) in back for u in units)
            out["kmr"] = (k + rec) / len(units)
        if plan:
            reasoning = normalize(r.reasoning or "")
            pos, done = 0, 0
            for step in plan:
                at = reasoning.find(normalize(step), pos) if reasoning else -1
                if at < 0:
                    break
                pos, done = at + len(normalize(step)), done + 1
            answered = bool(r.answer)
            out["rmr"] = regulation_score(done / len(plan), answered and done < len(plan))
        if gold_answer is not None:
            out["cr"] = float(bool(r.answer) and normalize(r.answer) == normalize(gold_answer))
        return out


# ------------------------------------------------------------------------------------ LLM judge

DEFAULT_TEMPLATE = ("Question: {question}\nReference answer: {reference}\nResponse:\n{response}\n"
                    "Criterion: {criterion}\nDoes the response meet the criterion? Answer yes or no.\nAnswer: ")
CRITERIA = {
    "kmr": "The knowledge block names every fact needed to answer the question.",
    "rmr": "The reasoning follows the plan step by step without skipping a step.",
    "cr": "The final answer is correct.",
}


class JudgeGrader:
    """MaR scores from a local Hugging Face judge model (``model_dir``) and a prompt ``template``.

    The template is a ``str.format`` string with the fields ``{question}``, ``{response}``,
    ``{criterion}`` and ``{reference}`` (the gold answer, or ``"(none)"``). A criterion's score is
    ``P(yes) / (P(yes) + P(no))`` for the first tokens of ``yes`` and ``no`` after the prompt. The
    response is cut to ``max_response_chars`` and the prompt to the judge's context, keeping its end.
    CR is exact when the problem has an answer and ``exact_cr`` is set (parsed from the answer block).
    Cost: one judge forward pass per criterion per completion.
    """

    def __init__(self, model_dir, template: str = DEFAULT_TEMPLATE, criteria: dict[str, str] | None = None,
                 yes: str = "yes", no: str = "no", exact_cr: bool = True, max_response_chars: int = 4000,
                 policy=None):
        for name in ("{response}", "{criterion}"):
            if name not in template:
                raise ConfigError(f"the judge template must contain {name}; got {template!r}")
        try:
            template.format(question="", response="", criterion="", reference="")
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(f"the judge template has an unknown or malformed field: {e}") from None
        if policy is None:
            policy = Policy.load(model_dir)
        self.policy = policy
        self.template = template
        self.criteria = {**CRITERIA, **(criteria or {})}
        self.exact_cr = exact_cr
        self.max_response_chars = max_response_chars
        tok = policy.tokenizer
        y = tok(yes, add_special_tokens=False)["input_ids"]
        n = tok(no, add_special_tokens=False)["input_ids"]
        if not y or not n or y[0] == n[0]:
            raise ConfigError(f"the judge's tokenizer must give {yes!r} and {no!r} different first tokens")
        self.yes_id, self.no_id = y[0], n[0]

    def prompt_ids(self, problem, completion: str, criterion: str) -> list[int]:
        text = self.template.format(question=getattr(problem, "prompt", ""),
                                    response=completion[: self.max_response_chars], criterion=criterion,
                                    reference=getattr(problem, "answer", None) or "(none)")
        ids = self.policy.encode_prompt(text)
        ctx = self.policy.context
        return ids[-(ctx - 1):] if ctx is not None and len(ids) > ctx - 1 else ids

    def p_yes(self, prompts: list[list[int]]) -> list[float]:
        """``P(yes) / (P(yes) + P(no))`` after each prompt."""
        ys = self.policy.score(prompts, [[self.yes_id]] * len(prompts))
        ns = self.policy.score(prompts, [[self.no_id]] * len(prompts))
        out = []
        for y, n in zip(ys, ns):
            ly, ln = float(y.logprob[0]), float(n.logprob[0])
            m = max(ly, ln)
            out.append(math.exp(ly - m) / (math.exp(ly - m) + math.exp(ln - m)))
        return out

    def grade(self, problem, completion, episode=None) -> dict[str, float | None]:
        return self.grade_many([problem], [completion])[0]

    def grade_many(self, problems: Sequence, completions: Sequence) -> list[dict[str, float | None]]:
        names = [c for c in COMPONENTS if not (c == "cr" and self.exact_cr)]
        jobs = [(i, c) for i, x in enumerate(completions) if isinstance(x, str) for c in names]
        prompts = [self.prompt_ids(problems[i], completions[i], self.criteria[c]) for i, c in jobs]
        probs = self.p_yes(prompts) if prompts else []
        out = [{"kmr": 0.0, "rmr": 0.0, "cr": 0.0} for _ in completions]
        for (i, c), p in zip(jobs, probs):
            out[i][c] = p
        if self.exact_cr:
            for i, (p, x) in enumerate(zip(problems, completions)):
                gold = getattr(p, "answer", None)
                ans = parse_structured(x).answer
                out[i]["cr"] = None if gold is None else float(bool(ans) and normalize(ans) == normalize(gold))
        return out


# ------------------------------------------------------------------------------------ reward functions


def _grade_all(grader, problems, completions, episodes) -> list[dict[str, float | None]]:
    if hasattr(grader, "grade_many"):
        return grader.grade_many(problems, completions)
    return [grader.grade(p, c, e) for p, c, e in zip(problems, completions, episodes)]


def mar_reward(grader, components: Sequence[str] = COMPONENTS, name: str | None = None):
    """``R = sum of components`` (default KMR + RMR + CR, unweighted) as a TRL-signature reward.

    ``None`` where every selected component is ``None``; a ``None`` component counts 0 otherwise.
    """
    components = tuple(components)
    bad = [c for c in components if c not in COMPONENTS]
    if bad or not components:
        raise ValueError(f"MaR components must be a non-empty subset of {COMPONENTS}, got {components}")

    def reward(prompts, completions, problem=None, episode=None, answer=None, **columns) -> list[float | None]:
        n = len(completions)
        problems = problems_from(prompts, problem, answer, **columns)
        scores = _grade_all(grader, problems, texts_of(completions), episode if episode is not None else [None] * n)
        out: list[float | None] = []
        for s in scores:
            vals = [s[c] for c in components]
            out.append(None if all(v is None for v in vals) else sum(v for v in vals if v is not None))
        return out

    reward.__name__ = name or ("mar" if components == COMPONENTS else "mar_" + "_".join(components))
    return reward


def mar_component(grader, component: str):
    """One MaR term alone (``kmr``, ``rmr`` or ``cr``) as a reward function named after it."""
    return mar_reward(grader, (component,), name=component)
