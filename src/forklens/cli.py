"""The `forklens` command line. Subcommands only: parse, call the library, say where outputs went.

Each subcommand lives in ``forklens.commands.<name>`` and exposes ``register(subparsers)``, which adds
its parser and sets ``func`` (a callable taking the parsed ``argparse.Namespace`` and returning an exit
status).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from forklens import __version__
from forklens.errors import ForklensError

COMMANDS = ["demo", "organism", "train", "evaluate", "diff", "intervene", "passk", "probe", "experiment", "audit", "results"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="forklens",
        description="What RL does to a language model at the token level.",
    )
    parser.add_argument("--version", action="version", version=f"forklens {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"forklens.commands.{name}")
        except ModuleNotFoundError as exc:  # a command whose module is not written yet
            if exc.name == f"forklens.commands.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = int(args.func(args) or 0)
        if _close_process_group() or int(os.environ.get("WORLD_SIZE", "1")) > 1:
            _exit_now(code)  # one rank of several: see _exit_now
        return code
    except ForklensError as exc:
        print(f"forklens {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"forklens {args.command}: interrupted", file=sys.stderr)
        return 130


def _close_process_group() -> bool:
    """Under a multi-process launcher, wait for every rank (rank 0 may still be writing files) and
    close the process group. Returns whether there was one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        return True
    return False


def _exit_now(code: int) -> None:
    """End a finished rank without the interpreter's teardown: with gloo, a rank's C++ teardown at
    exit sometimes aborts ("terminate called without an active exception", seen on a loaded 2-core
    machine), which the launcher reports as a failed run although every file was written."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
