"""``forklens passk``: unbiased pass@k curves (and PASS@(k, T)) from a samples JSONL file, or from samples
it draws first from one or more models on a built-in task (``--model DIR --task NAME``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from forklens.commands._common import (add_data_args, add_overwrite_arg, number, prepare_out, quiet_third_party,
                                       task_from_args)

from forklens.analysis.passk import (
    PassAtKTable,
    boundary_sets,
    boundary_sets_to_json,
    default_ks,
    load_samples,
    pass_at_k_table,
    sample_counts,
)
from forklens.analysis.passk_samples import generate_samples, lm_eval_records, write_jsonl
from forklens.errors import ConfigError, DataError
from forklens.policy import Policy

DEFAULT_OUT = "runs/passk"

DESCRIPTION = """\
Compute the unbiased pass@k estimator (Chen et al., 2021) from sampled completions.

The samples file has one JSON object per line with "problem_id" and "correct" (true/false or 0/1),
and optionally "model" (default "model") and "T", the tool-round cap the sample was drawn under
(default 0: a single static setting). pass@k is computed per problem and averaged per (model, T),
which gives PASS@(k, T) curves when several T are present.

k may not exceed a problem's number of samples n; such k are an error unless --skip-k-above-n is
given, in which case they are omitted and listed as skipped (never replaced by a biased value).

Instead of --samples, --model DIR (repeatable) with --task NAME generates the samples first: n fresh
samples per problem (per tool-call cap T for a multi-turn task such as agent, with the answer forced
at the cap), graded by the task's verifier and saved to OUT/samples.jsonl, e.g.

  forklens passk --model runs/boundary/agent/base --model runs/boundary/agent/rl --task agent --n 256
"""


def _int_list(name: str, minimum: int, example: str):
    """An argparse type for a comma-separated list of integers >= ``minimum`` (sorted, unique)."""

    def parse(text: str) -> list[int]:
        values = []
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            try:
                v = int(part)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{name} values must be integers, got {part!r}") from None
            if v < minimum:
                raise argparse.ArgumentTypeError(f"{name} values must be >= {minimum}, got {v}")
            values.append(v)
        if not values:
            raise argparse.ArgumentTypeError(f"give at least one {name}, e.g. {example}")
        return sorted(set(values))

    return parse


_parse_ks = _int_list("k", 1, "--k 1,2,4,8")
_parse_Ts = _int_list("T", 0, "--T 0,1,2,3,5")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "passk",
        help="Unbiased pass@k / PASS@(k,T) curves from sampled (or generated) completions.",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    group = parser.add_argument_group("samples (give --samples, or --model with --task to generate them)")
    source = group.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--samples",
        metavar="FILE.jsonl",
        help="JSONL file of graded samples: problem_id, correct[, model][, T]",
    )
    source.add_argument(
        "--lm-eval",
        metavar="FILE.jsonl",
        help="lm-evaluation-harness --log_samples output (samples_<task>_<time>.jsonl); every response in resps is "
        "graded against target (boxed, numeric or last-line match) and counted as one sample",
    )
    _add_generation_arguments(parser, source)
    estimate = parser.add_argument_group("estimator")
    estimate.add_argument(
        "--k",
        dest="ks",
        metavar="K1,K2,...",
        type=_parse_ks,
        default=None,
        help="comma-separated k values (default: powers of two up to the smallest per-problem n)",
    )
    estimate.add_argument(
        "--skip-k-above-n",
        action="store_true",
        help="omit (and report as skipped) any k larger than a problem's sample count instead of failing",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        default=DEFAULT_OUT,
        help=f"output folder for summary.json, per_problem.jsonl and pass_at_k.png/.svg (default: {DEFAULT_OUT})",
    )
    add_overwrite_arg(parser)
    parser.set_defaults(func=run)


def _add_generation_arguments(parser: argparse.ArgumentParser, source) -> None:
    """The sample-generation mode: ``--model DIR [--model DIR ...] --task NAME --n 256 [--T 0,1,2,3,5]``.

    ``--model`` is the alternative to ``--samples`` (``source`` is their mutually exclusive group).
    Each model draws ``n`` fresh samples per problem of the task's split (for a multi-turn task: ``n``
    fresh episodes per problem and tool-call cap ``T``, answer forced at the cap), graded by the
    task's verifier and written to ``OUT/samples.jsonl``; the run then continues as with ``--samples``.
    """
    source.add_argument(
        "--model",
        dest="models",
        metavar="[NAME=]DIR",
        action="append",
        default=None,
        help="generate the samples from this model directory (repeatable; NAME defaults to the folder name)",
    )
    gen = parser.add_argument_group("sample generation (with --model)")
    gen.add_argument("--task", metavar="NAME", help="built-in task to sample on: arith, agent")
    add_data_args(parser, default_task=None, group=gen)
    gen.add_argument("--n", type=int, default=256, help="samples per problem (and per T) (default: 256)")
    gen.add_argument(
        "--T",
        dest="Ts",
        metavar="T1,T2,...",
        type=_parse_Ts,
        default=None,
        help="tool-call caps of a multi-turn task, one fresh run each (default: 0,1,2,3,5; static tasks: 0)",
    )
    gen.add_argument("--split", default="test", help="task split to sample on (default: test)")
    gen.add_argument("--limit", type=number(ge=0), default=0, help="use only the first N problems of the split (0 = all)")
    gen.add_argument("--temperature", type=number(float, ge=0), default=1.0, help="sampling temperature (default: 1.0)")
    gen.add_argument("--top-p", type=number(float, gt=0, le=1), default=1.0, help="nucleus sampling threshold (default: 1.0)")
    gen.add_argument("--max-new-tokens", type=number(ge=1), default=48, help="completion cap of a static task (default: 48)")
    gen.add_argument("--turn-tokens", type=number(ge=1), default=12, help="token cap of one turn of a multi-turn task")
    gen.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    gen.add_argument("--batch-size", type=number(ge=1), default=512, help="sequences decoded together (default: 512)")



def _model_names(specs: list[str]) -> list[tuple[str, Path]]:
    """``[NAME=]DIR`` specs -> unique (name, dir) pairs."""
    out: list[tuple[str, Path]] = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).name or spec, spec
        if not name:
            raise DataError(f"--model {spec!r}: empty model name")
        if name in {n for n, _ in out}:
            raise DataError(f"two models are named {name!r}; name them with --model NAME=DIR")
        out.append((name, Path(path)))
    return out


def _generate(args: argparse.Namespace) -> Path:
    from rich.console import Console

    if not args.task and not args.data:
        raise ConfigError("--model needs --task NAME (arith or agent) or --data FILE (your problems) to sample and grade on")
    if args.n < 1:
        raise ConfigError(f"--n must be >= 1, got {args.n}")
    task = task_from_args(args, default_split=args.split)
    Ts = args.Ts if args.Ts is not None else list(task.default_caps)
    task.check_caps(Ts)
    try:
        problems = task.problems(args.split)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if args.limit:
        problems = problems[: args.limit]
    if not problems:
        raise DataError(f"task {args.task or args.data!r} has no problems in split {args.split!r}")
    prepare_out(args, "passk")
    console = Console(stderr=True)
    records = []
    for name, path in _model_names(args.models):
        console.print(f"sampling {name} ({path}): {len(problems)} problems x {args.n} samples x T in {Ts}",
                      highlight=False)
        policy = Policy.load(path)
        records += generate_samples(policy, task, problems, name, Ts, args.n, args.temperature, args.top_p,
                                    args.seed, max_new_tokens=args.max_new_tokens, turn_tokens=args.turn_tokens,
                                    batch_size=args.batch_size)
    return write_jsonl(records, Path(args.out) / "samples.jsonl")


def _resolve_samples(args: argparse.Namespace) -> Path:
    """The samples file to read: ``--samples``, or the file the generation mode writes."""
    if getattr(args, "models", None):
        return _generate(args)
    if getattr(args, "lm_eval", None):
        records = lm_eval_records(args.lm_eval)
        prepare_out(args, "passk")
        return write_jsonl(records, Path(args.out) / "samples.jsonl")
    if getattr(args, "task", None):
        raise ConfigError("--task only applies when generating samples with --model; --samples are already graded")
    if getattr(args, "data", None):
        raise ConfigError("--data only applies when generating samples with --model; --samples are already graded")
    return Path(args.samples)


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _print_summary(table: PassAtKTable, sets: dict[str, Any] | None, written: list[Path], n_range: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    several_T = len({T for by_T in table.counts.values() for T in by_T}) > 1
    show_ks = table.ks if len(table.ks) <= 10 else table.ks[:: -(-len(table.ks) // 10)]
    if table.ks[-1] not in show_ks:
        show_ks = [*show_ks, table.ks[-1]]
    title = "PASS@(k, T)" if several_T else "pass@k"
    rich_table = Table(title=f"{title} (mean over problems)")
    rich_table.add_column("model")
    if several_T:
        rich_table.add_column("T", justify="right")
    rich_table.add_column("problems", justify="right")
    rich_table.add_column("n", justify="right")
    for k in show_ks:
        rich_table.add_column(f"k={k}", justify="right")
    for model in table.models:
        for T in sorted(table.counts[model]):
            lo, hi = n_range[model][T]
            row = [model] + ([str(T)] if several_T else [])
            row += [str(len(table.counts[model][T])), str(lo) if lo == hi else f"{lo}–{hi}"]
            row += [_fmt(table.mean[model][T].get(k)) for k in show_ks]
            rich_table.add_row(*row)
    console.print(rich_table)
    if len(show_ks) < len(table.ks):
        console.print(f"(showing {len(show_ks)} of {len(table.ks)} k values; all are in summary.json)")
    if table.skipped:
        console.print(
            f"[yellow]skipped[/] {len(table.skipped)} (problem, k) value(s) with k > n; "
            f"{len(table.skipped_means)} group mean(s) left out (see summary.json)",
            soft_wrap=True,
        )
    if sets is not None:
        for T, entry in sets["by_T"].items():
            pairs = [
                f"{a} not {b}: {len(ids)} of {entry['shared_problems'][a][b]}"
                for a, by_b in entry["a_not_b"].items()
                for b, ids in by_b.items()
            ]
            if pairs:
                prefix = f"T={T} " if several_T else ""
                console.print(
                    f"{prefix}solved (pass@{sets['k']} > 0) by one model only — " + "; ".join(pairs),
                    soft_wrap=True,
                )
    console.print("wrote:")
    for path in written:
        console.print(f"  {path}", soft_wrap=True, highlight=False)


def run(args: argparse.Namespace) -> int:
    quiet_third_party()
    samples_path = _resolve_samples(args)
    records = load_samples(samples_path)
    counts = sample_counts(records)
    ks = args.ks if args.ks is not None else default_ks(counts)
    table = pass_at_k_table(records, ks, skip_k_above_n=args.skip_k_above_n)

    n_range = {
        model: {T: (min(n for n, _ in g.values()), max(n for n, _ in g.values())) for T, g in by_T.items()}
        for model, by_T in table.counts.items()
    }
    # Boundary sets do not depend on k as long as k <= n (pass@k > 0 iff c > 0), so compare at the
    # largest requested k that every problem supports, falling back to the largest k (with skips).
    min_n = min(lo for by_T in n_range.values() for lo, _ in by_T.values())
    budget_k = max((k for k in table.ks if k <= min_n), default=max(table.ks))
    sets = boundary_sets(table, budget_k) if len(table.models) > 1 else None

    out = Path(args.out) if (getattr(args, "models", None) or getattr(args, "lm_eval", None)) else prepare_out(args, "passk")
    summary = {
        "samples": str(samples_path),
        "estimator": "unbiased pass@k (Chen et al., 2021): 1 - C(n-c, k) / C(n, k), per problem, "
        "averaged per (model, T)",
        "ks": table.ks,
        "skip_k_above_n": table.skip_k_above_n,
        "pass_at_k": table.mean_json(),
        "problems": {m: {str(T): len(g) for T, g in sorted(by_T.items())} for m, by_T in sorted(table.counts.items())},
        "samples_per_problem": {
            m: {str(T): {"min": lo, "max": hi} for T, (lo, hi) in sorted(by_T.items())}
            for m, by_T in sorted(n_range.items())
        },
        "skipped": table.skipped,
        "skipped_means": table.skipped_means,
        "boundary_sets": boundary_sets_to_json(sets) if sets is not None else None,
    }
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")

    per_problem_path = out / "per_problem.jsonl"
    with per_problem_path.open("w", encoding="utf-8") as handle:
        for row in table.per_problem_rows():
            handle.write(json.dumps(row) + "\n")

    from forklens.report.plots import plot_pass_at_k

    several_T = len({T for by_T in table.counts.values() for T in by_T}) > 1
    figures = plot_pass_at_k(
        table.mean,
        out / "pass_at_k",
        problem_counts={m: {T: len(g) for T, g in by_T.items()} for m, by_T in table.counts.items()},
        title="PASS@(k, T): unbiased estimator" if several_T else "pass@k: unbiased estimator",
    )

    _print_summary(table, sets, [summary_path, per_problem_path, *figures], n_range)
    return 0
