"""``forklens intervene``: decode with the base model, emit the RL model's argmax at gated positions."""

from __future__ import annotations

import argparse
from pathlib import Path

from forklens.analysis.intervene import ENTROPY_TAU_DEFAULT, ENTROPY_TAU_ORGANISM, parse_gate, run_intervention
from forklens.analysis.prompts import load_prompts
from forklens.commands._common import add_overwrite_arg, console, number, prepare_out, quiet_third_party
from forklens.errors import ConfigError, DataError
from forklens.policy import Policy
from forklens.tasks import get_task
from forklens.tasks.answers import is_correct

DEFAULT_OUT = "runs/intervene"

DESCRIPTION = """\
Causal check of the "sparse policy selection" account of RL: decode with the base model and, at
gated positions only, emit the RL model's argmax instead. Gates (repeat --gate; default: oracle,
random and entropy):

  oracle        where the RL argmax differs from the base argmax and is in the base top-5
  entropy:TAU   where the base entropy exceeds TAU nats (no knowledge of the RL model's choice);
                bare "entropy" uses 1.4 (the paper's gate), or 0.5 with --task arith
  random        control: as many substitutions per response as the oracle made, at step indices
                drawn uniformly (before decoding) from the oracle response's steps

Prompts JSONL: {"prompt": ..., "answer": ..., "id": ... (optional)} per line; every line needs an
answer. A numeric answer is correct when it equals the completion's last number; any other answer
when the completion ends with it. With --task arith the organism's test split and its exact
verifier are used instead. Writes summary.json and responses.jsonl into --out.
"""


def register(sub) -> None:
    p = sub.add_parser("intervene", help="Base decoding with RL tokens at gated positions (oracle/entropy/random).",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", metavar="DIR", required=True, help="base model directory (Hugging Face format)")
    p.add_argument("--rl", metavar="DIR", required=True, help="RL model directory (same tokenizer as --base)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompts", "--data", dest="prompts", metavar="FILE",
                     help="prompts with answers: JSONL, JSON, parquet or a datasets folder (TRL and verl row "
                          "formats; --data is the same flag)")
    src.add_argument("--task", metavar="NAME", help="a built-in task (arith): its test split and exact verifier")
    p.add_argument("--tokenizer", metavar="DIR", default=None,
                        help="load this tokenizer for both models (e.g. when an RL checkpoint changed a special token "
                        "or saved none); default: each model's own")
    p.add_argument("--gate", action="append", default=None, metavar="oracle|entropy:TAU|random",
                   help="gate to run; repeatable (default: oracle, random, entropy)")
    p.add_argument("--temperature", type=number(float, ge=0), default=0.0,
                   help="0 = greedy (default); > 0 samples the base, pass@1 averaged over --seeds")
    p.add_argument("--seeds", type=int, default=3, help="seeds (random-gate draws; samples when T > 0); default 3")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="generation cap (default: 48 for arith, else 256)")
    p.add_argument("--limit", type=number(ge=0), default=0, help="use only the first N prompts (0 = all)")
    p.add_argument("--batch-size", type=number(ge=1), default=256, help="prompts decoded together (default 256)")
    p.add_argument("--dtype", default=None, help="load both models in this dtype (float32, bfloat16, ...)")
    p.add_argument("--device", default=None, help="device for both models (default: cpu, or cuda when available)")
    p.add_argument("--out", metavar="DIR", default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    add_overwrite_arg(p)
    p.set_defaults(func=run)


def load_records(args) -> tuple[list[dict], object, float]:
    """(records, verify(record, text) -> bool, default entropy tau)."""
    if args.task:
        task = get_task(args.task)
        problems = task.problems("test")
        by_id = {p.id: p for p in problems}
        records = [{"id": p.id, "prompt": p.prompt, "answer": p.answer} for p in problems]
        return records, (lambda rec, text: task.verify(by_id[rec["id"]], text) > 0), ENTROPY_TAU_ORGANISM
    records = load_prompts(args.prompts)
    missing = [r["line"] for r in records if r.get("answer") is None]
    if missing:
        lines = ", ".join(map(str, missing[:5])) + (" ..." if len(missing) > 5 else "")
        raise DataError(f"{args.prompts}: every prompt needs an \"answer\" to score the interventions "
                        f"(missing on line {lines})")
    return records, (lambda rec, text: is_correct(rec["answer"], text)), ENTROPY_TAU_DEFAULT


def run(args) -> int:
    quiet_third_party()
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    records, verify, tau = load_records(args)
    prepare_out(args, "intervene")
    gates = [parse_gate(g, tau) for g in (args.gate or ["oracle", "random", "entropy"])]
    if args.limit:
        records = records[: args.limit]
    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else None
    base = Policy.load(args.base, dtype=args.dtype, device=device, tokenizer_path=args.tokenizer)
    rl = Policy.load(args.rl, dtype=args.dtype, device=device, tokenizer_path=args.tokenizer)
    base.warn_unknown_chars([(f"{args.prompts} line {r['line']}", r["prompt"]) for r in records if "line" in r])
    max_new = args.max_new_tokens or (48 if args.task == "arith" else 256)
    s = run_intervention(base, rl, records, verify, gates, temperature=args.temperature, seeds=args.seeds,
                         seed=args.seed, max_new_tokens=max_new, batch_size=args.batch_size, out_dir=args.out,
                         progress=lambda name, seed: console.print(f"  decoded {name} (seed {seed})",
                                                                   highlight=False))
    print_summary(s, args.out)
    return 0


def print_summary(s: dict, out) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"forklens intervene ({s['n_prompts']} prompts, {s['decoding']})")
    for col in ("decoder", "accuracy", "gain recovered", "substitutions / response", "changed / response"):
        table.add_column(col, justify="right" if col != "decoder" else "left")
    for k, a in s["accuracy"].items():
        g = s["gain_recovered"].get(k)
        table.add_row(s["gates"].get(k, k), f"{100 * a:.1f}%", "—" if g is None else f"{100 * g:.0f}%",
                      f"{s['substitutions_per_response'][k]:.2f}" if k in s["substitutions_per_response"] else "—",
                      f"{s['changed_per_response'][k]:.2f}" if k in s["changed_per_response"] else "—")
    Console().print(table)
    Console().print(f"wrote {Path(out) / 'summary.json'} and {Path(out) / 'responses.jsonl'}", highlight=False)
