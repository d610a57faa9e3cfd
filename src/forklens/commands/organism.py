"""`forklens organism list|build`: the organism zoo (families x variants) and pretraining a base organism."""

from __future__ import annotations

import json

from rich.table import Table

from forklens.commands._common import (add_config_args, add_overwrite_arg, console, handle_config_flags, prepare_out,
                                       quiet_third_party, resolve_config)
from forklens.organisms import FAMILIES, get_family, zoo_table


def register(sub) -> None:
    p = sub.add_parser("organism", help="List and build built-in model organisms.",
                       description="Model organisms: tiny transformers pretrained from scratch on synthetic tasks "
                       "where the truth is known, grouped into families with precondition and control variants "
                       "(docs/organisms.md).")
    osub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = osub.add_parser("list", help="Every family and variant: its role, the claims it serves and what it has.")
    ls.add_argument("--json", action="store_true", help="Print JSON rows instead of a table.")
    ls.set_defaults(func=run_list)
    b = osub.add_parser("build", help="Pretrain a base organism (SFT on its teacher's traces) and save it.")
    b.add_argument("--family", default="arith", help=f"Organism family (default arith): {', '.join(FAMILIES)}.")
    b.add_argument("--variant", default=None,
                   help="Variant of the family (default: its first). `forklens organism list` shows them.")
    b.add_argument("--out", default="runs/organism", help="Directory to save the model and tokenizer to.")
    b.add_argument("--no-cache", action="store_true", help="Pretrain even if a cached copy exists.")
    add_overwrite_arg(b)
    add_config_args(b)
    b.set_defaults(func=run)


def run_list(args) -> int:
    rows = zoo_table()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title="forklens organism zoo")
    for col in ("family", "variant", "role", "claims", "about"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["family"], r["variant"], r["role"], r["claims"], r["about"])
    console.print(table)
    return 0


def run(args) -> int:
    quiet_third_party()
    family = get_family(args.family)
    variant = args.variant or next(iter(family.variants))
    # the variant's overrides, then --config and --set on top
    cfg = resolve_config(family.config, args, extra=list(family.variant(variant).overrides))
    if handle_config_flags(family.config, cfg, args):
        return 0
    prepare_out(args, "organism")
    info = family.build(cfg, args.out, use_cache=not args.no_cache)
    how = "from cache" if info["cache_hit"] else f"{info['steps']} steps, {info['wall_s']:.0f} s"
    console.print(f"base organism {family.name}/{variant} saved to {args.out} ({how})")
    print(json.dumps({k: v for k, v in info.items() if k != "config"} | {"family": family.name, "variant": variant},
                     indent=2))
    return 0
