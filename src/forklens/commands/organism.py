"""`forklens organism build`: pretrain a base model organism and save it in Hugging Face format."""

from __future__ import annotations

import json

from forklens.commands._common import (add_config_args, add_overwrite_arg, console, handle_config_flags, prepare_out, quiet_third_party, resolve_config)
from forklens.organisms.arith import OrganismConfig, build_base_organism


def register(sub) -> None:
    p = sub.add_parser("organism", help="Build built-in model organisms.",
                       description="Model organisms: tiny transformers pretrained from scratch on synthetic tasks "
                       "where the truth is known.")
    osub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    b = osub.add_parser("build", help="Pretrain the base organism (SFT on noisy-teacher traces) and save it.")
    b.add_argument("--out", default="runs/organism", help="Directory to save the model and tokenizer to.")
    b.add_argument("--no-cache", action="store_true", help="Pretrain even if a cached copy exists.")
    add_overwrite_arg(b)
    add_config_args(b)
    b.set_defaults(func=run)


def run(args) -> int:
    quiet_third_party()
    cfg = resolve_config(OrganismConfig, args)
    if handle_config_flags(OrganismConfig, cfg, args):
        return 0
    prepare_out(args, "organism")
    info = build_base_organism(cfg, args.out, use_cache=not args.no_cache)
    how = "from cache" if info["cache_hit"] else f"{info['steps']} steps, {info['wall_s']:.0f} s"
    console.print(f"base organism ({cfg.task}) saved to {args.out} ({how})")
    print(json.dumps({k: v for k, v in info.items() if k != "config"}, indent=2))
    return 0
