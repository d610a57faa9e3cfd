"""``forklens results``: produce stamped artifacts under results/ and render docs tables from them.

- ``forklens results run NAME --seeds 0,1,2,3,4 --cmd 'demo --quick'`` runs a forklens command once per seed
  (``--seed S --out WORK/seed-S`` appended), then writes ``results/NAME/``: every seed's
  ``summary.json``, its ``metrics.jsonl`` files, a bootstrap interval over seeds for every numeric
  field, an optional curve plot, and the stamp (commit, time, hardware, versions, the exact command).
- ``forklens results verdict PREDICTIONS.yaml`` prints each pre-registered prediction beside its outcome.
- ``forklens results render [--check]`` fills the ``<!-- results:NAME -->`` blocks of every docs/*.md
  and README.md from the artifacts (table specs: results/tables.yaml); ``--check`` only reports blocks
  whose text differs from their artifacts, and numbers in prose that cite no artifact
  (:func:`forklens.report.tables.check_file`), and exits 1 if there is any.
- ``forklens results run NAME --once --cmd 'experiment sft-then-rl --quick'`` runs a command that runs
  its own seeds once (``--out WORK/run`` appended); its ``summary.json`` (which must list its ``seeds``)
  becomes the artifact's summary as it is, with its metrics files and the plots it wrote.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from forklens.commands._common import console
from forklens.errors import ConfigError, DataError

DEFAULT_RESULTS = "results"


def register(sub) -> None:
    p = sub.add_parser("results", help="Stamped result artifacts under results/ and docs rendered from them.",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    rs = p.add_subparsers(dest="results_command", metavar="ACTION")

    run = rs.add_parser("run", help="Run a forklens command for several seeds and write a stamped artifact.")
    run.add_argument("name", help="artifact name: results/NAME/")
    run.add_argument("--seeds", default=None, help="comma-separated seeds (default: 0,1,2,3,4)")
    run.add_argument("--once", action="store_true",
                     help="run the command once: it runs its own seeds (e.g. `experiment sft-then-rl --seeds 5`) and "
                     "its summary.json, listing them under `seeds`, is the artifact's summary")
    run.add_argument("--results", default=DEFAULT_RESULTS, help="results folder (default: results)")
    run.add_argument("--work", default=None, help="where the runs write (default: a temporary folder)")
    run.add_argument("--curve", default=None, metavar="KEY",
                     help="also plot metrics.jsonl KEY against cumulative FLOPs, a line per seed, mean bold")
    run.add_argument("--cmd", required=True, metavar="'COMMAND ...'",
                     help="the forklens command to run per seed, quoted, e.g. --cmd 'demo --quick'")
    run.set_defaults(func=run_seeds)

    render = rs.add_parser("render", help="Fill the marked tables of the docs from the artifacts.")
    render.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block is stale")
    render.add_argument("--specs", default=None, help="table specs (default: RESULTS/tables.yaml)")
    render.add_argument("--results", default=DEFAULT_RESULTS, help="results folder (default: results)")
    render.add_argument("docs", nargs="*", default=None, help="markdown files (default: every docs/*.md "
                        "and README.md)")
    render.set_defaults(func=render_docs)

    verdict = rs.add_parser("verdict", help="Show each pre-registered prediction beside its outcome in an artifact.")
    verdict.add_argument("predictions", help="predictions file, e.g. results/predictions/fork-vs-rl.yaml")
    verdict.add_argument("--artifact", default=None, help="artifact folder (default: the file's `artifact`)")
    verdict.set_defaults(func=show_verdicts)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds must list at least one seed, each once; got {text!r}")
    return seeds


def _metrics_files(run_dir: Path, summary: dict) -> dict[str, Path]:
    """metrics.jsonl files of one run: those under its folder plus any the summary points to."""
    found = {p.resolve() for p in run_dir.rglob("metrics.jsonl")}
    for value in _strings(summary):
        if value.endswith("metrics.jsonl") and Path(value).is_file():
            found.add(Path(value).resolve())
    out = {}
    for path in sorted(found):
        try:
            rel = path.relative_to(run_dir.resolve()).parent
        except ValueError:
            rel = Path(path.parent.name)
        out["_".join(rel.parts) or "run"] = path
    return out


def _strings(data):
    if isinstance(data, dict):
        for v in data.values():
            yield from _strings(v)
    elif isinstance(data, str):
        yield data


def run_seeds(args: argparse.Namespace) -> int:
    from forklens.analysis.curves import summarize_seeds
    from forklens.analysis.prompts import read_jsonl
    from forklens.report.artifacts import command_line, make_stamp, plots_dir, write_artifact

    if args.once and (args.seeds is not None or args.curve):
        raise ConfigError("--once runs the command once: it sets its own seeds and writes its own plots; "
                          "drop --seeds and --curve")
    seeds = [] if args.once else _parse_seeds(args.seeds or "0,1,2,3,4")
    cmd = shlex.split(args.cmd)
    if not cmd:
        raise ConfigError("--cmd is empty; give the forklens command, e.g. --cmd 'demo --quick'")
    if any(c in ("--seed", "--out") or c.startswith(("--seed=", "--out=")) for c in cmd):
        raise ConfigError("do not pass --seed or --out: `results run` sets them for each seed")
    stamp_command = command_line()  # the wrapper's own command line: what reproduces the artifact
    stamp = make_stamp(args.name, seeds, stamp_command)  # taken before the runs: the code that ran
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix=f"forklens-{args.name}-"))
    if args.once:
        return _run_once(args, cmd, stamp, work)
    runs, metrics, per_seed = {}, {}, {}
    for seed in seeds:
        out = work / f"seed-{seed}"
        argv, summary = _run_command(cmd + ["--seed", str(seed)], out, f"seed {seed}")
        runs[f"seed-{seed}"] = {"command": " ".join(["python", *argv[1:]]), "summary": summary}
        per_seed[seed] = {k: v for k, v in summary.items() if k != "config"}
        for tag, path in _metrics_files(out, summary).items():
            metrics[f"seed-{seed}_{tag}"] = [row for _, row in read_jsonl(path, "metrics")]
    stats = summarize_seeds(per_seed)
    folder = write_artifact(args.results, args.name, {"runs": runs, **stats}, seeds=seeds, metrics=metrics,
                            stamp=stamp)
    if args.curve:
        _plot_curve(folder, plots_dir, metrics, args.curve, args.name)
    console.print(f"wrote {folder}/ (artifact.json, metrics/, plots/); work folders in {work}", highlight=False)
    return 0


def _run_command(cmd: list[str], out: Path, label: str) -> tuple[list[str], dict]:
    """Run ``forklens CMD --out OUT`` in a subprocess; its argv and the summary.json it wrote."""
    argv = [sys.executable, "-m", "forklens.cli", *cmd, "--out", str(out)]
    console.print(f"[bold]{label}[/]: {' '.join(argv[1:])}", highlight=False)
    rc = subprocess.run(argv).returncode
    if rc != 0:
        raise DataError(f"{label}: `{' '.join(argv[1:])}` exited with status {rc}; no artifact written")
    summary_path = out / "summary.json"
    if not summary_path.is_file():
        raise DataError(f"{label}: the command wrote no {summary_path}; `results run` needs a summary.json")
    return argv, json.loads(summary_path.read_text(encoding="utf-8"))


def _run_once(args: argparse.Namespace, cmd: list[str], stamp: dict, work: Path) -> int:
    """``results run --once``: the command's own summary (its ``seeds`` into the stamp), metrics and plots."""
    import shutil

    from forklens.analysis.prompts import read_jsonl
    from forklens.report.artifacts import plots_dir, write_artifact

    out = work / "run"
    _, summary = _run_command(cmd, out, "run")
    seeds = summary.get("seeds")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                            for s in seeds):
        raise DataError(f"{out / 'summary.json'}: --once needs a non-empty list of integer `seeds`, got {seeds!r}")
    metrics = {tag: [row for _, row in read_jsonl(path, "metrics")]
               for tag, path in _metrics_files(out, summary).items()}
    folder = write_artifact(args.results, args.name, summary, seeds=seeds, metrics=metrics,
                            stamp={**stamp, "seeds": seeds})
    for plot in sorted(out.glob("*.png")) + sorted(out.glob("*.svg")):
        shutil.copyfile(plot, plots_dir(folder) / plot.name)
    console.print(f"wrote {folder}/ (artifact.json, metrics/, plots/); work folder {out}", highlight=False)
    return 0


def _plot_curve(folder: Path, plots_dir, metrics: dict, key: str, name: str) -> None:
    from forklens.report.plots import plot_curves_vs_flops

    series = {}
    for run, rows in metrics.items():
        pts = [(r["flops"], r[key]) for r in rows if key in r and "flops" in r]
        if pts:
            seed = int(run.split("_", 1)[0].removeprefix("seed-"))
            series[seed] = ([p[0] for p in pts], [p[1] for p in pts])
    if not series:
        raise DataError(f"no metrics row has both 'flops' and {key!r}; nothing to plot")
    plot_curves_vs_flops({name: series}, plots_dir(folder) / f"{key}_vs_flops", ylabel=key,
                         title=f"{name}: {key} vs cumulative FLOPs (thin: seeds, bold: mean)")


def render_docs(args: argparse.Namespace) -> int:
    from forklens.report.tables import check_file, load_specs, render_file

    specs = load_specs(Path(args.specs) if args.specs else Path(args.results) / "tables.yaml")
    stale = []
    docs = args.docs or sorted(str(p) for p in Path("docs").glob("*.md")) + ["README.md"]
    for doc in docs:
        path = Path(doc)
        if args.check:
            problems = check_file(path, specs)
            stale += problems
        elif render_file(path, specs):
            console.print(f"rendered {path}", highlight=False)
    for problem in stale:
        console.print(f"[red]stale[/] {problem}", highlight=False, soft_wrap=True)
    return 1 if stale else 0


def show_verdicts(args: argparse.Namespace) -> int:
    from forklens.report.artifacts import load_artifact
    from forklens.report.predictions import load_predictions, verdict_table

    preds = load_predictions(args.predictions)
    artifact = load_artifact(args.artifact or preds.artifact)
    print(verdict_table(preds, artifact))
    return 0
