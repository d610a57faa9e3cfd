"""Helpers shared by subcommands: config loading, quiet third-party logging, output messages."""

from __future__ import annotations

import argparse
import dataclasses
import os
import warnings
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table
from transformers.utils import logging as hf_logging

from forklens import runfolder
from forklens.config import describe, load_config, to_dict
from forklens.errors import ConfigError
from forklens.rewards import load_reward
from forklens.tasks import get_task
from forklens.tasks.dataset import DataColumns, load_dataset_task
from forklens.train.logging import check_trackers

console = Console(stderr=True)


def number(kind=int, ge: float | None = None, gt: float | None = None, le: float | None = None):
    """An argparse ``type`` that reads a ``kind`` (int or float) and checks its range, so a flag such as
    ``--batch-size 0`` is a usage error (exit 2) naming the flag, the value and the bound."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        for bound, ok, op in ((ge, lambda v, b: v >= b, ">="), (gt, lambda v, b: v > b, ">"),
                              (le, lambda v, b: v <= b, "<=")):
            if bound is not None and not (value == value and ok(value, bound)):  # NaN fails every bound
                raise argparse.ArgumentTypeError(f"must be {op} {bound}, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def add_config_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("configuration")
    g.add_argument("--config", metavar="FILE.yaml", help="YAML config file (keys as in --help-config).")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="Override one config key (dotted, e.g. rl.train.max_steps=30); repeatable; wins over --config.")
    g.add_argument("--help-config", action="store_true", help="List every config key with its default and help, then exit.")
    g.add_argument("--print-config", action="store_true", help="Print the resolved config as YAML, then exit.")


def add_overwrite_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace what an earlier forklens run wrote in --out (other files are kept). Without it "
                        "a non-empty --out that is not a new or resumable run of this command is refused.")


def prepare_out(args, kind: str, resumable: bool = False) -> Path:
    """Check and mark ``args.out`` for a run of ``kind`` (see :mod:`forklens.runfolder`). Under a
    multi-process launcher only rank 0 does (the others would race it)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return Path(args.out)
    inputs = []  # every existing path the command was given: never removed by --overwrite
    for name, value in vars(args).items():
        for v in value if isinstance(value, list) else [value]:
            if name != "out" and isinstance(v, str) and v and "=" not in v and Path(v).exists():
                inputs.append(v)
    return runfolder.prepare_out(args.out, kind, resume=bool(getattr(args, "resume", False)),
                                 overwrite=bool(getattr(args, "overwrite", False)), resumable=resumable,
                                 inputs=inputs)


def check_config_trackers(cfg) -> None:
    """Every ``report_to`` / ``tensorboard`` setting in ``cfg`` names an installed tracker (a clear error
    now, before an output folder is marked, rather than at the first training step)."""
    if not dataclasses.is_dataclass(cfg):
        return
    names = list(getattr(cfg, "report_to", None) or []) + (["tensorboard"] if getattr(cfg, "tensorboard", False) is True else [])
    if names:
        check_trackers(names)
    for f in dataclasses.fields(cfg):
        check_config_trackers(getattr(cfg, f.name, None))


def resolve_config(cls, args, base_file: Path | None = None, extra: list[str] | None = None):
    """Defaults <- packaged recipe ``base_file`` <- ``--config`` <- ``extra`` <- ``--set`` overrides."""
    cfg = load_config(cls, base_file) if base_file is not None else cls()
    cfg = load_config(cls, args.config, list(extra or []) + list(args.overrides), base=cfg)
    check_config_trackers(cfg)
    return cfg


def experiment_config(cls, args, base=None):
    """An experiment's config: defaults (or ``base``, e.g. its --quick recipe) <- ``--config`` <-
    ``--seeds`` (when the command has it; must be >= 1) <- ``--set`` overrides."""
    seeds = getattr(args, "seeds", None)
    if seeds is not None and seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    extra = [f"seeds={seeds}"] if seeds is not None else []
    cfg = load_config(cls, args.config, extra + list(args.overrides), base=base if base is not None else cls())
    check_config_trackers(cfg)
    return cfg


def require(args, *flags: str) -> None:
    """Arguments a run needs but ``--help-config`` / ``--print-config`` do not (so argparse leaves them
    optional): a one-line error naming the first one missing."""
    for flag in flags:
        if getattr(args, flag.lstrip("-").replace("-", "_"), None) in (None, ""):
            raise ConfigError(f"{flag} is required")


def handle_config_flags(cls, cfg, args) -> bool:
    """Serve --help-config / --print-config. Returns True when the command should exit."""
    if args.help_config:
        table = Table(title=f"{cls.__name__} keys")
        for col in ("key", "default", "help"):
            table.add_column(col)
        for row in describe(cls, defaults=cfg):
            table.add_row(*row)
        Console().print(table)
        return True
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return True
    return False


def quiet_third_party() -> None:
    """Keep the terminal for forklens' own progress: silence transformers' bars and advisory warnings."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    warnings.filterwarnings("ignore", message=".*past_key_values.*")


def add_data_args(p, *, reward: bool = False, default_task: str | None = "arith", group=None) -> None:
    """``--data`` (your problems; instead of ``--task``), its column flags and, with ``reward``, ``--reward``
    (into ``group`` when given, else a new argument group of ``p``)."""
    g = group if group is not None else p.add_argument_group("your data (instead of a built-in --task; docs/data.md)")
    g.add_argument("--data", metavar="FILE", default=None,
                   help="Problems: JSONL, JSON, parquet or a datasets save_to_disk folder, in TRL's formats (prompt "
                   "string or chat messages, messages, prompt/completion) or verl's (reward_model.ground_truth).")
    g.add_argument("--prompt-column", default="", metavar="COL", help="Prompt column (default: prompt, messages, "
                   "question or problem, whichever is present).")
    g.add_argument("--answer-column", default="", metavar="COL", help="Gold-answer column, dotted for nested "
                   "(default: answer, solution, ground_truth or reward_model.ground_truth).")
    g.add_argument("--data-split", default="", metavar="NAME", help="Split of a DatasetDict folder.")
    if reward:
        g.add_argument("--reward", action="append", default=[], metavar="MODULE:FUNCTION",
                       help="Reward function in TRL's signature (repeatable; FILE.py:FUNCTION also works). Default: "
                       "the task's verifier (with --data: the answer column, boxed/numeric/last-line match).")
        g.add_argument("--reward-weights", default=None, metavar="W1,W2,...",
                       help="Weights of the --reward functions (default: 1 each).")
    p.set_defaults(_default_task=default_task)


def task_from_args(args, *, default_split: str = "train"):
    """The task of a command: ``--data`` as a :class:`~forklens.tasks.dataset.DatasetTask`, else ``--task``."""
    if getattr(args, "data", None):
        if getattr(args, "task", None):
            raise ConfigError("give --data or --task, not both")
        cols = DataColumns(prompt_column=args.prompt_column, answer_column=args.answer_column,
                           split=args.data_split)
        return load_dataset_task(args.data, cols, default_split=default_split,
                                 require_answer=not getattr(args, "reward", None))
    return get_task(getattr(args, "task", None) or args._default_task)


def rewards_from_args(args) -> tuple[list | None, list[float] | None]:
    """``(reward_fns, weights)`` from ``--reward`` / ``--reward-weights`` (None, None: the task's verifier)."""
    specs = getattr(args, "reward", None) or []
    if not specs:
        if getattr(args, "reward_weights", None):
            raise ConfigError("--reward-weights needs --reward")
        return None, None
    fns = [load_reward(s) for s in specs]
    if args.reward_weights is None:
        return fns, None
    try:
        weights = [float(w) for w in args.reward_weights.split(",")]
    except ValueError:
        raise ConfigError(f"--reward-weights {args.reward_weights!r}: expected comma-separated numbers") from None
    if len(weights) != len(fns):
        raise ConfigError(f"--reward-weights has {len(weights)} weights for {len(fns)} --reward functions")
    return fns, weights
