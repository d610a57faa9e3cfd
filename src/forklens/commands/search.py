"""`forklens search`: a greedy search over training-recipe choices (loss, learning rate, depth) with the winner
re-checked on fresh seeds and set against the best of N reruns of the reference recipe
(:mod:`forklens.experiments.search`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from forklens.commands._common import (add_config_args, add_overwrite_arg, console, experiment_config,
                                       handle_config_flags, prepare_out, quiet_third_party)
from forklens.config import load_config, packaged_config
from forklens.experiments import search


def register(sub) -> None:
    p = sub.add_parser("search", help="Recipe search (loss, LR, depth) with a winner's-curse control (E053).",
                       description=(search.__doc__ or "").split("\n\n")[0])
    p.add_argument("--out", default="runs/search", help="output directory (default: runs/search)")
    p.add_argument("--quick", action="store_true", help="a small budget and a tiny model: a plumbing run of about "
                   "a minute (configs/search-quick.yaml)")
    add_overwrite_arg(p)
    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    quiet_third_party()
    base = load_config(search.SearchConfig, packaged_config("search-quick")) if args.quick else None
    cfg = experiment_config(search.SearchConfig, args, base)
    if handle_config_flags(search.SearchConfig, cfg, args):
        return 0
    prepare_out(args, "search")
    summary = search.run_search(cfg, args.out)
    print(search.markdown_table(summary))
    console.print(f"wrote {Path(args.out) / 'summary.json'} and runs.jsonl", highlight=False)
    return 0
