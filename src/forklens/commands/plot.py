"""`forklens plot`: training curves of one or more runs from their metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

from forklens.commands._common import add_overwrite_arg, console
from forklens.errors import DataError
from forklens.report.plots import plot_training_curves
from forklens.runfolder import check_out_file
from forklens.tasks.dataset import iter_jsonl, read_utf8

DEFAULT_METRICS = ("reward_mean", "loss")


def register(sub) -> None:
    p = sub.add_parser("plot", help="Plot training curves (reward, loss, ...) of runs from their metrics.jsonl.",
                       description="One panel per metric, one line per run. RUN is a run folder (with metrics.jsonl) "
                       "or a metrics.jsonl file; name a line with LABEL=RUN.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="Run folder or metrics.jsonl (LABEL=RUN to name it).")
    p.add_argument("--metric", action="append", default=None, metavar="KEY",
                   help="Metric to plot (repeatable; default: reward_mean and loss, those present).")
    p.add_argument("--x", default="step", choices=["step", "flops", "wall_s"], help="Horizontal axis (default step).")
    p.add_argument("--smooth", type=int, default=1, help="Trailing moving average over N points (default 1: none).")
    p.add_argument("--out", default="curves.png", help="Image file to write (.png or .svg; default curves.png).")
    add_overwrite_arg(p)
    p.set_defaults(func=run)


def read_run(spec: str) -> tuple[str, list[dict]]:
    label, sep, path = spec.partition("=")
    if not sep:
        label, path = "", spec
    p = Path(path)
    file = p / "metrics.jsonl" if p.is_dir() else p
    if not file.is_file():
        raise DataError(f"{path}: no metrics.jsonl there" if p.is_dir() else f"{path} does not exist")
    rows = [row for _, row in iter_jsonl(file, read_utf8(file))]
    if not rows:
        raise DataError(f"{file} is empty: the run logged no step")
    return label or (p.name if p.is_dir() else p.parent.name or p.stem), rows


def run(args) -> int:
    if args.smooth < 1:
        raise DataError(f"--smooth must be >= 1, got {args.smooth}")
    out = Path(args.out)
    if out.suffix not in (".png", ".svg"):
        raise DataError(f"--out {out}: expected a .png or .svg file name")
    check_out_file(out, overwrite=args.overwrite)
    runs: dict[str, list[dict]] = {}
    for spec in args.runs:
        label, rows = read_run(spec)
        if label in runs:
            raise DataError(f"two runs are labelled {label!r}; name them with LABEL=RUN")
        runs[label] = rows
    present = {k for rows in runs.values() for r in rows for k, v in r.items() if isinstance(v, (int, float))}
    metrics = args.metric or [m for m in DEFAULT_METRICS if m in present]
    missing = [m for m in metrics if m not in present]
    if missing or not metrics:
        shown = ", ".join(sorted(present - {"step"})[:30])
        raise DataError(f"no run logged {', '.join(missing) or ' or '.join(DEFAULT_METRICS)}; logged metrics: {shown}")
    if args.x not in present:
        raise DataError(f"--x {args.x}: the runs did not log it")
    paths = plot_training_curves(runs, metrics, out.with_suffix(""), x=args.x, smooth=args.smooth,
                                 formats=(out.suffix[1:],))
    console.print(f"wrote {paths[0]} ({len(runs)} run{'s' if len(runs) != 1 else ''}: {', '.join(metrics)} vs {args.x})",
                  highlight=False, soft_wrap=True)
    return 0
