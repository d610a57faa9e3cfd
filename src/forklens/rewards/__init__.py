"""Rewards in TRL's signature, and their weighted composition.

A reward function is ``fn(prompts, completions, **columns) -> list[float | None]``: one value per
completion, ``None`` where the reward does not apply (TRL's convention, so any forklens reward plugs
into TRL's ``GRPOTrainer`` and any TRL reward into forklens). ``columns`` carries the dataset
columns; forklens passes ``problem`` (the :class:`~forklens.tasks.base.Problem`), ``answer`` and
``id``, and for a multi-turn task ``episode`` (the sampled episode). Completions may be strings or,
as TRL passes them for conversational data, lists of chat messages: every forklens reward reads them
through :func:`~forklens.tasks.dataset.completion_text`, and rewards that need a ``problem`` build it
from TRL's ``prompts`` and ``answer`` columns when no ``problem`` column is passed (:func:`problems_from`).

:func:`compose_rewards` sums the weighted components (``None`` and NaN count as 0 in the sum, as in
TRL) and keeps each component so it can be logged separately (``reward/NAME``).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import threading
from pathlib import Path
from typing import Callable, Sequence

import torch

from forklens.errors import ConfigError
from forklens.tasks.answers import is_correct
from forklens.tasks.base import Problem
from forklens.tasks.dataset import completion_text

RewardFn = Callable[..., list]


def answer_reward(prompts, completions, answer, **_) -> list[float | None]:
    """1.0 when a completion's final answer is the row's ``answer`` (:func:`forklens.tasks.answers.is_correct`:
    boxed, last number or last line), else 0.0; ``None`` for rows without an answer."""
    return [None if a is None else float(is_correct(str(a), completion_text(c))) for a, c in zip(answer, completions)]


def math_reward(prompts, completions, answer, **_) -> list[float | None]:
    """1.0 when `math-verify <https://github.com/huggingface/Math-Verify>`_ judges a completion's answer
    mathematically equal to the row's ``answer`` (LaTeX or plain expressions: ``\\frac{1}{2}`` = ``0.5``,
    sets, intervals, equations), else 0.0; ``None`` for rows without an answer or whose answer
    math-verify cannot parse (TRL then leaves the row out). Needs ``pip install 'forklens[math]'``."""
    try:
        from math_verify import parse, verify
    except ImportError:
        raise ConfigError("math_reward needs the math-verify package: pip install 'forklens[math]' "
                          "(or pip install math-verify)") from None
    # math-verify's timeouts use signal.alarm, which only works in the main thread
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    out: list[float | None] = []
    for a, c in zip(answer, completions):
        text = "" if a is None else str(a).strip()
        # a bare gold answer ("\\frac12", "1+x") is read as math mode, as dataset answers usually are
        gold = parse(text if "$" in text or "\\boxed" in text else f"${text}$", parsing_timeout=timeout) if text else []
        gold = gold or (parse(text, parsing_timeout=timeout) if text else [])
        if not gold:
            out.append(None)
            continue
        pred = parse(completion_text(c), parsing_timeout=timeout)
        out.append(float(bool(pred) and verify(gold, pred, timeout_seconds=timeout)))
    return out


def texts_of(completions: Sequence) -> list:
    """Completions as text for a grader: strings as they are, TRL's chat-format completions (lists of
    messages) as their assistant content (:func:`~forklens.tasks.dataset.completion_text`), anything
    else unchanged (graders score it 0)."""
    return [c if isinstance(c, str) else completion_text(c) if isinstance(c, (list, dict)) else c
            for c in completions]


def problems_from(prompts: Sequence, problem: Sequence | None = None, answer: Sequence | None = None,
                  **columns) -> list:
    """The problems of a reward call: the ``problem`` column when given (dicts become Problems), else
    Problems built from TRL's ``prompts`` (strings or chat messages), its ``answer`` column (or None) and
    the other dataset columns as ``meta`` (e.g. ``knowledge`` and ``plan`` for MaR's tagged grader)."""
    if problem is not None:
        return [as_problem(p) for p in problem]
    n = len(prompts)
    answers = list(answer) if answer is not None else [None] * n
    per_row = {k: list(v) for k, v in columns.items() if isinstance(v, (list, tuple)) and len(v) == n}
    return [Problem(id=str(i), prompt=p if isinstance(p, str) else completion_text(p),
                    answer=None if a is None else str(a),
                    meta={k: v[i] for k, v in per_row.items() if v[i] is not None})
            for i, (p, a) in enumerate(zip(prompts, answers))]


def as_problem(x):
    """A :class:`~forklens.tasks.base.Problem` from a ``problem`` column entry: a Problem as is, or a
    dict with ``prompt`` (and optional ``id``, ``answer``, ``meta``), the form a Hugging Face dataset
    column takes when rewards run inside TRL. Anything else is returned unchanged."""
    if isinstance(x, dict) and isinstance(x.get("prompt"), str):
        answer = x.get("answer")
        return Problem(id=str(x.get("id", "")), prompt=x["prompt"], answer=None if answer is None else str(answer),
                       meta={k: v for k, v in (x.get("meta") or {}).items() if v is not None})
    return x


def reward_name(fn) -> str:
    """The name a reward component is logged under."""
    return getattr(fn, "__name__", None) or type(fn).__name__


def compose_rewards(reward_fns: Sequence[RewardFn], weights: Sequence[float] | None, prompts: list,
                    completions: list, **columns) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of the reward components and each component (NaN where it returned ``None``).

    Raises ``ValueError`` when a function returns the wrong number of values or something that is not
    a number or ``None``: a silent zero would train on a broken reward.
    """
    weights = list(weights) if weights is not None else [1.0] * len(reward_fns)
    if len(weights) != len(reward_fns):
        raise ValueError(f"{len(weights)} reward weights for {len(reward_fns)} reward functions")
    n = len(completions)
    total = torch.zeros(n, dtype=torch.float32)
    components: dict[str, torch.Tensor] = {}
    for fn, w in zip(reward_fns, weights):
        name = reward_name(fn)
        vals = fn(prompts, completions, **columns)
        if len(vals) != n:
            raise ValueError(f"reward function {name} returned {len(vals)} values for {n} completions")
        comp = torch.full((n,), float("nan"), dtype=torch.float32)
        for i, v in enumerate(vals):
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                try:
                    v = float(v)
                except (TypeError, ValueError):
                    raise ValueError(f"reward function {name} returned {v!r} for completion {i}; "
                                     "expected a float or None") from None
            comp[i] = float(v)
            if not math.isnan(float(v)):
                total[i] += w * float(v)
        key, k = name, 2
        while key in components:  # two functions with one name are logged apart
            key, k = f"{name}_{k}", k + 1
        components[key] = comp
    return total, components


def component_means(components: dict[str, torch.Tensor], rows: torch.Tensor | None = None) -> dict[str, float]:
    """``{"reward/NAME": mean over rows where it applied}`` (NaN when it applied to none)."""
    out = {}
    for name, comp in components.items():
        c = comp if rows is None else comp[rows]
        ok = ~torch.isnan(c)
        out[f"reward/{name}"] = float(c[ok].mean()) if bool(ok.any()) else float("nan")
    return out


def load_reward(spec: str) -> RewardFn:
    """A reward function from ``package.module:function`` or ``path/to/file.py:function`` (TRL's signature:
    ``fn(prompts, completions, **columns) -> list[float | None]``). A clear ConfigError for every way
    the spec can be wrong."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--reward {spec!r}: expected MODULE:FUNCTION or FILE.py:FUNCTION (e.g. my_rewards:exact)")
    if module_name.endswith(".py") or "/" in module_name:
        path = Path(module_name)
        if not path.is_file():
            raise ConfigError(f"--reward {spec!r}: {path} does not exist")
        mspec = importlib.util.spec_from_file_location(f"forklens_user_reward_{path.stem}", path)
        module = importlib.util.module_from_spec(mspec)
        try:
            mspec.loader.exec_module(module)
        except Exception as exc:
            raise ConfigError(f"--reward {spec!r}: importing {path} failed: {type(exc).__name__}: {exc}") from exc
    else:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            raise ConfigError(f"--reward {spec!r}: no module {exc.name!r} (is it on PYTHONPATH? a file path "
                              f"such as ./{module_name.replace('.', '/')}.py:{attr} also works)") from exc
    fn = getattr(module, attr, None)
    if fn is None:
        names = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))
        raise ConfigError(f"--reward {spec!r}: {module_name} has no {attr!r} (callables: {', '.join(names) or 'none'})")
    if not callable(fn):
        raise ConfigError(f"--reward {spec!r}: {attr!r} is a {type(fn).__name__}, not a function")
    return fn


def verl_compute_score(reward_fn: RewardFn | None = None, **columns):
    """A verl custom reward (``custom_reward_function.path`` / ``.name``): the returned function has verl's
    signature ``compute_score(data_source, solution_str, ground_truth, extra_info=None) -> float`` and
    calls ``reward_fn`` (TRL's signature; default :func:`answer_reward`) on the one completion, with
    ``answer=[ground_truth]``, ``data_source`` and ``extra_info`` as columns. A ``None`` reward becomes 0.0
    (verl needs a number)."""
    fn = reward_fn or answer_reward

    def compute_score(data_source, solution_str, ground_truth, extra_info=None, **_) -> float:
        value = fn([""], [solution_str], answer=[ground_truth], data_source=[data_source],
                   extra_info=[extra_info], **{k: [v] for k, v in columns.items()})
        if not isinstance(value, (list, tuple)) or len(value) != 1:
            raise ValueError(f"{reward_name(fn)} returned {value!r} for one completion; expected a list of one value")
        v = value[0]
        return 0.0 if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    compute_score.__name__ = f"verl_{reward_name(fn)}"
    return compute_score


#: verl's ``custom_reward_function.name=compute_score`` with ``path`` pointing at this module: the
#: final-answer check (boxed, numeric or last line) against ``ground_truth``
compute_score = verl_compute_score()
