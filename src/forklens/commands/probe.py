"""``forklens probe confidence``: the premature-confidence probe (arXiv 2605.24396) of a model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from forklens.analysis.confidence import markdown_table, plot_trajectories, probe_records, sample_chains, summarize
from forklens.analysis.prompts import load_prompts, read_jsonl
from forklens.commands._common import (add_overwrite_arg, prepare_out, quiet_third_party)
from forklens.errors import ConfigError, DataError
from forklens.policy import Policy
from forklens.rewards.confidence import MarkerForcing, forcing_for
from forklens.tasks import get_task
from forklens.tasks.base import Problem

DESCRIPTION = """\
Probe when a model becomes confident of its answer. For each problem, sample one chain of thought
(or take the "response" of a --data line), cut it at 0, 20, 40, 60, 80 and 100% of its length,
force an answer (arith: append "A="; agent: append "!"; --data: append --marker), sample --m short
answers at each cut and grade them: c_j = fraction correct. Spearman(c, position) >= 0.4 makes a
response "progressive", otherwise "premature" (constant trajectories count as premature).

Writes OUT/probe.json (every trajectory and the summary), OUT/trajectories.png, and prints a table.

  forklens probe confidence --model runs/rewards/base --task agent --n 100
  forklens probe confidence --model DIR --data problems.jsonl --marker "Answer:"

--data lines: {"prompt": ..., "answer": ...[, "id": ...][, "response": ...]}.
"""


def register(sub) -> None:
    p = sub.add_parser("probe", help="Probes of a model's reasoning (confidence).")
    psub = p.add_subparsers(dest="probe", metavar="NAME", required=True)
    c = psub.add_parser("confidence", help="Forced-answer confidence trajectories: progressive vs premature.",
                        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--model", required=True, metavar="DIR", help="Model directory (Hugging Face format).")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--task", metavar="NAME", help="Built-in task (arith, agent): its test split.")
    src.add_argument("--data", metavar="FILE.jsonl", help="Problems with answers (and optional responses).")
    c.add_argument("--n", type=int, default=100, help="Problems to probe (default 100; 0 = all).")
    c.add_argument("--m", type=int, default=10, help="Forced answers per cut (default 10, as in the paper).")
    c.add_argument("--temperature", type=float, default=1.0, help="Temperature of chains and forced answers.")
    c.add_argument("--max-new-tokens", type=int, default=48, help="Length cap of a sampled chain (single-turn).")
    c.add_argument("--T", type=int, default=5, help="Tool-call cap of agent episodes (default 5).")
    c.add_argument("--marker", default="Answer:", help="Forced-answer marker for --data (default 'Answer:').")
    c.add_argument("--seed", type=int, default=0, help="Sampling seed.")
    c.add_argument("--out", default="runs/probe", help="Output directory (default runs/probe).")
    add_overwrite_arg(c)
    c.set_defaults(func=run_confidence_cli)


def _load_data(path: str, marker: str):
    records = load_prompts(path)
    responses = {}
    for lineno, obj in read_jsonl(path, "problems"):
        if "response" in obj:
            if not isinstance(obj["response"], str):
                raise DataError(f"{path} line {lineno}: \"response\" must be a string, "
                                f"got {type(obj['response']).__name__}")
            responses[lineno] = obj["response"]
    problems = []
    for r in records:
        if r["answer"] is None:
            raise DataError(f"{path} line {r['line']}: missing \"answer\"; the probe grades forced answers against it")
        problems.append(Problem(id=r["id"], prompt=r["prompt"], answer=r["answer"], meta={"line": r["line"]}))
    given = [responses.get(p.meta["line"]) for p in problems]
    return problems, given


def run_confidence_cli(args) -> int:
    from rich.console import Console

    quiet_third_party()
    limits = (("--n", args.n, 0), ("--m", args.m, 1), ("--T", args.T, 0), ("--max-new-tokens", args.max_new_tokens, 1))
    for name, v, lo in limits:
        if v < lo:
            raise ConfigError(f"{name} must be >= {lo}, got {v}")
    if args.temperature < 0:
        raise ConfigError(f"--temperature must be >= 0, got {args.temperature}")
    console = Console(stderr=True)
    task = None
    if args.task:
        task = get_task(args.task)
        problems = task.problems("test")
        given = [None] * len(problems)
        forcing = forcing_for(task)
    else:
        problems, given = _load_data(args.data, args.marker)
        forcing = MarkerForcing(marker=args.marker)
    if args.n:
        problems, given = problems[: args.n], given[: args.n]
    prepare_out(args, "probe-confidence")
    policy = Policy.load(args.model)
    missing = [i for i, g in enumerate(given) if g is None]
    if missing:
        sampled = sample_chains(policy, task, [problems[i] for i in missing], args.temperature, args.seed,
                                args.max_new_tokens, args.T)
        for i, text in zip(missing, sampled):
            given[i] = text
    if task is not None:
        correct = [task.verify(p, r) > 0 for p, r in zip(problems, given)]
    else:
        correct = [forcing.correct(p, r[r.rfind(forcing.marker) + len(forcing.marker):] if forcing.marker in r else "")
                   for p, r in zip(problems, given)]
    records = probe_records(policy, forcing, problems, given, correct, m=args.m, temperature=args.temperature,
                            seed=args.seed + 1)
    summary = summarize(records)
    out = Path(args.out)
    meta = {"model": str(args.model), "task": args.task, "data": args.data, "m": args.m, "n": len(problems),
            "temperature": args.temperature, "T": args.T, "seed": args.seed}
    (out / "probe.json").write_text(json.dumps({"config": meta, "summary": summary, "records": records}, indent=2))
    figs = plot_trajectories(records, out / "trajectories", title=f"confidence probe: {Path(args.model).name}")
    print(markdown_table(summary))
    print(f"progressive {summary['progressive']['count']} / {summary['n']} (flat {summary['flat']}), "
          f"mean P = {summary['penalty_mean']:.3f}")
    console.print(f"wrote {out / 'probe.json'} and {', '.join(str(f) for f in figs)}")
    return 0
