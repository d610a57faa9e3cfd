"""The `forklens` command line. Subcommands only: parse, call the library, say where outputs went.

Each subcommand lives in ``forklens.commands.<name>`` and exposes ``register(subparsers)``, which adds
its parser and sets ``func`` (a callable taking the parsed ``argparse.Namespace`` and returning an exit
status). :data:`COMMANDS` lists them in ``--help`` order; a module that fails to import is an error,
never a silently missing command.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import warnings

from safetensors import SafetensorError

from forklens import __version__, dist
from forklens.commands import (audit, demo, diff, diff_overlap, evaluate, experiment, intervene, organism, passk,
                               plot, probe, results, train)
from forklens.commands import search as search_command
from forklens.errors import ForklensError, ForklensWarning
from forklens.policy.load import is_corrupt_file_error
from forklens.runfolder import record_prepared

# Errors that point at the user's input rather than at forklens: a path that is missing, of the wrong
# kind or unreadable, a JSON file that does not parse. They get a one-line message and exit status 2;
# anything else is a bug and keeps its traceback.
USER_PATH_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError)

COMMANDS = [demo, organism, train, evaluate, diff, diff_overlap, intervene, passk, probe, plot, experiment, audit, results]
COMMANDS += [search_command]


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
    with warnings.catch_warnings():
        warnings.simplefilter("always", ForklensWarning)  # _warning_printer prints each message once per run
        warnings.showwarning = _warning_printer(args.command, warnings.showwarning)
        return _run(args)


def _run(args) -> int:
    prefix = f"forklens {args.command}: error:"
    try:
        code = int(args.func(args) or 0)
        record_prepared(finished=code == 0)
        if _close_process_group() or int(os.environ.get("WORLD_SIZE", "1")) > 1:
            _exit_now(code)  # one rank of several: see _exit_now
        return code
    except ForklensError as exc:
        print(f"{prefix} {exc}", file=sys.stderr)
        return 2
    except USER_PATH_ERRORS as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"{prefix} {exc.strerror or type(exc).__name__}{where}", file=sys.stderr)
        return 2
    except json.JSONDecodeError as exc:
        print(f"{prefix} a JSON input is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
              file=sys.stderr)
        return 2
    except (RuntimeError, EOFError, pickle.UnpicklingError, SafetensorError) as exc:
        if not is_corrupt_file_error(exc):
            raise  # a bug: keep the traceback
        print(f"{prefix} a model, checkpoint or data file is truncated or corrupt: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"forklens {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        record_prepared(finished=False)  # what a failed command wrote; a no-op after a recorded success


def _warning_printer(command: str, default):
    """``warnings.showwarning`` that prints a :class:`ForklensWarning` as one line, once per run (a config
    resolved in two passes is validated twice), and other warnings as usual."""
    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, ForklensWarning):
            if str(message) not in seen:
                seen.add(str(message))
                print(f"forklens {command}: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)
    return show


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
