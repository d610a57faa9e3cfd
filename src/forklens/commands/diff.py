"""``forklens diff``: token-level diff of a base and an RL model (see docs/diff.md)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from forklens import dist
from forklens.analysis.diff import run_diff
from forklens.tasks.dataset import prompt_text
from forklens.analysis.prompts import load_prompts
from forklens.errors import ConfigError
from forklens.policy import Policy
from forklens.policy.scaffold import load_scaffold
from forklens.commands._common import add_overwrite_arg, number, prepare_out, quiet_third_party

DEFAULT_OUT = "runs/diff"

DESCRIPTION = """\
Teacher-force responses through a base and an RL model and measure, at every response token, the
base rank of the RL model's argmax (unshifted = 1, reranked = 2..K, shifted > K), both entropies
and KL(base || RL).

Prompts JSONL: {"prompt": ..., "answer": ... (optional), "id": ... (optional)} per line.
--responses picks what is scored: rl-greedy (default), rl-sample, base-sample, or a JSONL file of
{"id" or "prompt", "response"} texts. Writes tokens.jsonl (tokens.parquet with --tokens-format
parquet), responses.jsonl, summary.json and a self-contained report.html into --out.

A policy is a model plus a scaffold: --base-skill / --rl-skill (a skill text file) and
--base-template / --rl-template (a format string with {prompt} and optionally {skill}) wrap the
prompts of one side only, so `--base M --rl-skill SKILL.md` diffs a model against itself with a
skill file, on the same response tokens. `forklens diff-overlap A B` then compares which tokens two
diffs move (e.g. does the skill move the tokens RL moves?).

Several processes (torchrun / accelerate launch) shard the prompts; rank 0 writes the outputs.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "diff",
        help="Token-level diff of a base and an RL model (ranks, entropy, KL, HTML report).",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    models = parser.add_argument_group("models and prompts")
    models.add_argument("--base", metavar="DIR", required=True, help="base model directory (Hugging Face format)")
    models.add_argument("--rl", metavar="DIR", default=None,
                        help="RL model directory (same tokenizer as --base); default --base when an --rl "
                             "scaffold is given (a model against itself with a skill)")
    models.add_argument("--prompts", "--data", dest="prompts", metavar="FILE", required=True,
                        help="prompts with answers: JSONL, JSON, parquet or a datasets folder (prompt, messages or verl rows; answer and id optional; --data is the same flag)")
    models.add_argument("--dtype", default=None, help="load both models in this dtype (float32, bfloat16, ...)")
    models.add_argument("--device", default=None,
                        help="device for both models (default: cuda:<local rank> if CUDA is available, else cpu)")
    scaffold = parser.add_argument_group("scaffolds (a policy = a model + a skill text and a prompt template)")
    for side in ("base", "rl"):
        scaffold.add_argument(f"--{side}-skill", metavar="FILE", default=None,
                              help=f"skill text put before each {side} prompt (a system message for chat prompts)")
        scaffold.add_argument(f"--{side}-template", metavar="TEXT", default=None,
                              help=f"{side} prompt template with {{prompt}} (and {{skill}}), e.g. "
                                   "'Q: {prompt}\\nA:'")
    resp = parser.add_argument_group("responses")
    resp.add_argument("--responses", default="rl-greedy", metavar="rl-greedy|rl-sample|base-sample|FILE",
                      help="which responses to score (default: rl-greedy)")
    resp.add_argument("--n", "--num-samples", dest="n", type=int, default=1,
                      help="samples per prompt for rl-sample / base-sample (default 1); under torchrun or "
                           "accelerate launch spell it --num-samples, since their own parsers take --n as an "
                           "ambiguous abbreviation of their options")
    resp.add_argument("--temperature", type=number(float, ge=0), default=1.0, help="sampling temperature (default 1.0)")
    resp.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (default 1.0)")
    resp.add_argument("--max-new-tokens", type=int, default=64, help="generation length cap (default 64)")
    resp.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    resp.add_argument("--backend", choices=["torch", "vllm"], default="torch",
                      help="sampler of the responses: the built-in one (default) or vLLM (GPU; pip install vllm)")
    resp.add_argument("--tokenizer", metavar="DIR", default=None,
                        help="load this tokenizer for both models (e.g. when an RL checkpoint changed a special token "
                        "or saved none); default: each model's own")
    resp.add_argument("--chat-template", action="store_true", help="wrap each prompt in the tokenizer's chat template")
    resp.add_argument("--block-size", type=int, default=16,
                      help="prompts per generation batch; the unit of seeding and of sharding over processes "
                           "(results do not depend on the number of processes; default 16)")
    parser.add_argument("--top-k", type=int, default=5,
                        help="K: ranks 2..K are 'reranked', ranks > K 'shifted' (default 5)")
    parser.add_argument("--out", metavar="DIR", default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument("--tokens-format", choices=["jsonl", "parquet"], default="jsonl",
                        help="per-token table format: tokens.jsonl (default) or tokens.parquet (needs pyarrow)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_overwrite_arg(parser)
    parser.set_defaults(func=run)


def _print(summary: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    def pct(x):
        return "—" if x is None else f"{100 * x:.2f}%"

    def num(x):
        return "—" if x is None else f"{x:.3f}"

    console = Console()
    table = Table(title=f"forklens diff ({summary['n_responses']} responses, {summary['n_tokens']} tokens)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for label, value in [
        ("unshifted", pct(summary["unshifted_frac"])),
        ("reranked", pct(summary["reranked_frac"])),
        ("shifted", pct(summary["shifted_frac"])),
        ("mean rank at disagreement", num(summary["mean_rank_at_disagreement"])),
        ("mean base entropy (all / disagreement)",
         f"{num(summary['entropy_mean_all'])} / {num(summary['entropy_mean_disagreement'])}"),
        ("entropy ratio", num(summary["entropy_ratio"])),
        ("disagreement in top entropy decile", pct(summary["disagreement_in_top_entropy_decile"])),
        ("mean KL(base || RL)", num(summary["kl_mean"])),
    ]:
        table.add_row(label, value)
    if summary.get("correctness"):
        table.add_row("accuracy", pct(summary["correctness"]["accuracy"]))
    console.print(table)
    console.print("wrote:")
    for name in (summary.get("files") or {}).values():
        console.print(f"  {out / name}", soft_wrap=True, highlight=False)


def run(args: argparse.Namespace) -> int:
    import torch

    quiet_third_party()
    started = dist.init_process_group(args.device)
    try:
        rank = dist.rank()
        device = args.device
        if device is None and torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        scaffolds = {side: load_scaffold(getattr(args, f"{side}_skill"), _unescape(getattr(args, f"{side}_template")),
                                         what=f"--{side}-skill/--{side}-template") for side in ("base", "rl")}
        if args.rl is None and scaffolds["rl"].is_identity:
            raise ConfigError("--rl is required (it may be left out only with --rl-skill or --rl-template, to diff "
                              "--base against itself with a scaffold)")
        prompts = load_prompts(args.prompts)
        out = prepare_out(args, "diff")
        base = Policy.load(args.base, dtype=args.dtype, device=device, tokenizer_path=args.tokenizer)
        rl = base if args.rl is None else Policy.load(args.rl, dtype=args.dtype, device=device,
                                                       tokenizer_path=args.tokenizer)
        base.warn_unknown_chars([(f"{args.prompts} line {p['line']}", prompt_text(p["prompt"])) for p in prompts])
        if args.backend != "torch" and args.responses in ("rl-greedy", "rl-sample", "base-sample"):
            (base if args.responses == "base-sample" else rl).use_backend(args.backend)
        summary = run_diff(
            base, rl, prompts, responses=args.responses, n=args.n, temperature=args.temperature,
            top_p=args.top_p, max_new_tokens=args.max_new_tokens, top_k=args.top_k,
            chat_template=args.chat_template, seed=args.seed, out_dir=out, block_size=args.block_size,
            progress=False if args.no_progress else None, tokens_format=args.tokens_format,
            base_scaffold=scaffolds["base"], rl_scaffold=scaffolds["rl"],
        )
        if rank == 0:
            _print(summary, out)
    finally:
        if started:
            dist.destroy_process_group()
    return 0


def _unescape(template: str | None) -> str | None:
    """A template typed on a command line: \\n and \\t become a newline and a tab."""
    return None if template is None else template.replace("\\n", "\n").replace("\\t", "\t")
