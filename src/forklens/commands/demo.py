"""`forklens demo`: the whole story on the built-in organism, on a laptop CPU."""

from __future__ import annotations

from forklens.commands._common import (add_config_args, add_overwrite_arg, console, handle_config_flags, prepare_out, quiet_third_party, resolve_config)
from forklens.config import packaged_config
from forklens.experiments.demo import DemoConfig, run_demo


def register(sub) -> None:
    p = sub.add_parser("demo", help="Build the organism, run GRPO, evaluate, diff base vs RL.",
                       description="Build (or reuse from the cache) the base arithmetic organism, train it with "
                       "GRPO, evaluate base and RL on held-out problems and diff them token by token.")
    p.add_argument("--out", default="runs/demo", help="Output directory (default: runs/demo).")
    p.add_argument("--quick", action="store_true", help="Smaller organism and fewer steps (about 1-2 minutes).")
    p.add_argument("--seed", type=int, default=None, help="Seed (overrides the config's seed).")
    p.add_argument("--no-cache", action="store_true", help="Pretrain the base organism even if it is cached.")
    add_overwrite_arg(p)
    add_config_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    quiet_third_party()
    extra = [f"seed={args.seed}"] if args.seed is not None else []
    cfg = resolve_config(DemoConfig, args, packaged_config("demo-quick" if args.quick else "demo"), extra)
    if handle_config_flags(DemoConfig, cfg, args):
        return 0
    prepare_out(args, "demo")
    s = run_demo(cfg, args.out, use_cache=not args.no_cache)
    gain = 100 * (s["rl"]["accuracy"] - s["base"]["accuracy"])
    console.rule("[bold]forklens demo")
    console.print(f"task {s['task']} (held-out {s['eval']['n_problems']} problems, greedy), seed {s['seed']}")
    console.print(f"  base accuracy  {100 * s['base']['accuracy']:5.1f}%")
    console.print(f"  RL accuracy    {100 * s['rl']['accuracy']:5.1f}%   ({gain:+.1f} points after "
                  f"{s['train']['steps']} GRPO steps, {s['train']['flops']:.3g} FLOPs, {s['train']['wall_s']:.0f} s)")
    d = s.get("diff")
    if d:
        console.print(f"  token diff     {100 * d['unshifted_frac']:.1f}% unshifted, {100 * d['reranked_frac']:.1f}% "
                      f"reranked, {100 * d['shifted_frac']:.1f}% shifted; fork entropy x{d['entropy_ratio'] or 0:.1f}")
        console.print(f"  report         {d['report']}")
    console.print(f"  summary        {args.out}/summary.json   models: {s['base']['path']}, {s['rl']['path']}")
    console.print(f"  total time     {s['total_wall_s']:.0f} s")
    return 0
