"""`forklens evaluate`: accuracy of a model on a built-in task split."""

from __future__ import annotations

import json
from pathlib import Path

from forklens.commands._common import add_config_args, console, handle_config_flags, quiet_third_party, resolve_config
from forklens.errors import ConfigError


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="Accuracy of a model on a task split (greedy by default).")
    p.add_argument("--model", required=True, help="Hugging Face model directory.")
    p.add_argument("--task", default="arith", help="Built-in task (default: arith).")
    p.add_argument("--out", default=None, help="Write the evaluation JSON here (a file path).")
    add_config_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    quiet_third_party()
    from forklens.analysis.evaluate import EvalConfig, evaluate
    from forklens.policy import Policy
    from forklens.tasks import get_task

    cfg = resolve_config(EvalConfig, args)
    if handle_config_flags(EvalConfig, cfg, args):
        return 0
    if args.out and Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out} is a directory; give the path of the JSON file to write")
    task = get_task(args.task)
    result = evaluate(Policy.load(args.model), task, cfg)
    console.print(f"{args.model}: accuracy {100 * result['accuracy']:.1f}% on {result['n_problems']} "
                  f"{result['split']} problems (n={result['n_per_problem']}, temperature {result['temperature']})")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        console.print(f"wrote {args.out}")
    return 0
