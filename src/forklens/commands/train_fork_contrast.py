"""`forklens train fork-contrast`: RL-free training on base rollouts (ReasonMaxxer-style, see docs/forks.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from forklens.analysis.evaluate import evaluate
from forklens.analysis.prompts import load_prompts
from forklens.commands._common import (add_config_args, add_overwrite_arg, console, handle_config_flags, prepare_out,
                                       quiet_third_party, require, resolve_config)
from forklens.config import packaged_config
from forklens.errors import ConfigError, DataError
from forklens.policy import Policy
from forklens.tasks import get_task
from forklens.tasks.answers import is_correct
from forklens.tasks.base import Problem
from forklens.train.fork_source import ForkContrastConfig, run_fork_contrast

DESCRIPTION = """\
Sample base rollouts once (20 per problem, temperature 0.6, top-p 0.95), label them with the
verifier, keep the problems whose pass rate is closest to 0.5, and train with

  L = sum_{t in D} A_i (-log pi(y_t)) / |D|  +  lambda * mean_{t not in D} KL(P_base || pi)_t

where D are the response tokens whose base entropy exceeds tau. --task uses the task's training
split and exact verifier (and, for arith, the packaged fork-contrast-arith.yaml recipe: tau 0.5,
full fine-tuning); --data reads {"prompt": ..., "answer": ...} lines and checks an answer against
the completion's last number (numeric answers) or its ending (other answers). Writes
metrics.jsonl, data.json (selection and entropy statistics), checkpoints/ and model/ into --out.
"""


def register(tsub) -> None:
    p = tsub.add_parser("fork-contrast", help="RL-free fork-contrast training on base rollouts (ReasonMaxxer).",
                        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", metavar="DIR", help="base model directory (Hugging Face format; required)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--task", metavar="NAME", help="built-in task (arith): training split + exact verifier")
    src.add_argument("--data", metavar="FILE.jsonl", help="problems: one {\"prompt\", \"answer\"} object per line")
    p.add_argument("--out", default="runs/fork-contrast", help="run directory (default: runs/fork-contrast)")
    p.add_argument("--seed", type=int, default=None, help="seed (overrides train.seed)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out "
                   "(full fine-tuning only; reuses the saved rollouts)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_overwrite_arg(p)
    add_config_args(p)
    p.set_defaults(func=run)


def load_problems(path: str):
    """Problems from a JSONL of {prompt, answer[, id]}; every line needs an answer."""
    recs = load_prompts(path)
    missing = [r["line"] for r in recs if r.get("answer") is None]
    if missing:
        raise DataError(f"{path} line {missing[0]}: missing \"answer\"; fork-contrast labels rollouts by their answer")
    return [Problem(id=r["id"], prompt=r["prompt"], answer=r["answer"]) for r in recs]


def run(args) -> int:
    quiet_third_party()
    recipe = packaged_config("fork-contrast-arith" if args.task == "arith" else "fork-contrast")
    extra = [f"train.seed={args.seed}"] if args.seed is not None else []
    cfg = resolve_config(ForkContrastConfig, args, recipe, extra)
    if handle_config_flags(ForkContrastConfig, cfg, args):
        return 0
    require(args, "--base")
    if not args.task and not args.data:
        raise ConfigError("one of --task or --data is required")
    task = None
    if args.task:
        task = get_task(args.task)
        problems = task.problems("train")
        verify = task.verify
    else:
        problems = load_problems(args.data)
        verify = lambda p, text: 1.0 if is_correct(p.answer, text) else 0.0  # noqa: E731
    out = prepare_out(args, "train-fork-contrast", resumable=True)
    info = run_fork_contrast(Path(args.base), problems, verify, cfg, out, seed=cfg.train.seed, resume=args.resume,
                             progress=not args.no_progress, log=lambda m: console.print(m, highlight=False))
    summary = {k: info[k] for k in ("steps", "flops", "wall_s", "prepare_wall_s", "train_wall_s", "data",
                                    "model_dir", "config")}
    if task is not None and cfg.evaluate:
        from dataclasses import replace

        ev = replace(cfg.eval, max_new_tokens=cfg.data.max_new_tokens)
        summary["eval"] = {"base": evaluate(Policy.load(args.base), task, ev)["accuracy"],
                           "trained": evaluate(info["policy"], task, ev)["accuracy"],
                           "split": ev.split, "temperature": ev.temperature}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(f"fork-contrast: {info['steps']} steps, {info['flops']:.3g} FLOPs (rollouts included), "
                  f"{info['wall_s']:.0f} s; model saved to {info['model_dir']}", highlight=False)
    if "eval" in summary:
        e = summary["eval"]
        console.print(f"held-out accuracy ({e['split']}, {'greedy' if e['temperature'] == 0 else 'sampled'}): "
                      f"base {100 * e['base']:.1f}% -> trained {100 * e['trained']:.1f}%", highlight=False)
    console.print(f"summary in {out / 'summary.json'}; metrics in {out / 'metrics.jsonl'}", highlight=False)
    return 0
