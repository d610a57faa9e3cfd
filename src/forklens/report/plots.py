"""Static figures for reports (PNG + SVG).

Figures are built on :class:`matplotlib.figure.Figure` directly, never through ``pyplot``, so they
need no display, do not touch the global backend and are safe to make from library code and tests.
Each ``plot_*`` function takes plain data, writes ``<stem>.png`` and ``<stem>.svg`` and returns the
paths written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from matplotlib import rcParams
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

__all__ = ["new_figure", "save_figure", "series_label", "plot_pass_at_k", "plot_curves_vs_flops", "plot_training_curves",
           "plot_rank_distribution", "DEFAULT_FORMATS"]

DEFAULT_FORMATS: tuple[str, ...] = ("png", "svg")
_LINESTYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _color_cycle() -> list[str]:
    colors = rcParams["axes.prop_cycle"].by_key().get("color")
    return list(colors) if colors else [f"C{i}" for i in range(10)]


def new_figure(width: float = 7.0, height: float = 4.5) -> tuple[Figure, object]:
    """A figure with one axes and an Agg canvas attached, styled for reports."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.grid(True, which="major", alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig, ax


def save_figure(
    fig: Figure,
    stem: str | Path,
    formats: Sequence[str] = DEFAULT_FORMATS,
    dpi: int = 150,
) -> list[Path]:
    """Write ``fig`` as ``<stem>.<fmt>`` for each format (creating the folder); return the paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        fig.savefig(path, format=fmt, dpi=dpi)
        paths.append(path)
    return paths


def series_label(model: str, T: int, *, several_models: bool, several_T: bool) -> str:
    """A legend label for a ``(model, T)`` series that only names what varies."""
    parts = []
    if several_models or not several_T:
        parts.append(model)
    if several_T:
        parts.append(f"T={T}")
    return ", ".join(parts)


def plot_pass_at_k(
    curves: Mapping[str, Mapping[int, Mapping[int, float]]],
    stem: str | Path,
    *,
    problem_counts: Mapping[str, Mapping[int, int]] | None = None,
    title: str = "pass@k (unbiased estimator)",
    formats: Sequence[str] = DEFAULT_FORMATS,
) -> list[Path]:
    """Plot mean pass@k against k on a log-2 axis, one line per ``(model, T)``.

    ``curves`` is ``{model: {T: {k: value}}}`` (integer ``T`` and ``k``), as in
    :attr:`forklens.analysis.passk.PassAtKTable.mean`. ``problem_counts`` (``{model: {T: count}}``)
    adds the number of problems to each legend entry. Writes ``<stem>.png`` / ``<stem>.svg``.
    """
    models = sorted(curves)
    all_T = sorted({T for m in models for T in curves[m]})
    several_models = len(models) > 1
    several_T = len(all_T) > 1
    colors = _color_cycle()

    fig, ax = new_figure()
    all_k: set[int] = set()
    plotted = 0
    for mi, model in enumerate(models):
        for ti, T in enumerate(all_T):
            by_k = curves[model].get(T)
            if not by_k:
                continue
            ks = sorted(by_k)
            all_k.update(ks)
            label = series_label(model, T, several_models=several_models, several_T=several_T)
            if problem_counts and model in problem_counts and T in problem_counts[model]:
                count = problem_counts[model][T]
                label += f" ({count} problem{'s' if count != 1 else ''})"
            ax.plot(
                ks,
                [by_k[k] for k in ks],
                label=label,
                color=colors[(mi if several_models else ti) % len(colors)],
                linestyle=_LINESTYLES[ti % len(_LINESTYLES)] if several_models else "-",
                marker=_MARKERS[(mi if several_models else ti) % len(_MARKERS)],
                markersize=4,
                linewidth=1.6,
            )
            plotted += 1

    ax.set_xscale("log", base=2)
    if all_k:
        ticks = sorted(all_k)
        lo, hi = ticks[0], ticks[-1]
        ax.set_xlim(lo / 1.3, hi * 1.3)
        if len(ticks) > 12:  # keep labels readable: at most ~12 ticks
            step = -(-len(ticks) // 12)
            ticks = ticks[::step] + ([ticks[-1]] if ticks[-1] not in ticks[::step] else [])
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: str(int(round(x)))))
    else:
        ax.text(0.5, 0.5, "no pass@k values to plot", transform=ax.transAxes, ha="center", va="center")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("k (samples drawn per problem, log$_2$ scale)")
    ax.set_ylabel("mean pass@k over problems")
    ax.set_title(title)
    if plotted:
        ax.legend(loc="best", fontsize="small", framealpha=0.85)
    return save_figure(fig, stem, formats)


def plot_curves_vs_flops(
    curves: Mapping[str, Mapping[int, tuple[Sequence[float], Sequence[float]]]],
    stem: str | Path,
    *,
    ylabel: str = "validation accuracy",
    title: str = "accuracy vs cumulative FLOPs",
    formats: Sequence[str] = DEFAULT_FORMATS,
) -> list[Path]:
    """One line per (method, seed), thin, and the mean over seeds bold, against cumulative FLOPs.

    ``curves`` is ``{method: {seed: (flops, values)}}``. The mean at each FLOP value of the union of
    the seeds' evaluation points is the mean of each seed's last value at or below it (drawn only
    where every seed has one), i.e. a step function that never interpolates between evaluations."""
    fig, ax = new_figure()
    colors = _color_cycle()
    for mi, method in enumerate(sorted(curves)):
        color = colors[mi % len(colors)]
        seeds = curves[method]
        for seed in sorted(seeds):
            xs, ys = seeds[seed]
            ax.plot(xs, ys, color=color, linewidth=0.7, alpha=0.45, drawstyle="steps-post")
        grid = sorted({x for xs, _ in seeds.values() for x in xs})
        mean_x, mean_y = [], []
        for g in grid:
            vals = []
            for xs, ys in seeds.values():
                at = [y for x, y in zip(xs, ys) if x <= g]
                if not at:
                    break
                vals.append(at[-1])
            else:
                mean_x.append(g)
                mean_y.append(sum(vals) / len(vals))
        ax.plot(mean_x, mean_y, color=color, linewidth=2.4, drawstyle="steps-post",
                label=f"{method} (mean of {len(seeds)} seed{'s' if len(seeds) != 1 else ''})")
    ax.set_xlabel("cumulative FLOPs")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if curves:
        ax.legend(loc="best", fontsize="small", framealpha=0.85)
    return save_figure(fig, stem, formats)


def plot_training_curves(
    runs: Mapping[str, Sequence[Mapping[str, float]]],
    metrics: Sequence[str],
    stem: str | Path,
    *,
    x: str = "step",
    smooth: int = 1,
    formats: Sequence[str] = DEFAULT_FORMATS,
) -> list[Path]:
    """One panel per metric, one line per run, against ``x`` (a key of the rows: step, flops, wall_s).

    ``runs`` is ``{label: metric rows}`` (the lines of ``metrics.jsonl``). Rows without the metric or
    with a non-finite value are skipped; ``smooth > 1`` draws a trailing moving average over that
    many points beside the raw values (thin)."""
    n = len(metrics)
    fig = Figure(figsize=(7.0, 2.6 * n + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    colors = _color_cycle()
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(n, 1, i + 1)
        ax.grid(True, which="major", alpha=0.3)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        for ri, (label, rows) in enumerate(runs.items()):
            pts = [(float(r[x]), float(r[metric])) for r in rows
                   if isinstance(r.get(metric), (int, float)) and isinstance(r.get(x), (int, float))
                   and r[metric] == r[metric] and abs(r[metric]) != float("inf")]
            if not pts:
                continue
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            color = colors[ri % len(colors)]
            if smooth > 1:
                ax.plot(xs, ys, color=color, linewidth=0.7, alpha=0.35)
                ys = [sum(ys[max(0, j - smooth + 1): j + 1]) / len(ys[max(0, j - smooth + 1): j + 1])
                      for j in range(len(ys))]
            ax.plot(xs, ys, color=color, linewidth=1.8, label=label)
        ax.set_ylabel(metric)
        if i == n - 1:
            ax.set_xlabel({"flops": "cumulative FLOPs", "wall_s": "wall seconds"}.get(x, x))
        if i == 0 and len(runs) > 1:
            ax.legend(loc="best", fontsize="small", framealpha=0.85)
    return save_figure(fig, stem, formats)


def _grouped_bars(ax, series: Mapping[str, Sequence[float]], categories: Sequence[str],
                  errors: Mapping[str, list] | None = None) -> None:
    """One bar per (series, category), series side by side within a category (``errors``: yerr per series)."""
    colors = _color_cycle()
    width = 0.8 / max(1, len(series))
    for si, (name, ys) in enumerate(series.items()):
        xs = [ci + (si - (len(series) - 1) / 2) * width for ci in range(len(categories))]
        extra = {"yerr": errors[name], "capsize": 3} if errors else {}
        ax.bar(xs, ys, width=width, color=colors[si % len(colors)], label=name, **extra)
    ax.set_xticks(range(len(categories)))
    ax.set_xticklabels(list(categories))


def plot_rank_distribution(
    dists: Mapping[str, Mapping[str, float | None]],
    stem: str | Path,
    *,
    title: str = "base rank of the tuned model's token at disagreements",
    formats: Sequence[str] = DEFAULT_FORMATS,
) -> list[Path]:
    """Grouped bars: for each label (e.g. an organism variant) the share of disagreements per base-rank
    bucket (``{label: {bucket: share}}``, buckets in the first label's order; ``None`` draws nothing)."""
    fig, ax = new_figure(width=8.0)
    labels = list(dists)
    buckets = list(next(iter(dists.values()))) if dists else []
    _grouped_bars(ax, {label: [dists[label].get(b) or 0.0 for b in buckets] for label in labels},
                  [f"rank {b}" for b in buckets])
    ax.set_ylabel("share of disagreements (mean over seeds)")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    if labels:
        ax.legend(loc="upper right", fontsize="small", framealpha=0.85)
    return save_figure(fig, stem, formats)


def plot_bars(groups: Mapping[str, Mapping[str, Mapping[str, float]]], stem: str | Path, *, title: str,
              ylabel: str, formats: Sequence[str] = DEFAULT_FORMATS) -> list[Path]:
    """Grouped bars with error bars: ``{series: {category: {"mean", "low", "high"}}}`` (an interval per
    bar, e.g. :meth:`forklens.analysis.curves.Interval.as_dict`); categories in the first series' order."""
    fig, ax = new_figure(width=8.0)
    names = list(groups)
    cats = list(next(iter(groups.values()))) if groups else []
    _grouped_bars(ax, {n: [groups[n][c]["mean"] for c in cats] for n in names}, cats,
                  {n: [[groups[n][c]["mean"] - groups[n][c]["low"] for c in cats],
                       [groups[n][c]["high"] - groups[n][c]["mean"] for c in cats]] for n in names})
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize="medium")
    if names:
        ax.legend(loc="upper right", fontsize="small", framealpha=0.85)
    return save_figure(fig, stem, formats)
