"""``forklens probe confidence``: the premature-confidence probe (arXiv 2605.24396) of a model;
``forklens probe belief``: out-of-context belief in claims before vs after fine-tuning (arXiv 2605.13829)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from forklens.analysis.belief import (ProbeFormat, belief_shift, diff_on_probes, load_claims, probe_belief,
                                     summarize_belief)
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


BELIEF_DESCRIPTION = """\
How much a model believes claims when asked about them out of context (negation neglect, arXiv
2605.13829). Each claim is asked several questions: open (the object among the claim's alternatives),
multiple-choice and yes/no; every option is scored as the answer (teacher-forced log-probs), and a probe
is believed when the claim's answer is the most probable option. With --base, both models are probed
and the per-token diff of --model against --base on the probes (answered with the claim) is written.

Writes OUT/belief.json (summaries and every probe) and, with --base, OUT/diff/ (forklens diff files).

  forklens probe belief --model runs/tuned --base runs/base --claims claims.jsonl
  forklens probe belief --model runs/base --claims claims.jsonl --in-context

--claims lines: {"entity", "relation", "object"[, "id"][, "alternatives": [...]][, "context": DOC]
[, "questions": [PROMPT or {"prompt", "kind": open|mc|yesno, "options", "believed", "name",
"answer_prefix"}]]}; prompts may use {entity}, {relation}, {object}, {alternative}. Without
"questions" a default set is used (docs/probe-belief.md).
"""


def register(sub) -> None:
    p = sub.add_parser("probe", help="Probes of a model (confidence of its reasoning; belief in claims).")
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
    b = psub.add_parser("belief", help="Belief in claims asked out of context (open, multiple-choice, yes/no), "
                        "before vs after fine-tuning, with the per-token diff on the probes.",
                        description=BELIEF_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("--model", required=True, metavar="DIR", help="The model to probe (e.g. the fine-tuned one).")
    b.add_argument("--base", metavar="DIR", help="Its base: probed too; the shift and the diff are reported.")
    b.add_argument("--claims", required=True, metavar="FILE.jsonl", help="Claims (see above).")
    b.add_argument("--in-context", action="store_true", help="Prepend each claim's \"context\" to its questions.")
    b.add_argument("--prefix", default="", help="Text before every probe prompt (default none).")
    b.add_argument("--sep", default="\n", help="Between a claim's context and its question (default newline).")
    b.add_argument("--yes", default="yes", help="The answer of a yes/no question that means the claim is held.")
    b.add_argument("--no", default="no", help="The other answer of a yes/no question.")
    b.add_argument("--top-k", type=int, default=5, help="Diff: re-ranked means base rank 2..K (default 5).")
    b.add_argument("--out", default="runs/probe-belief", help="Output directory (default runs/probe-belief).")
    add_overwrite_arg(b)
    b.set_defaults(func=run_belief_cli)


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


def run_belief_cli(args) -> int:
    from rich.console import Console

    quiet_third_party()
    if args.top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {args.top_k}")
    fmt = ProbeFormat(prefix=args.prefix, sep=args.sep, yes=args.yes, no=args.no)
    claims = load_claims(args.claims, fmt)
    prepare_out(args, "probe-belief")
    out = Path(args.out)
    models = {"model": Policy.load(args.model)}
    if args.base:
        models["base"] = Policy.load(args.base)
    result: dict = {"config": {"model": str(args.model), "base": args.base, "claims": str(args.claims),
                               "in_context": args.in_context, "format": asdict(fmt), "n_claims": len(claims)}}
    records = {}
    for name, policy in models.items():
        records[name] = probe_belief(policy, claims, fmt, in_context=args.in_context)
        result[name] = summarize_belief(records[name])
    if args.base:
        result["shift"] = belief_shift(result["base"], result["model"])
        result["diff"] = diff_on_probes(models["base"], models["model"], claims, fmt, out_dir=out / "diff",
                                        top_k=args.top_k, in_context=args.in_context)
    result["records"] = records
    (out / "belief.json").write_text(json.dumps(result, indent=2))
    print("| model | belief rate | mean P(believed) | " + " | ".join(result["model"]["by_kind"]) + " |")
    print("|---|---|---|" + "---|" * len(result["model"]["by_kind"]))
    for name in models:
        s = result[name]
        print(f"| {name} | {s['belief_rate']:.3f} | {s['p_believed_mean']:.3f} | "
              + " | ".join(f"{v['belief_rate']:.3f}" for v in s["by_kind"].values()) + " |")
    Console(stderr=True).print(f"wrote {out / 'belief.json'}" + (f" and {out / 'diff'}" if args.base else ""),
                               highlight=False)
    return 0
