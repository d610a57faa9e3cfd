"""Advantage estimators, registered by name beside the losses (verl ``core_algos`` style).

An estimator is a pure function ``(rewards [N], group_ids [N], **options) -> (advantages [N], per-row
group std [N])``; a run picks one with a config key (``sampling.advantage_estimator``) and the data
stage that holds whole groups calls :func:`estimate_advantages`. Both registered estimators are the one
group-normalised implementation, :func:`group_advantages`, with different options:

* ``grpo`` (default; arXiv 2402.03300, TRL's GRPO): ``(r - mean_group) / (std + 1e-4)`` with the
  *unbiased* group std, or the batch std, or no scaling (``scale_rewards``);
* ``grpo_population`` (the fork-contrast data, docs/fork_contrast.md): ``(r - mean) / max(std, 1e-8)``
  with the *population* std of the group, clipped to ``+-clip``.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch

ScaleRewards = Literal["group", "batch", "none"]
StdKind = Literal["unbiased", "population"]

ADVANTAGE_ESTIMATORS: dict[str, Callable] = {}


def register_advantage(name: str):
    def deco(fn):
        ADVANTAGE_ESTIMATORS[name] = fn
        return fn
    return deco


def get_advantage_estimator(name: str) -> Callable:
    if name not in ADVANTAGE_ESTIMATORS:
        raise KeyError(f"unknown advantage estimator {name!r}; known: {', '.join(sorted(ADVANTAGE_ESTIMATORS))}")
    return ADVANTAGE_ESTIMATORS[name]


def estimate_advantages(name: str, rewards: torch.Tensor, group_ids: torch.Tensor, **options
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, per-row group std) of the estimator registered as ``name``."""
    return get_advantage_estimator(name)(rewards, group_ids, **options)


def group_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, scale: ScaleRewards = "group",
                     eps: float = 1e-4, batch_std: float | None = None, std: StdKind = "unbiased",
                     floor_std: bool = False, clip: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, per-row group std). ``r - mean_group``, divided by the group std, the batch std
    or nothing. Stds are unbiased (as TRL) unless ``std="population"``. Groups may have different
    sizes and any order. ``batch_std`` overrides the std of ``rewards`` for ``scale="batch"`` (the
    global std under data parallelism, where each rank holds only its share of the batch).
    ``floor_std``: divide by ``max(std, eps)`` instead of ``std + eps``; ``clip``: clip to ``+-clip``."""
    population = std == "population"
    if std not in ("unbiased", "population"):
        raise ValueError(f"unknown std {std!r}; expected unbiased or population")
    dtype = torch.float64 if population else torch.float32
    rewards = rewards.to(dtype)
    uniq, inv = torch.unique(group_ids, return_inverse=True)
    g = len(uniq)
    counts = torch.zeros(g, dtype=dtype).index_add_(0, inv, torch.ones_like(rewards))
    sums = torch.zeros(g, dtype=dtype).index_add_(0, inv, rewards)
    means = sums / counts
    sq = torch.zeros(g, dtype=dtype).index_add_(0, inv, (rewards - means[inv]) ** 2)
    stds = torch.sqrt(sq / (counts if population else (counts - 1).clamp(min=1)))
    adv = rewards - means[inv]
    if scale == "group":
        adv = adv / (stds[inv].clamp(min=eps) if floor_std else stds[inv] + eps)
    elif scale == "batch":
        s = batch_std if batch_std is not None else (float(rewards.std()) if len(rewards) > 1 else 0.0)
        adv = adv / (max(s, eps) if floor_std else s + eps)
    elif scale != "none":
        raise ValueError(f"unknown scale_rewards {scale!r}; expected group, batch or none")
    if clip is not None:
        adv = adv.clamp(-clip, clip)
    return adv.float(), stds[inv].float()


@register_advantage("grpo")
def grpo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, scale: ScaleRewards = "group",
                    batch_std: float | None = None, **_) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO: unbiased group std, ``std + 1e-4`` in the denominator."""
    return group_advantages(rewards, group_ids, scale, eps=1e-4, batch_std=batch_std)


@register_advantage("grpo_population")
def population_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, scale: ScaleRewards = "group",
                          batch_std: float | None = None, clip: float | None = None, **_
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Population group std floored at 1e-8, optionally clipped (the fork-contrast recipe)."""
    return group_advantages(rewards, group_ids, scale, eps=1e-8, batch_std=batch_std, std="population",
                            floor_std=True, clip=clip)


@register_advantage("loo")
def loo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, scale: ScaleRewards = "none",
                   batch_std: float | None = None, **_) -> tuple[torch.Tensor, torch.Tensor]:
    """Leave-one-out baseline (RLOO; RAO, arXiv 2605.06639): ``r_i - mean of the others in i's group``,
    which is ``n / (n - 1) * (r_i - mean_group)``; a group of one has no baseline and gets advantage 0.
    ``scale`` divides by the group / batch std as for ``grpo`` (default: no scaling)."""
    adv, stds = group_advantages(rewards, group_ids, scale, eps=1e-4, batch_std=batch_std)
    _, inv, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    n = counts[inv].to(adv.dtype)
    factor = torch.where(n > 1, n / (n - 1).clamp(min=1), torch.zeros_like(n))
    return adv * factor, stds
