"""`forklens evaluate`: accuracy of a model on a built-in task split."""

from __future__ import annotations

import json
from pathlib import Path

from forklens.analysis.evaluate import EvalConfig, evaluate
from forklens.commands._common import (add_config_args, add_data_args, add_overwrite_arg, console, handle_config_flags,
                                       quiet_third_party, require, resolve_config, task_from_args)
from forklens.policy import Policy
from forklens.runfolder import check_out_file


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="Accuracy of a model on a task split (greedy by default).")
    p.add_argument("--model", help="Hugging Face model directory or PEFT adapter folder (required).")
    p.add_argument("--task", default=None, help="Built-in task (default: arith; agent is evaluated on multi-turn "
                   "tool-use episodes with at most T tool calls).")
    add_data_args(p)
    p.add_argument("--out", default=None, help="Write the evaluation JSON here (a file path).")
    add_config_args(p)
    add_overwrite_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    quiet_third_party()
    cfg = resolve_config(EvalConfig, args)
    if handle_config_flags(EvalConfig, cfg, args):
        return 0
    require(args, "--model")
    task = task_from_args(args, default_split="test")
    if args.out:
        check_out_file(args.out, overwrite=args.overwrite)
    result = evaluate(Policy.load(args.model), task, cfg)
    extra = f", {result['tool_calls_mean']:.2f} tool calls per episode" if "tool_calls_mean" in result else ""
    console.print(f"{args.model}: accuracy {100 * result['accuracy']:.1f}% on {result['n_problems']} "
                  f"{result['split']} problems (n={result['n_per_problem']}, temperature {result['temperature']}{extra})")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        console.print(f"wrote {args.out}")
    return 0
