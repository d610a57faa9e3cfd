"""Objectives: pure functions ``(policy outputs, batch, config) -> ObjectiveResult``.

An objective returns the *sum* of its per-unit losses over the micro-batch and the number of units
(tokens or sequences) that sum is over. It never divides by a micro-batch quantity. The trainer adds
the sums and counts over all micro-batches of an optimizer step (and all data-parallel ranks) and
divides once, so every objective is invariant to micro-batch size, gradient accumulation and world
size by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class PolicyOutputs:
    """What the trainer's forward pass gives an objective; [B, L] aligned with ``input_ids``."""

    logprobs: torch.Tensor  # differentiable log-prob of each token (0 where not a target)
    entropy: torch.Tensor | None = None  # detached entropy at target positions
    gathered_logprobs: torch.Tensor | None = None  # [B, L, K] log-probs at batch.tags["gather_ids"]


@dataclass
class ObjectiveResult:
    loss_sum: torch.Tensor  # scalar, differentiable; sum over units
    count: torch.Tensor | float  # number of units the sum is over (tokens or sequences)
    metrics: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (sum, count)


OBJECTIVES: dict[str, object] = {}


def register(name: str):
    def deco(fn):
        OBJECTIVES[name] = fn
        return fn
    return deco


def get_objective(name: str):
    import importlib
    import pkgutil

    import forklens.objectives as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):  # importing a module registers its objectives
        importlib.import_module(f"forklens.objectives.{mod.name}")

    if name not in OBJECTIVES:
        raise KeyError(f"unknown objective {name!r}; known: {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[name]
