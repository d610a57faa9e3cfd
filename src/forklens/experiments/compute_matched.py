"""Pieces of a compute-matched method comparison (issue 14): a validation slice held out of the
training split, a validation callback per run, the per-run curve record, the method comparison and
the accuracy-vs-FLOPs plot (a thin line per seed, the mean bold).

The comparison itself is :func:`forklens.analysis.curves.compare_methods`; this module only wires
runs to it.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Mapping, Sequence

from forklens.analysis.curves import Curve, PlateauStopper, compare_methods, mean_curve
from forklens.analysis.evaluate import EvalConfig
from forklens.errors import ConfigError
from forklens.train.validation import ValidationCallback


def validation_split(train: Sequence, test: Sequence, n: int) -> tuple[list, list]:
    """``(validation, fit)``: the last ``n`` distinct prompts of the training split, and the training
    problems left once every problem with one of those prompts is removed (so no validation prompt is
    ever trained on, even where the training list repeats a prompt). Raises when a validation prompt is
    a test prompt (the split would leak) or when too few distinct prompts exist."""
    if n < 1:
        raise ConfigError(f"val_problems must be >= 1, got {n}")
    val, seen = [], set()
    for p in reversed(list(train)):
        if p.prompt not in seen:
            seen.add(p.prompt)
            val.append(p)
        if len(val) == n:
            break
    if len(val) < n:
        raise ConfigError(f"val_problems={n}: the training split has only {len(val)} distinct prompts")
    val.reverse()
    leaked = seen & {p.prompt for p in test}
    if leaked:
        raise ConfigError(f"validation problems overlap the test split ({len(leaked)} shared prompts, e.g. "
                          f"{sorted(leaked)[0]!r}); the task's train and test splits must be disjoint")
    fit = [p for p in train if p.prompt not in seen]
    if not fit:
        raise ConfigError(f"val_problems={n} leaves no training problems")
    return val, fit


def validation_callback(task, val: Sequence, every: int, patience: int, min_delta: float,
                        ev: EvalConfig, keep_best: bool = False) -> ValidationCallback:
    """Greedy validation on ``val`` every ``every`` steps, stopped by the plateau rule (``keep_best``:
    the callback keeps the best-validation weights)."""
    return ValidationCallback(task, val, every=every, stopper=PlateauStopper(patience, min_delta),
                              config=replace(ev, temperature=0.0, n=1), keep_best=keep_best)


def curve_record(callback: ValidationCallback, max_steps: int) -> dict:
    """What the summary keeps of one run's validation curve (JSON)."""
    steps, flops, acc = zip(*callback.history)
    return {"steps": list(steps), "flops": list(flops), "accuracy": list(acc),
            "best_accuracy": max(acc), "stopped_early": bool(steps[-1] < max_steps),
            "stopper": callback.stopper.state_dict() if callback.stopper else None}


def as_curves(records: Mapping[str, Mapping[int, Mapping]]) -> dict[str, dict[int, Curve]]:
    return {m: {int(s): Curve(tuple(r["flops"]), tuple(r["accuracy"])) for s, r in by_seed.items()}
            for m, by_seed in records.items() if by_seed}


def comparisons(records: Mapping[str, Mapping[int, Mapping]], reference: str, search_flops: Mapping[str, float],
                within: float, fixed_target: float) -> dict:
    """``{"comparison": target = best plateau - within, "comparison_fixed": target = fixed_target}``,
    or ``{}`` when the reference method has no curve yet."""
    curves = as_curves(records)
    if reference not in curves:
        return {}
    search = {m: f for m, f in search_flops.items() if m in curves}
    return {"comparison": compare_methods(curves, reference, within=within, search_flops=search),
            "comparison_fixed": compare_methods(curves, reference, target=fixed_target, search_flops=search)}


def plot_curves(records: Mapping[str, Mapping[int, Mapping]], stem: Path, title: str,
                hlines: Mapping[str, float] | None = None) -> list[str]:
    """Validation accuracy vs cumulative FLOPs: a thin line per seed, the mean of the best-so-far
    accuracy over seeds bold (drawn from where every seed has an evaluation)."""
    from forklens.report.plots import new_figure, save_figure

    fig, ax = new_figure(7.5, 4.8)
    draw_curves(ax, records, title, hlines)
    return [str(p) for p in save_figure(fig, stem)]


def draw_curves(ax, records: Mapping[str, Mapping[int, Mapping]], title: str,
                hlines: Mapping[str, float] | None = None) -> None:
    """:func:`plot_curves` on the matplotlib axes ``ax`` (one panel of a larger figure)."""
    for i, (name, by_seed) in enumerate(records.items()):
        if not by_seed:
            continue
        color = f"C{i}"
        for r in by_seed.values():
            ax.plot(r["flops"], [100 * a for a in r["accuracy"]], color=color, linewidth=0.7, alpha=0.45,
                    marker="o" if len(r["flops"]) == 1 else None)  # a run that never trained: one point
        curves = as_curves({name: by_seed})[name].values()
        lo = max(c.flops[0] for c in curves)
        hi = max(c.flops[-1] for c in curves)
        grid = [lo * (hi / lo) ** (k / 99) for k in range(100)] if hi > lo > 0 else [lo]
        mean = mean_curve(list(curves), grid)
        pts = [(g, 100 * m) for g, m in zip(grid, mean) if m is not None and math.isfinite(m)]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, linewidth=2.4, marker="o" if len(pts) == 1 else None,
                label=f"{name} (mean best-so-far, {len(by_seed)} seeds)")
    for j, (label, y) in enumerate((hlines or {}).items()):
        ax.axhline(100 * y, color="0.5", linestyle="--" if j == 0 else ":", linewidth=1, label=label)
    ax.set_xscale("log")
    ax.set_ylim(-2, 102)
    ax.set_xlabel("cumulative FLOPs (rollouts + training; log scale)")
    ax.set_ylabel("validation greedy accuracy (%)")
    ax.set_title(title)
    ax.legend(loc="best", fontsize="small", framealpha=0.85)
