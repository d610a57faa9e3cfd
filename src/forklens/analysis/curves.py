"""Compute-matched comparisons: accuracy-vs-cumulative-FLOPs curves, a validation-plateau stopping
rule, FLOPs-to-target per seed, percentile bootstrap intervals over seeds and paired differences.

Pure functions over logged (FLOPs, accuracy) points; nothing here trains. The stopping rule is a
small class a trainer callback calls once per validation evaluation.

Conventions: accuracies are fractions in [0, 1]; a target "within 1 point of the best plateau" is
``best - 0.01``. A seed that never reaches a target is *reported* (``reached=False``, FLOPs ``None``)
and counted in ``n_unreached``; it is never silently dropped from a table. For a FLOPs ratio such a
seed is right-censored (it needed more than its whole budget): :func:`flops_ratio_lb` counts it with its
budget as a lower bound.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence


@dataclass(frozen=True)
class Curve:
    """One run's validation curve: cumulative FLOPs (non-decreasing) and accuracy at each evaluation."""

    flops: tuple[float, ...]
    accuracy: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.flops) != len(self.accuracy):
            raise ValueError(f"curve has {len(self.flops)} FLOP values but {len(self.accuracy)} accuracies")
        if not self.flops:
            raise ValueError("a curve needs at least one evaluation")
        for a, b in zip(self.flops, self.flops[1:]):
            if b < a:
                raise ValueError(f"cumulative FLOPs must not decrease (got {a:g} then {b:g})")
        for x in self.flops + self.accuracy:
            if not math.isfinite(x):
                raise ValueError(f"curve values must be finite, got {x}")


def curve_from_metrics(rows: Iterable[Mapping], accuracy_key: str = "val/accuracy",
                       flops_key: str = "flops") -> Curve:
    """The curve of the metric rows (e.g. ``metrics.jsonl``) that carry ``accuracy_key``."""
    pts = [(float(r[flops_key]), float(r[accuracy_key])) for r in rows if accuracy_key in r]
    if not pts:
        raise ValueError(f"no row has {accuracy_key!r}")
    return Curve(tuple(p[0] for p in pts), tuple(p[1] for p in pts))


def best_so_far(curve: Curve) -> Curve:
    """The running maximum of accuracy (monotone non-decreasing), at the same FLOPs."""
    out, best = [], -math.inf
    for a in curve.accuracy:
        best = max(best, a)
        out.append(best)
    return Curve(curve.flops, tuple(out))


def accuracy_at(curve: Curve, flops: float) -> float | None:
    """Best validation accuracy reached with at most ``flops`` (None before the first evaluation)."""
    best = None
    for f, a in zip(curve.flops, curve.accuracy):
        if f > flops:
            break
        best = a if best is None else max(best, a)
    return best


def mean_curve(curves: Sequence[Curve], grid: Sequence[float]) -> list[float | None]:
    """Mean over seeds of the best-so-far accuracy at each FLOP budget in ``grid`` (None until every
    seed has an evaluation at or below the budget)."""
    out: list[float | None] = []
    for g in grid:
        vals = [accuracy_at(c, g) for c in curves]
        out.append(None if any(v is None for v in vals) else sum(vals) / len(vals))
    return out


class PlateauStopper:
    """Stop when the best validation accuracy has not improved by at least ``min_delta`` for
    ``patience`` consecutive evaluations (Prechelt-style early stopping, "Early Stopping - But When?",
    1998). ``update(accuracy)`` returns True when training should stop."""

    def __init__(self, patience: int = 3, min_delta: float = 0.005):
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        if min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta}")
        self.patience, self.min_delta = patience, min_delta
        self.best: float | None = None
        self.best_index = -1
        self.evaluations = 0
        self.stale = 0

    def update(self, accuracy: float) -> bool:
        if not math.isfinite(accuracy):
            raise ValueError(f"validation accuracy must be finite, got {accuracy}")
        if self.best is None or accuracy >= self.best + self.min_delta:
            self.best, self.best_index, self.stale = accuracy, self.evaluations, 0
        else:
            self.stale += 1
        self.evaluations += 1
        return self.stale >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "best_index": self.best_index, "evaluations": self.evaluations,
                "stale": self.stale}

    def load_state_dict(self, state: Mapping) -> None:
        self.best, self.best_index = state["best"], state["best_index"]
        self.evaluations, self.stale = state["evaluations"], state["stale"]


def stop_index(curve: Curve, patience: int, min_delta: float) -> int:
    """Index of the evaluation at which :class:`PlateauStopper` stops (the last one if it never does)."""
    stopper = PlateauStopper(patience, min_delta)
    for i, a in enumerate(curve.accuracy):
        if stopper.update(a):
            return i
    return len(curve.accuracy) - 1


def truncate(curve: Curve, index: int) -> Curve:
    return Curve(curve.flops[: index + 1], curve.accuracy[: index + 1])


@dataclass(frozen=True)
class TargetResult:
    target: float
    reached: bool
    flops: float | None  # cumulative FLOPs at the first evaluation >= target (None if never)


def flops_to_target(curve: Curve, target: float) -> TargetResult:
    """FLOPs at the first evaluation whose accuracy is >= ``target`` (with a 1e-12 tolerance)."""
    for f, a in zip(curve.flops, curve.accuracy):
        if a >= target - 1e-12:
            return TargetResult(target, True, f)
    return TargetResult(target, False, None)


def plateau_target(curves: Iterable[Curve], within: float = 0.01) -> float:
    """The shared target "within ``within`` of the best plateau": max accuracy over all curves - within."""
    return max(max(c.accuracy) for c in curves) - within


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int
    level: float

    def as_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n, "level": self.level}


def _percentile(sorted_vals: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), q in [0, 1]."""
    pos = q * (len(sorted_vals) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def bootstrap_ci(values: Sequence[float], level: float = 0.95, resamples: int = 10_000, seed: int = 0,
                 statistic=None) -> Interval:
    """Percentile bootstrap interval of the mean (or ``statistic``) over ``values`` (e.g. seeds).

    Resamples with replacement ``resamples`` times with ``random.Random(seed)``; the interval is
    clamped to contain the point estimate, so it always does (with n = 1 it is the single value)."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("bootstrap_ci needs at least one value")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if any(not math.isfinite(v) for v in vals):
        raise ValueError(f"values must be finite, got {vals}")
    stat = statistic or (lambda xs: math.fsum(xs) / len(xs))
    point = stat(vals)
    rng = random.Random(seed)
    n = len(vals)
    boots = sorted(stat([vals[rng.randrange(n)] for _ in range(n)]) for _ in range(resamples))
    alpha = (1 - level) / 2
    low, high = _percentile(boots, alpha), _percentile(boots, 1 - alpha)
    return Interval(point, min(low, point), max(high, point), n, level)


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], level: float = 0.95,
                      resamples: int = 10_000, seed: int = 0) -> Interval:
    """Bootstrap interval of mean(a[s] - b[s]) over the seeds both have (paired by seed)."""
    shared = sorted(set(a) & set(b))
    if not shared:
        raise ValueError(f"no shared seeds between {sorted(a)} and {sorted(b)}")
    return bootstrap_ci([a[s] - b[s] for s in shared], level, resamples, seed)


def paired_arm_diffs(per: Mapping[str, Mapping[int, Mapping]], pairs: Iterable[tuple[str, str]],
                     outcomes: Sequence[str]) -> dict[str, dict[str, dict]]:
    """``{"A_vs_B": {outcome: interval}}`` of the paired (by seed) differences A - B of each outcome, for the
    pairs whose arms both ran on a shared seed (``per[arm][seed][outcome]``; dashes in names become
    underscores)."""
    diffs = {}
    for a, b in pairs:
        if per.get(a) and per.get(b) and set(per[a]) & set(per[b]):
            diffs[f"{a}_vs_{b}".replace("-", "_")] = {
                k: paired_difference({s: r[k] for s, r in per[a].items()}, {s: r[k] for s, r in per[b].items()}).as_dict()
                for k in outcomes}
    return diffs


@dataclass
class MethodReport:
    """FLOPs-to-target of one method over seeds, with the search cost counted separately."""

    method: str
    target: float
    per_seed: dict[int, TargetResult]
    search_flops: float = 0.0
    interval: Interval | None = None
    unreached: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        reached = {s: r.flops for s, r in self.per_seed.items() if r.reached}
        mean = self.interval.mean if self.interval else None
        return {"method": self.method, "target": self.target,
                "per_seed": {str(s): r.flops for s, r in sorted(self.per_seed.items())},
                "n_seeds": len(self.per_seed), "n_unreached": len(self.unreached),
                "unreached_seeds": self.unreached, "flops_to_target": self.interval.as_dict() if self.interval else None,
                "search_flops": self.search_flops,
                "total_flops": None if mean is None else mean + self.search_flops,
                "reached_seeds": sorted(reached)}


def method_report(method: str, curves: Mapping[int, Curve], target: float, search_flops: float = 0.0,
                  level: float = 0.95, seed: int = 0) -> MethodReport:
    """FLOPs-to-``target`` per seed, its bootstrap interval over the seeds that reached it, and the
    seeds that did not (listed, never dropped silently). ``search_flops`` is the cost of the
    hyperparameter search that chose this method's settings, reported in its own column and in the
    total (mean FLOPs-to-target + search)."""
    if search_flops < 0:
        raise ValueError(f"search_flops must be >= 0, got {search_flops}")
    per_seed = {s: flops_to_target(c, target) for s, c in sorted(curves.items())}
    reached = [r.flops for r in per_seed.values() if r.reached]
    unreached = [s for s, r in per_seed.items() if not r.reached]
    interval = bootstrap_ci(reached, level, seed=seed) if reached else None
    return MethodReport(method, target, per_seed, float(search_flops), interval, unreached)


def flops_ratio(a: MethodReport, b: MethodReport, level: float = 0.95, seed: int = 0,
                include_search: bool = True) -> Interval | None:
    """Bootstrap interval of mean FLOPs-to-target of ``a`` over ``b`` (search cost included on both
    sides when ``include_search``), resampling seeds of each method independently. None when either
    method has no seed that reached the target."""
    fa = [r.flops for r in a.per_seed.values() if r.reached]
    fb = [r.flops for r in b.per_seed.values() if r.reached]
    if not fa or not fb:
        return None
    add_a = a.search_flops if include_search else 0.0
    add_b = b.search_flops if include_search else 0.0
    rng = random.Random(seed)

    def ratio(xs, ys):
        return (sum(xs) / len(xs) + add_a) / (sum(ys) / len(ys) + add_b)

    point = ratio(fa, fb)
    boots = sorted(ratio([fa[rng.randrange(len(fa))] for _ in fa], [fb[rng.randrange(len(fb))] for _ in fb])
                   for _ in range(10_000))
    alpha = (1 - level) / 2
    return Interval(point, min(point, _percentile(boots, alpha)), max(point, _percentile(boots, 1 - alpha)),
                    min(len(fa), len(fb)), level)


def flops_ratio_lb(a: MethodReport, b: MethodReport, budgets_a: Mapping[int, float], level: float = 0.95,
                   seed: int = 0, include_search: bool = True) -> dict | None:
    """Right-censored FLOPs-to-target ratio of ``a`` over the reference ``b``, paired by seed.

    A seed of ``a`` that never reached the target within its budget is *censored*, not missing: it
    would have needed more than its whole budget (``budgets_a[seed]``, the cumulative FLOPs of its last
    evaluation), so its ratio is at least ``budget / flops_to_target[b]``. Per seed the value is the exact
    ratio where ``a`` reached the target and that lower bound where it did not (``censored``); it is
    undefined where the reference never reached the target (no bound either way). Search cost is added
    on both sides when ``include_search``, as in :func:`flops_ratio`.

    Returns the bootstrap interval of the mean of the per-seed values over the defined seeds (a lower
    bound of the mean per-seed ratio whenever a seed is censored) with ``lower_bound: True``, the counts
    ``n_exact``, ``n_censored``, ``n_reference_unreached``, ``censored_min`` (the smallest censored bound;
    None when no seed is censored) and ``per_seed`` ``{seed: {"ratio_lb", "censored"}}`` (``ratio_lb`` None:
    reference unreached). None when no seed is defined. :func:`forklens.report.predictions.verdict`
    judges such an interval by its censoring rule."""
    add_a = a.search_flops if include_search else 0.0
    add_b = b.search_flops if include_search else 0.0
    per_seed: dict[str, dict] = {}
    values, censored_values = [], []
    for s in sorted(set(a.per_seed) & set(b.per_seed)):
        ra, rb = a.per_seed[s], b.per_seed[s]
        if not ra.reached and s not in budgets_a:
            raise ValueError(f"seed {s} of {a.method!r} never reached the target and has no budget")
        if not rb.reached or rb.flops + add_b <= 0:
            per_seed[str(s)] = {"ratio_lb": None, "censored": not ra.reached}
            continue
        num = ra.flops if ra.reached else float(budgets_a[s])
        value = (num + add_a) / (rb.flops + add_b)
        per_seed[str(s)] = {"ratio_lb": value, "censored": not ra.reached}
        values.append(value)
        if not ra.reached:
            censored_values.append(value)
    if not values:
        return None
    n_ref_unreached = sum(1 for v in per_seed.values() if v["ratio_lb"] is None)
    return {**bootstrap_ci(values, level, seed=seed).as_dict(), "lower_bound": True,
            "n_exact": len(values) - len(censored_values), "n_censored": len(censored_values),
            "n_reference_unreached": n_ref_unreached,
            "censored_min": min(censored_values) if censored_values else None, "per_seed": per_seed}


def numeric_leaves(data: Mapping, prefix: str = "") -> dict[str, float]:
    """Every finite int/float leaf of a nested summary as ``{"a.b.c": value}`` (bools and lists skipped;
    keys containing dots are bracketed, ``a.[b.c]``)."""
    out: dict[str, float] = {}
    for key, value in data.items():
        name = f"[{key}]" if "." in str(key) else str(key)
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(value, Mapping):
            out.update(numeric_leaves(value, path))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[path] = float(value)
    return out


def summarize_seeds(summaries: Mapping[int, Mapping], level: float = 0.95, seed: int = 0) -> dict:
    """Per-seed values and a bootstrap interval of the mean for every numeric field that all seeds'
    summaries share: ``{"seeds": [...], "per_seed": {field: [v...]}, "aggregate": {field: interval}}``.
    A field missing from some seed is listed under ``"partial"`` with the seeds that have it."""
    seeds = sorted(summaries)
    leaves = {s: numeric_leaves(summaries[s]) for s in seeds}
    names = sorted(set().union(*leaves.values())) if leaves else []
    per_seed, aggregate, partial = {}, {}, {}
    for name in names:
        have = [s for s in seeds if name in leaves[s]]
        if len(have) < len(seeds):
            partial[name] = have
            continue
        vals = [leaves[s][name] for s in seeds]
        per_seed[name] = vals
        aggregate[name] = bootstrap_ci(vals, level, resamples=2000, seed=seed).as_dict()
    return {"seeds": seeds, "per_seed": per_seed, "aggregate": aggregate, "partial": partial}


def compare_methods(curves: Mapping[str, Mapping[int, Curve]], reference: str, *, target: float | None = None,
                    within: float = 0.01, search_flops: Mapping[str, float] | None = None, level: float = 0.95,
                    seed: int = 0) -> dict:
    """The compute-matched comparison of methods against ``reference``, as JSON for an artifact.

    ``curves`` holds each method's validation curves per seed, already cut where its stopping rule
    stopped. The target is ``target`` or, by default, ``within`` below the best accuracy any run
    reached (the best plateau). Returns the target and its rule, per-method FLOPs-to-target reports
    (seeds that never reach it listed), each method's plateau (best validation accuracy) with a
    bootstrap interval, and against the reference: the FLOPs ratio with and without search cost
    (``ratios``: over the seeds that reached the target; ``flops_to_target_ratio_lb``: censored, paired by
    seed, :func:`flops_ratio_lb`, where a seed that never reached it counts with its whole budget as a
    lower bound) and the plateau difference paired by seed."""
    if reference not in curves:
        raise ValueError(f"reference method {reference!r} is not among {sorted(curves)}")
    search = dict(search_flops or {})
    unknown = set(search) - set(curves)
    if unknown:
        raise ValueError(f"search_flops names unknown method(s) {sorted(unknown)}")
    rule = f"fixed accuracy {target}" if target is not None else f"best plateau over all runs - {within}"
    if target is None:
        target = plateau_target([c for by_seed in curves.values() for c in by_seed.values()], within)
    reports = {m: method_report(m, by_seed, target, search.get(m, 0.0), level, seed) for m, by_seed in curves.items()}
    plateaus = {m: {s: max(c.accuracy) for s, c in by_seed.items()} for m, by_seed in curves.items()}
    out: dict = {"target": target, "target_rule": rule, "level": level,
                 "methods": {m: r.as_dict() for m, r in reports.items()},
                 "plateau": {m: bootstrap_ci(list(p.values()), level, seed=seed).as_dict() for m, p in plateaus.items()},
                 "ratios": {}, "flops_to_target_ratio_lb": {}, "plateau_difference": {}}
    for m in curves:
        if m == reference:
            continue
        with_s = flops_ratio(reports[m], reports[reference], level, seed, include_search=True)
        without = flops_ratio(reports[m], reports[reference], level, seed, include_search=False)
        out["ratios"][f"{m}/{reference}"] = {"with_search": with_s.as_dict() if with_s else None,
                                             "without_search": without.as_dict() if without else None}
        budgets = {s: c.flops[-1] for s, c in curves[m].items()}
        out["flops_to_target_ratio_lb"][f"{m}/{reference}"] = {
            key: flops_ratio_lb(reports[m], reports[reference], budgets, level, seed, include_search=inc)
            for key, inc in (("with_search", True), ("without_search", False))}
        out["plateau_difference"][f"{m}-{reference}"] = paired_difference(plateaus[m], plateaus[reference],
                                                                          level, seed=seed).as_dict()
    return out
