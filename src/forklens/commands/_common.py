"""Helpers shared by subcommands: config loading, quiet third-party logging, output messages."""

from __future__ import annotations

import argparse
import os
import warnings
from importlib import resources
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from forklens.config import describe, load_config, to_dict

console = Console(stderr=True)


def packaged_config(name: str) -> Path:
    """Path of a YAML recipe shipped with forklens (``configs/NAME.yaml``)."""
    return Path(str(resources.files("forklens") / "configs" / f"{name}.yaml"))


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


def resolve_config(cls, args, base_file: Path | None = None, extra: list[str] | None = None):
    """Defaults <- packaged recipe ``base_file`` <- ``--config`` <- ``extra`` <- ``--set`` overrides."""
    cfg = load_config(cls, base_file) if base_file is not None else cls()
    cfg = load_config(cls, args.config, list(extra or []) + list(args.overrides), base=cfg)
    return cfg


def experiment_config(cls, args, base=None):
    """An experiment's config: defaults (or ``base``, e.g. its --quick recipe) <- ``--config`` <-
    ``--seeds`` (when the command has it; must be >= 1) <- ``--set`` overrides."""
    from forklens.errors import ConfigError

    seeds = getattr(args, "seeds", None)
    if seeds is not None and seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    extra = [f"seeds={seeds}"] if seeds is not None else []
    return load_config(cls, args.config, extra + list(args.overrides), base=base if base is not None else cls())


def handle_config_flags(cls, cfg, args) -> bool:
    """Serve --help-config / --print-config. Returns True when the command should exit."""
    if args.help_config:
        table = Table(title=f"{cls.__name__} keys")
        for col in ("key", "default", "help"):
            table.add_column(col)
        for row in describe(cls):
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
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    warnings.filterwarnings("ignore", message=".*past_key_values.*")
