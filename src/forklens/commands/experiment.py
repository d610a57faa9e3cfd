"""`forklens experiment NAME`: multi-stage recipes (organism -> training -> analysis -> report).

Each experiment lives in ``forklens.experiments.<module>`` and exposes ``register_cli(subparsers)``,
which adds ``forklens experiment <name>`` with ``set_defaults(func=...)``.
"""

from __future__ import annotations

import importlib

EXPERIMENTS = ["fork_vs_rl", "sft_then_rl", "boundary", "rewards", "levers"]


def register(sub) -> None:
    p = sub.add_parser("experiment", help="Run a multi-stage experiment on the built-in organisms.")
    esub = p.add_subparsers(dest="experiment", metavar="NAME", required=True)
    for name in EXPERIMENTS:
        try:
            module = importlib.import_module(f"forklens.experiments.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"forklens.experiments.{name}":
                continue
            raise
        module.register_cli(esub)
