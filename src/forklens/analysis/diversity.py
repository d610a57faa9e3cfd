"""Strategy diversity of multi-turn episodes: distinct tool-call sequences per problem.

An episode's *strategy* is the ordered tuple of tool calls it made (``("?A(qwe)", "?C(rty)")``; the
empty tuple for an episode that answered without tools). Per ``(model, T, problem)`` we count the
distinct strategies among its sampled episodes and average over problems; this is the "unique query
sequences per question" of arXiv 2604.14877. The count grows with the number of samples, so compare
models at the same ``n``.

:func:`strategy_overlap` measures how much of one model's behaviour another already had: the share
of model A's episodes whose strategy also occurs among model B's episodes on the same problem and
``T`` (sample-weighted), or the share of A's distinct strategies that B also produced.

Records are the sample dicts of ``forklens passk`` files: ``problem_id``, optional ``model`` and
``T``, and ``calls`` (a list of call strings).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from typing import Any, Hashable, Iterable, Mapping

from forklens.analysis.passk import DEFAULT_MODEL
from forklens.errors import DataError

__all__ = ["strategy", "strategy_counts", "distinct_strategies", "diversity_table", "strategy_overlap"]

Strategy = tuple[str, ...]
#: ``{model: {T: {problem_id: Counter(strategy -> episodes)}}}``
StrategyCounts = dict[str, dict[int, dict[Hashable, Counter]]]


def strategy(record: Mapping[str, Any]) -> Strategy:
    """The tool-call sequence of one sample record (its ``calls`` field)."""
    if "calls" not in record:
        raise DataError(f"sample record for problem {record.get('problem_id')!r} has no 'calls' field "
                        "(strategy diversity needs the tool calls of each episode)")
    calls = record["calls"]
    if not isinstance(calls, (list, tuple)) or not all(isinstance(c, str) for c in calls):
        raise DataError(f"'calls' must be a list of strings, got {calls!r}")
    return tuple(calls)


def strategy_counts(records: Iterable[Mapping[str, Any]], correct_only: bool = False) -> StrategyCounts:
    """How many episodes used each strategy, per ``(model, T, problem)``. With ``correct_only``, only
    episodes marked ``correct`` count (problems keep an empty counter so they stay in the means)."""
    out: StrategyCounts = {}
    for r in records:
        model = r.get("model") or DEFAULT_MODEL
        T = int(r.get("T") or 0)
        counter = out.setdefault(model, {}).setdefault(T, {}).setdefault(r["problem_id"], Counter())
        if correct_only and not r.get("correct"):
            continue
        counter[strategy(r)] += 1
    return out


def distinct_strategies(records: Iterable[Mapping[str, Any]], correct_only: bool = False
                        ) -> dict[str, dict[int, dict[Hashable, int]]]:
    """Number of distinct strategies per ``(model, T, problem)``."""
    return {m: {T: {pid: len(c) for pid, c in by_pid.items()} for T, by_pid in by_T.items()}
            for m, by_T in strategy_counts(records, correct_only).items()}


def _entropy(counter: Counter) -> float:
    total = sum(counter.values())
    return -sum(v / total * math.log(v / total) for v in counter.values()) if total else 0.0


def diversity_table(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[int, dict[str, float]]]:
    """Per ``(model, T)``: mean distinct strategies per problem (all episodes and correct episodes
    only), mean strategy entropy per problem (nats), mean tool calls per episode, episodes per problem."""
    records = list(records)
    counts = strategy_counts(records)
    correct = strategy_counts(records, correct_only=True)
    table: dict[str, dict[int, dict[str, float]]] = {}
    for model, by_T in sorted(counts.items()):
        for T, by_pid in sorted(by_T.items()):
            n_eps = [sum(c.values()) for c in by_pid.values()]
            calls = sum(len(s) * v for c in by_pid.values() for s, v in c.items())
            table.setdefault(model, {})[T] = {
                "problems": len(by_pid),
                "episodes_per_problem": statistics.mean(n_eps),
                "distinct_strategies": statistics.mean(len(c) for c in by_pid.values()),
                "distinct_correct_strategies": statistics.mean(len(c) for c in correct[model][T].values()),
                "strategy_entropy": statistics.mean(_entropy(c) for c in by_pid.values()),
                "calls_per_episode": calls / max(1, sum(n_eps)),
            }
    return table


def strategy_overlap(records: Iterable[Mapping[str, Any]], model: str, reference: str, T: int,
                     weighted: bool = True) -> float | None:
    """Share of ``model``'s behaviour at ``T`` that ``reference`` also showed, averaged over problems
    both were sampled on: episodes (``weighted``) or distinct strategies whose strategy occurs among
    ``reference``'s episodes on that problem. None when there are no shared problems."""
    counts = strategy_counts(records)
    a = counts.get(model, {}).get(T, {})
    b = counts.get(reference, {}).get(T, {})
    shares = []
    for pid, ca in a.items():
        if pid not in b or not ca:
            continue
        seen = set(b[pid])
        if weighted:
            shares.append(sum(v for s, v in ca.items() if s in seen) / sum(ca.values()))
        else:
            shares.append(sum(1 for s in ca if s in seen) / len(ca))
    return statistics.mean(shares) if shares else None
