"""Unbiased pass@k (Chen et al., 2021) over sampled completions.

For one problem with ``n`` sampled completions of which ``c`` are correct, the unbiased estimator of
the probability that at least one of ``k`` samples is correct is::

    pass@k = 1 - C(n - c, k) / C(n, k)

evaluated here in the product form ``1 - prod_{i=n-c+1}^{n} (1 - k / i)``, which never forms a large
binomial coefficient and is exactly 1 when ``n - c < k`` (every size-``k`` subset then contains a
correct sample). The estimator is only defined for ``k <= n``: asking for a larger ``k`` raises
:class:`PassAtKValueError` (a :class:`~forklens.errors.DataError` that is also a ``ValueError``)
unless the caller opts into skipping, in which case those ``k`` are left out and listed as skipped.
A biased substitute (for instance ``1 - (1 - c/n)**k``) is never reported instead.

``PASS@(k, T)`` is the same estimator applied separately to each ``(model, T)`` group, where ``T`` is
the tool-round cap the samples were drawn under (``0`` / ``None`` means one static setting).

Boundary sets compare which problems each model can solve within the budget. For any ``1 <= k <= n``
``pass@k > 0`` if and only if ``c > 0``: with ``c == 0`` the ratio is ``C(n, k) / C(n, k) = 1``; with
``c > 0`` there are strictly fewer all-incorrect subsets than subsets, so the ratio is below 1. The
sets therefore depend on ``k`` only through which problems have enough samples (``k <= n``).
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable, Iterable, Mapping

import numpy as np

from forklens.errors import DataError

__all__ = [
    "DEFAULT_MODEL",
    "PassAtKValueError",
    "PassAtKTable",
    "pass_at_k",
    "pass_at_k_table",
    "boundary_sets",
    "boundary_sets_to_json",
    "load_samples",
    "sample_counts",
    "default_ks",
]

DEFAULT_MODEL = "model"

ProblemId = Hashable
#: ``{model: {T: {problem_id: (n, c)}}}``
Counts = dict[str, dict[int, dict[ProblemId, tuple[int, int]]]]


class PassAtKValueError(DataError, ValueError):
    """An invalid pass@k argument, notably ``k > n`` without a skip policy."""


# --------------------------------------------------------------------------------------------
# The estimator
# --------------------------------------------------------------------------------------------


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise PassAtKValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``n`` samples, ``c`` of them correct.

    Raises :class:`PassAtKValueError` when ``k > n`` (the estimator is undefined there), when
    ``k < 1``, or when ``c`` is not in ``[0, n]``.
    """
    n = _as_int(n, "n")
    c = _as_int(c, "c")
    k = _as_int(k, "k")
    if n < 0:
        raise PassAtKValueError(f"n must be >= 0, got n={n}")
    if not 0 <= c <= n:
        raise PassAtKValueError(f"c must be between 0 and n={n}, got c={c}")
    if k < 1:
        raise PassAtKValueError(f"k must be >= 1, got k={k}")
    if k > n:
        raise PassAtKValueError(
            f"pass@{k} is undefined with only n={n} samples (the unbiased estimator needs k <= n)"
        )
    if n - c < k:
        return 1.0
    # prod_{i=n-c+1}^{n} (1 - k/i) == C(n-c, k) / C(n, k); each factor is (i - k) / i in (0, 1).
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= (i - k) / i
    return 1.0 - prod


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


def _is_bool_like(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


def _normalise_record(record: Any, where: str) -> tuple[str, int, ProblemId, bool]:
    """Validate one sample record; return ``(model, T, problem_id, correct)``.

    ``where`` says where the record came from (``"file.jsonl:12"`` or ``"record 3"``) for messages.
    """
    if not isinstance(record, Mapping):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [key for key in ("problem_id", "correct") if key not in record]
    if missing:
        raise DataError(
            f"{where}: missing required field{'s' if len(missing) > 1 else ''} "
            + ", ".join(repr(m) for m in missing)
            + " (each sample needs 'problem_id' and 'correct')"
        )

    pid = record["problem_id"]
    if isinstance(pid, bool) or not isinstance(pid, (str, numbers.Integral)) or pid == "":
        raise DataError(f"{where}: 'problem_id' must be a non-empty string or an integer, got {pid!r}")
    if isinstance(pid, numbers.Integral):
        pid = int(pid)

    raw = record["correct"]
    if _is_bool_like(raw):
        correct = bool(raw)
    elif isinstance(raw, numbers.Integral) and raw in (0, 1):
        correct = bool(raw)
    else:
        raise DataError(f"{where}: 'correct' must be true/false or 0/1, got {raw!r}")

    T = record.get("T")
    if T is None:
        T = 0
    elif isinstance(T, bool) or not isinstance(T, numbers.Integral) or T < 0:
        raise DataError(f"{where}: 'T' (tool-round cap) must be a non-negative integer or null, got {T!r}")
    T = int(T)

    model = record.get("model")
    if model is None:
        model = DEFAULT_MODEL
    elif not isinstance(model, str) or not model:
        raise DataError(f"{where}: 'model' must be a non-empty string, got {model!r}")

    return model, T, pid, correct


def load_samples(path: str | Path) -> list[dict[str, Any]]:
    """Read a samples JSONL file: one JSON object per line, blank lines ignored.

    Each object needs ``problem_id`` (string or integer) and ``correct`` (true/false or 0/1); ``T``
    (non-negative integer, default 0) and ``model`` (string, default ``"model"``) are optional and
    other fields are ignored. Returns normalised records with exactly those four keys. Problems may
    have a different number of samples per model (or per ``T``); each problem's own ``n`` then
    bounds the ``k`` it supports.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"samples file not found: {path}")
    if not path.is_file():
        raise DataError(f"samples path is not a file: {path}")
    records: list[dict[str, Any]] = []
    with path.open("r", encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None
            model, T, pid, correct = _normalise_record(obj, where)
            records.append({"model": model, "T": T, "problem_id": pid, "correct": correct})
    if not records:
        raise DataError(f"samples file is empty: {path} (expected one JSON object per line)")
    return records


def sample_counts(records: Iterable[Mapping[str, Any]]) -> Counts:
    """Group records into ``{model: {T: {problem_id: (n, c)}}}``."""
    tallies: dict[str, dict[int, dict[ProblemId, list[int]]]] = {}
    count = 0
    for index, record in enumerate(records):
        model, T, pid, correct = _normalise_record(record, f"record {index}")
        nc = tallies.setdefault(model, {}).setdefault(T, {}).setdefault(pid, [0, 0])
        nc[0] += 1
        nc[1] += int(correct)
        count += 1
    if count == 0:
        raise DataError("no sample records given")
    return {
        model: {T: {pid: (nc[0], nc[1]) for pid, nc in by_pid.items()} for T, by_pid in by_T.items()}
        for model, by_T in tallies.items()
    }


def default_ks(counts: Counts) -> list[int]:
    """Powers of two ``1, 2, 4, ...`` up to the smallest per-problem ``n`` anywhere in ``counts``."""
    min_n = min(n for by_T in counts.values() for by_pid in by_T.values() for n, _ in by_pid.values())
    ks, k = [], 1
    while k <= min_n:
        ks.append(k)
        k *= 2
    return ks


def _sort_key(pid: ProblemId) -> tuple[int, Any]:
    return (0, pid) if isinstance(pid, int) else (1, str(pid))


def _validate_ks(ks: Iterable[int]) -> list[int]:
    out = sorted({_as_int(k, "k") for k in ks})
    if not out:
        raise PassAtKValueError("no k values given")
    if out[0] < 1:
        raise PassAtKValueError(f"k must be >= 1, got k={out[0]}")
    return out


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


@dataclass
class PassAtKTable:
    """pass@k per problem and averaged per ``(model, T)`` group.

    ``mean[model][T][k]`` is the mean over the group's problems. With the skip policy, a ``k`` that
    exceeds some problem's ``n`` is left out of that problem's values (listed in ``skipped``) and
    out of the group mean (listed in ``skipped_means``): averaging over only the problems that have
    enough samples would silently change the population, so no mean is reported for that ``k``.
    """

    ks: list[int]
    skip_k_above_n: bool
    counts: Counts
    per_problem: dict[str, dict[int, dict[ProblemId, dict[int, float]]]]
    mean: dict[str, dict[int, dict[int, float]]]
    skipped: list[dict[str, Any]] = field(default_factory=list)
    skipped_means: list[dict[str, Any]] = field(default_factory=list)

    @property
    def models(self) -> list[str]:
        return sorted(self.counts)

    def mean_json(self) -> dict[str, dict[str, dict[str, float]]]:
        """``mean`` with string keys: ``{model: {str(T): {str(k): value}}}``."""
        return {
            model: {str(T): {str(k): v for k, v in by_k.items()} for T, by_k in sorted(by_T.items())}
            for model, by_T in sorted(self.mean.items())
        }

    def per_problem_rows(self) -> list[dict[str, Any]]:
        """One JSON-ready row per ``(model, T, problem)`` with ``n``, ``c`` and pass@k by ``str(k)``."""
        skipped_by_key: dict[tuple[str, int, ProblemId], list[int]] = {}
        for item in self.skipped:
            skipped_by_key.setdefault((item["model"], item["T"], item["problem_id"]), []).append(item["k"])
        rows = []
        for model in self.models:
            for T in sorted(self.counts[model]):
                by_pid = self.counts[model][T]
                for pid in sorted(by_pid, key=_sort_key):
                    n, c = by_pid[pid]
                    rows.append(
                        {
                            "model": model,
                            "T": T,
                            "problem_id": pid,
                            "n": n,
                            "c": c,
                            "pass_at_k": {str(k): v for k, v in self.per_problem[model][T][pid].items()},
                            "skipped_k": skipped_by_key.get((model, T, pid), []),
                        }
                    )
        return rows


def pass_at_k_table(
    records: Iterable[Mapping[str, Any]],
    ks: Iterable[int],
    skip_k_above_n: bool = False,
) -> PassAtKTable:
    """Compute pass@k for every ``(model, T, problem)`` and the mean per ``(model, T)``.

    ``records`` are dicts with ``problem_id``, ``correct`` and optional ``T`` / ``model`` (see
    :func:`load_samples`). Without ``skip_k_above_n`` any ``k`` larger than a problem's own ``n``
    raises :class:`PassAtKValueError`; with it, such ``k`` are omitted and reported as skipped.
    """
    ks = _validate_ks(ks)
    counts = sample_counts(records)

    if not skip_k_above_n:
        short = [
            (model, T, pid, n)
            for model, by_T in counts.items()
            for T, by_pid in by_T.items()
            for pid, (n, _) in by_pid.items()
            if n < ks[-1]
        ]
        if short:
            short.sort(key=lambda s: (s[0], s[1], _sort_key(s[2])))
            model, T, pid, n = short[0]
            raise PassAtKValueError(
                f"k={ks[-1]} exceeds the number of samples for {len(short)} problem group(s), e.g. "
                f"model={model!r} T={T} problem_id={pid!r} has n={n}; the unbiased estimator needs "
                f"k <= n. Use k values up to {min(s[3] for s in short)} or pass the skip policy "
                "(--skip-k-above-n) to omit them."
            )

    per_problem: dict[str, dict[int, dict[ProblemId, dict[int, float]]]] = {}
    mean: dict[str, dict[int, dict[int, float]]] = {}
    skipped: list[dict[str, Any]] = []
    skipped_means: list[dict[str, Any]] = []
    for model in sorted(counts):
        for T in sorted(counts[model]):
            by_pid = counts[model][T]
            values: dict[ProblemId, dict[int, float]] = {}
            for pid in sorted(by_pid, key=_sort_key):
                n, c = by_pid[pid]
                values[pid] = {}
                for k in ks:
                    if k > n:
                        skipped.append({"model": model, "T": T, "problem_id": pid, "n": n, "k": k})
                    else:
                        values[pid][k] = pass_at_k(n, c, k)
            per_problem.setdefault(model, {})[T] = values
            group_mean: dict[int, float] = {}
            for k in ks:
                missing = sum(1 for v in values.values() if k not in v)
                if missing:
                    skipped_means.append(
                        {"model": model, "T": T, "k": k, "problems_without_enough_samples": missing,
                         "problems": len(values)}
                    )
                else:
                    group_mean[k] = math.fsum(v[k] for v in values.values()) / len(values)
            mean.setdefault(model, {})[T] = group_mean

    return PassAtKTable(
        ks=ks,
        skip_k_above_n=skip_k_above_n,
        counts=counts,
        per_problem=per_problem,
        mean=mean,
        skipped=skipped,
        skipped_means=skipped_means,
    )


# --------------------------------------------------------------------------------------------
# Boundary sets
# --------------------------------------------------------------------------------------------


def boundary_sets(table: PassAtKTable, budget_k: int) -> dict[str, Any]:
    """Which problems each model solves at ``k = budget_k``, and which one model solves but not another.

    Returns ``{"k": budget_k, "by_T": {T: {"models": [...], "solved": {model: [ids]},
    "a_not_b": {A: {B: [ids]}}, "shared_problems": {A: {B: count}}}}, "skipped": [...]}``. ``solved[A]`` are A's problems with
    ``pass@k > 0`` (equivalently ``c > 0``; see the module docstring). ``a_not_b[A][B]`` are the
    problems both models were sampled on at that ``T`` where A has ``pass@k > 0`` and B has
    ``pass@k == 0``; a problem B was never sampled on is not counted as a B failure.

    A problem with fewer than ``budget_k`` samples raises :class:`PassAtKValueError`, unless the
    table was built with the skip policy, in which case it is left out and listed in ``skipped``.
    """
    budget_k = _as_int(budget_k, "budget_k")
    if budget_k < 1:
        raise PassAtKValueError(f"budget k must be >= 1, got {budget_k}")

    usable: dict[str, dict[int, dict[ProblemId, bool]]] = {}  # model -> T -> pid -> pass@k > 0
    skipped: list[dict[str, Any]] = []
    for model in table.models:
        for T in sorted(table.counts[model]):
            group = usable.setdefault(model, {}).setdefault(T, {})
            for pid, (n, c) in sorted(table.counts[model][T].items(), key=lambda it: _sort_key(it[0])):
                if budget_k > n:
                    if not table.skip_k_above_n:
                        raise PassAtKValueError(
                            f"budget k={budget_k} exceeds n={n} for model={model!r} T={T} "
                            f"problem_id={pid!r}; the unbiased estimator needs k <= n"
                        )
                    skipped.append({"model": model, "T": T, "problem_id": pid, "n": n, "k": budget_k})
                    continue
                group[pid] = c > 0  # pass@k > 0  <=>  c > 0, for any 1 <= k <= n

    all_T = sorted({T for by_T in usable.values() for T in by_T})
    by_T_out: dict[int, dict[str, Any]] = {}
    for T in all_T:
        models = [m for m in sorted(usable) if T in usable[m]]
        solved = {
            m: sorted((pid for pid, ok in usable[m][T].items() if ok), key=_sort_key) for m in models
        }
        a_not_b: dict[str, dict[str, list[ProblemId]]] = {}
        shared: dict[str, dict[str, int]] = {}
        for a in models:
            for b in models:
                if a == b:
                    continue
                ga, gb = usable[a][T], usable[b][T]
                only = [pid for pid in ga if ga[pid] and pid in gb and not gb[pid]]
                a_not_b.setdefault(a, {})[b] = sorted(only, key=_sort_key)
                shared.setdefault(a, {})[b] = sum(1 for pid in ga if pid in gb)
        by_T_out[T] = {"models": models, "solved": solved, "a_not_b": a_not_b, "shared_problems": shared}
    return {"k": budget_k, "by_T": by_T_out, "skipped": skipped}


def boundary_sets_to_json(sets: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`boundary_sets` output with string ``T`` keys, ready for ``json.dump``."""
    return {
        "k": sets["k"],
        "by_T": {str(T): value for T, value in sets["by_T"].items()},
        "skipped": list(sets["skipped"]),
    }
