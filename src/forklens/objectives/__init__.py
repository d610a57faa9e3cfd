"""Objectives: pure functions ``(policy outputs, batch, config) -> ObjectiveResult``.

An objective returns the *sum* of its per-unit losses over the micro-batch and the number of units
(tokens or sequences) that sum is over. It never divides by a micro-batch quantity. The trainer adds
the sums and counts over all micro-batches of an optimizer step (and all data-parallel ranks) and
divides once, so every objective is invariant to micro-batch size, gradient accumulation and world
size by construction.

A second loss term that must be normalised by its *own* count (ECHO's environment-token loss is
divided by the number of observation tokens, not by the policy's token count) goes in
``ObjectiveResult.terms``. Because the trainer back-propagates every micro-batch before it has seen the
rest of the step, such an objective also declares the counts up front: ``objective.term_counts(batch,
config)`` returns ``{"loss": main count, NAME: count of term NAME}`` from the batch alone (or None when
the config adds no term). The trainer sums those over micro-batches and ranks first, then
back-propagates ``sum_k loss_sum_k * world / N_k``. An objective may also define
``objective.prepare(model, micro_batches, config)``: a pre-pass over the whole optimizer step (every
micro-batch, all ranks) that writes per-token tags, for quantities that must be global to the step,
such as the entropy threshold of ``top_entropy_quantile``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

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
    #: extra terms normalised separately: name -> (differentiable sum, count); see the module docstring
    terms: dict[str, tuple[torch.Tensor, torch.Tensor | float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Objective:
    """A loss registered by name with its optional trainer hooks (see the module docstring): ``prepare``
    (step-global pre-pass), ``target_tags`` (extra scored positions) and ``term_counts`` (counts of
    separately normalised terms). Calling it calls the loss."""

    name: str
    loss: Callable[..., ObjectiveResult]
    prepare: Callable[..., dict[str, float] | None] | None = None
    target_tags: Callable[[Any], list[str]] | None = None
    term_counts: Callable[..., dict[str, float] | None] | None = None
    #: the loss takes an importance ratio against ``batch.old_logprobs`` (the trainer records them
    #: before the first of several updates on one batch, so the ratio and its clipping act)
    uses_old_logprobs: bool = False

    def __call__(self, out: PolicyOutputs, batch, config) -> ObjectiveResult:
        return self.loss(out, batch, config)


OBJECTIVES: dict[str, Objective] = {}


def register(name: str, prepare=None, target_tags=None, term_counts=None, uses_old_logprobs: bool = False):
    """Register the decorated loss as objective ``name`` with the given hooks; returns the loss unchanged."""
    def deco(fn):
        OBJECTIVES[name] = Objective(name, fn, prepare=prepare, target_tags=target_tags, term_counts=term_counts,
                                     uses_old_logprobs=uses_old_logprobs)
        return fn
    return deco


def get_objective(name: str) -> Objective:
    # importing a module registers its objectives (they import this package, so not at the top)
    from forklens.objectives import env_tokens, fork_contrast, grpo, mixed_policy, sft  # noqa: F401

    if name not in OBJECTIVES:
        raise KeyError(f"unknown objective {name!r}; known: {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[name]
