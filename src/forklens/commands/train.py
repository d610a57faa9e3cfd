"""`forklens train grpo|sft`: the one trainer with an objective and a data source."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from forklens.commands import train_fork_contrast, train_reward_model
from forklens.commands._common import (add_config_args, add_data_args, add_overwrite_arg, console, handle_config_flags,
                                       prepare_out, quiet_third_party, require, resolve_config, rewards_from_args,
                                       task_from_args)
from forklens.config import field
from forklens.errors import DataError, ForklensWarning
from forklens.policy import Policy
from forklens.tasks.dataset import DataColumns, completion_text, read_rows, row_problem
from forklens.train.loop import TrainConfig
from forklens.train.lora import LoraSettings
from forklens.train.run import RLConfig, train
from forklens.train.run import run_grpo as grpo
from forklens.train.sources import SFTOrder, SFTSource


@dataclass
class SFTRunConfig:
    train: TrainConfig = field(default_factory=lambda: TrainConfig(learning_rate=1e-4),
                               help="Optimizer and loop settings.")
    batch_size: int = field(64, ge=1, help="Examples per optimizer step.")
    lora: LoraSettings = field(default_factory=LoraSettings, help="LoRA adapters instead of all weights "
                               "(lora.enabled=true; merged into the saved model, adapters in OUT/adapter).")
    order: SFTOrder = field("shuffle", help="Example order: shuffle (every epoch), reverse_perplexity (SU-01 curriculum: "
                       "highest initial-model perplexity first, no shuffling) or perplexity (low to high).")


def register(sub) -> None:
    p = sub.add_parser("train", help="Train a model: grpo, sft, fork-contrast or a reward model.")
    tsub = p.add_subparsers(dest="objective", metavar="OBJECTIVE", required=True)
    g = tsub.add_parser("grpo", help="GRPO/DAPO/Dr.GRPO on a task with an exact verifier.")
    g.add_argument("--model", help="Hugging Face model directory (or PEFT adapter folder) to start from (required).")
    g.add_argument("--task", default=None, help="Built-in task (default: arith; agent trains on multi-turn "
                   "tool-use episodes, sampling.T and sampling.turn_tokens apply).")
    add_data_args(g, reward=True)
    g.add_argument("--out", default="runs/grpo", help="Run directory (checkpoints, metrics.jsonl, model/).")
    g.add_argument("--resume", action="store_true", help="Continue from the latest checkpoint in --out.")
    add_overwrite_arg(g)
    g.add_argument("--backend", choices=["torch", "vllm"], default=None,
                   help="Rollout sampler (same as --set sampling.backend=...; default torch, the built-in one).")
    add_config_args(g)
    g.set_defaults(func=run_grpo)
    s = tsub.add_parser("sft", help="Supervised fine-tuning on {prompt, response} pairs (JSONL, parquet, datasets; "
                        "TRL's prompt/completion and messages formats too).")
    s.add_argument("--model", help="Hugging Face model directory (or PEFT adapter folder) to start from (required).")
    s.add_argument("--data", help="(required) JSONL/JSON/parquet file or datasets folder: {\"prompt\", \"response\"}, "
                   "{\"prompt\", \"completion\"} or {\"messages\"} rows (prompts may be chat messages).")
    s.add_argument("--out", default="runs/sft", help="Run directory.")
    s.add_argument("--resume", action="store_true", help="Continue from the latest checkpoint in --out.")
    add_overwrite_arg(s)
    add_config_args(s)
    s.set_defaults(func=run_sft)
    train_fork_contrast.register(tsub)
    train_reward_model.register(tsub)


def run_grpo(args) -> int:
    quiet_third_party()
    cfg = resolve_config(RLConfig, args)
    if args.backend is not None:
        cfg.sampling.backend = args.backend
    if handle_config_flags(RLConfig, cfg, args):
        return 0
    require(args, "--model")
    task = task_from_args(args)
    reward_fns, weights = rewards_from_args(args)
    prepare_out(args, "train-grpo", resumable=True)
    info = grpo(Path(args.model), task, cfg, Path(args.out), seed=cfg.train.seed, resume=args.resume,
                reward_fns=reward_fns, reward_weights=weights)
    console.print(f"GRPO: {info['steps']} steps, {info['flops']:.3g} FLOPs, {info['wall_s']:.0f} s; "
                  f"model saved to {info['model_dir']}; metrics in {args.out}/metrics.jsonl")
    return 0


def read_sft_jsonl(path: str) -> list[tuple[str, str | list, str]]:
    """``(location, prompt, response)`` of each row of an SFT data file (JSONL, JSON, parquet or a datasets
    folder): ``prompt`` + ``response``, TRL's ``prompt`` + ``completion`` (strings or chat messages) or
    ``messages`` (the last assistant message is the response). Warns once about empty prompts or responses
    (legal, but rarely meant)."""
    rows = []
    for where, rec in read_rows(path):
        if "messages" not in rec:
            if "prompt" not in rec:
                raise DataError(f"{where}: missing the required \"prompt\" field (or \"messages\")")
            key = "completion" if "completion" in rec and "response" not in rec else "response"
            if key not in rec:
                raise DataError(f"{where}: missing the required \"response\" field (or \"completion\")")
            for k in ("prompt", key):
                if not isinstance(rec[k], (str, list)):
                    raise DataError(f"{where}: \"{k}\" must be a string, got {type(rec[k]).__name__}")
        p = row_problem(where, rec, DataColumns(prompt_column="" if "messages" in rec else "prompt", id_column=""), 0)
        if p.meta.get("expert") is None:
            raise DataError(f"{where}: no assistant message to train on in \"messages\"")
        rows.append((where, p.prompt, p.meta["expert"]))
    empty = [(where, key) for where, p, r in rows for key, text in (("prompt", p), ("response", r))
             if isinstance(text, str) and not text.strip()]
    if empty:
        where = empty[0][0].removeprefix(f"{path} ")
        warnings.warn(f"{path}: {len(empty)} empty prompt(s) or response(s) (first: the {empty[0][1]} on {where})",
                      ForklensWarning, stacklevel=2)
    return rows


def check_sft_examples(policy, rows: list[tuple[str, str | list, str]], path: str) -> list[tuple[str, str]]:
    """The ``(prompt, response)`` pairs of ``rows``, after checking, before any training, that each fits
    the model's context (naming its row) and warning about characters the tokenizer cannot encode."""
    for where, prompt, response in rows:
        n = len(policy.encode_prompt(prompt)) + len(policy.encode_response(response))
        policy.check_length(n, f"{where}: the example")
    policy.warn_unknown_chars([(where, completion_text(p) + r) for where, p, r in rows])
    return [(p, r) for _, p, r in rows]


def run_sft(args) -> int:
    quiet_third_party()
    cfg = resolve_config(SFTRunConfig, args)
    if handle_config_flags(SFTRunConfig, cfg, args):
        return 0
    require(args, "--model", "--data")
    rows = read_sft_jsonl(args.data)
    prepare_out(args, "train-sft", resumable=True)
    policy = Policy.load(args.model)
    pairs = check_sft_examples(policy, rows, args.data)
    source = SFTSource(pairs, cfg.batch_size, cfg.train.seed, order=cfg.order, policy=policy)
    res = train(policy, "sft", None, source, cfg.train, args.out, name="SFT", resume=args.resume,
                model_dir=Path(args.out) / "model", lora=cfg.lora)
    console.print(f"SFT: {res.steps} steps, {res.flops:.3g} FLOPs; model saved to {res.model_dir}")
    return 0
