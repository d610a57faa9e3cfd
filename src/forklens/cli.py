"""The `forklens` command line. Subcommands only: parse, call the library, say where outputs went.

Each subcommand lives in ``forklens.commands.<name>`` and exposes ``register(subparsers)``, which adds
its parser and sets ``func`` (a callable taking the parsed ``argparse.Namespace`` and returning an exit
status). :data:`COMMANDS` lists them in ``--help`` order; a module that fails to import is an error,
never a silently missing command.
"""

from __future__ import annotations

import argparse
import os
import sys

from forklens import __version__, dist
from forklens.commands import audit, demo, diff, evaluate, experiment, intervene, organism, passk, probe, train
from forklens.errors import ForklensError
from forklens.runfolder import record_prepared

COMMANDS = [demo, organism, train, evaluate, diff, intervene, passk, probe, experiment, audit]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="forklens",
        description="What RL does to a language model at the token level.",
    )
    parser.add_argument("--version", action="version", version=f"forklens {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
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
        record_prepared(finished=code == 0)
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
    finally:
        record_prepared(finished=False)  # what a failed command wrote; a no-op after a recorded success


def _close_process_group() -> bool:
    """Under a multi-process launcher, wait for every rank (rank 0 may still be writing files) and
    close the process group. Returns whether there was one."""
    group = dist.group()
    if group is not None:
        group.barrier()
        group.destroy_process_group()
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
