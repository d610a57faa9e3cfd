"""`forklens train grpo|sft`: the one trainer with an objective and a data source."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from forklens.analysis.prompts import read_jsonl
from forklens.commands import train_fork_contrast
from forklens.commands._common import (add_config_args, add_overwrite_arg, console, handle_config_flags, prepare_out, quiet_third_party, resolve_config)
from forklens.config import field
from forklens.errors import DataError, ForklensWarning
from forklens.policy import Policy
from forklens.tasks import get_task
from forklens.train.loop import TrainConfig
from forklens.train.run import RLConfig, train
from forklens.train.run import run_grpo as grpo
from forklens.train.sources import SFTOrder, SFTSource


@dataclass
class SFTRunConfig:
    train: TrainConfig = field(default_factory=lambda: TrainConfig(learning_rate=1e-4),
                               help="Optimizer and loop settings.")
    batch_size: int = field(64, ge=1, help="Examples per optimizer step.")
    order: SFTOrder = field("shuffle", help="Example order: shuffle (every epoch), reverse_perplexity (SU-01 curriculum: "
                       "highest initial-model perplexity first, no shuffling) or perplexity (low to high).")


def register(sub) -> None:
    p = sub.add_parser("train", help="Train a model: grpo, sft or fork-contrast.")
    tsub = p.add_subparsers(dest="objective", metavar="OBJECTIVE", required=True)
    g = tsub.add_parser("grpo", help="GRPO/DAPO/Dr.GRPO on a task with an exact verifier.")
    g.add_argument("--model", required=True, help="Hugging Face model directory to start from.")
    g.add_argument("--task", default="arith", help="Built-in task (default: arith; agent trains on multi-turn "
                   "tool-use episodes, sampling.T and sampling.turn_tokens apply).")
    g.add_argument("--out", default="runs/grpo", help="Run directory (checkpoints, metrics.jsonl, model/).")
    g.add_argument("--resume", action="store_true", help="Continue from the latest checkpoint in --out.")
    add_overwrite_arg(g)
    g.add_argument("--backend", choices=["torch", "vllm"], default=None,
                   help="Rollout sampler (same as --set sampling.backend=...; default torch, the built-in one).")
    add_config_args(g)
    g.set_defaults(func=run_grpo)
    s = tsub.add_parser("sft", help="Supervised fine-tuning on a JSONL of {prompt, response}.")
    s.add_argument("--model", required=True, help="Hugging Face model directory to start from.")
    s.add_argument("--data", required=True, help="JSONL file, one {\"prompt\": ..., \"response\": ...} per line.")
    s.add_argument("--out", default="runs/sft", help="Run directory.")
    s.add_argument("--resume", action="store_true", help="Continue from the latest checkpoint in --out.")
    add_overwrite_arg(s)
    add_config_args(s)
    s.set_defaults(func=run_sft)
    train_fork_contrast.register(tsub)


def run_grpo(args) -> int:
    quiet_third_party()
    cfg = resolve_config(RLConfig, args)
    if args.backend is not None:
        cfg.sampling.backend = args.backend
    if handle_config_flags(RLConfig, cfg, args):
        return 0
    task = get_task(args.task)
    prepare_out(args, "train-grpo", resumable=True)
    info = grpo(Path(args.model), task, cfg, Path(args.out), seed=cfg.train.seed, resume=args.resume)
    console.print(f"GRPO: {info['steps']} steps, {info['flops']:.3g} FLOPs, {info['wall_s']:.0f} s; "
                  f"model saved to {info['model_dir']}; metrics in {args.out}/metrics.jsonl")
    return 0


def read_sft_jsonl(path: str) -> list[tuple[int, str, str]]:
    """``(line, prompt, response)`` from a JSONL file of {"prompt": ..., "response": ...} objects; warns
    once about empty prompts or responses (legal, but rarely meant)."""
    rows = []
    for lineno, rec in read_jsonl(path, "data"):
        for key in ("prompt", "response"):
            if key not in rec:
                raise DataError(f"{path} line {lineno}: missing the required \"{key}\" field")
            if not isinstance(rec[key], str):
                raise DataError(f"{path} line {lineno}: \"{key}\" must be a string, got {type(rec[key]).__name__}")
        rows.append((lineno, rec["prompt"], rec["response"]))
    empty = [(line, key) for line, p, r in rows for key, text in (("prompt", p), ("response", r)) if not text.strip()]
    if empty:
        warnings.warn(f"{path}: {len(empty)} empty prompt(s) or response(s) (first: the {empty[0][1]} on line "
                      f"{empty[0][0]})", ForklensWarning, stacklevel=2)
    return rows


def check_sft_examples(policy, rows: list[tuple[int, str, str]], path: str) -> list[tuple[str, str]]:
    """The ``(prompt, response)`` pairs of ``rows``, after checking, before any training, that each fits
    the model's context (naming its line) and warning about characters the tokenizer cannot encode."""
    for line, prompt, response in rows:
        n = len(policy.encode_prompt(prompt)) + len(policy.encode_response(response))
        policy.check_length(n, f"{path} line {line}: the example")
    policy.warn_unknown_chars([(f"{path} line {line}", p + r) for line, p, r in rows])
    return [(p, r) for _, p, r in rows]


def run_sft(args) -> int:
    quiet_third_party()
    cfg = resolve_config(SFTRunConfig, args)
    if handle_config_flags(SFTRunConfig, cfg, args):
        return 0
    rows = read_sft_jsonl(args.data)
    prepare_out(args, "train-sft", resumable=True)
    policy = Policy.load(args.model)
    pairs = check_sft_examples(policy, rows, args.data)
    source = SFTSource(pairs, cfg.batch_size, cfg.train.seed, order=cfg.order, policy=policy)
    res = train(policy, "sft", None, source, cfg.train, args.out, name="SFT", resume=args.resume,
                model_dir=Path(args.out) / "model")
    console.print(f"SFT: {res.steps} steps, {res.flops:.3g} FLOPs; model saved to {res.model_dir}")
    return 0
