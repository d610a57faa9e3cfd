"""One optimizer step's work, shared by the trainer and the invariance tests: the differentiable forward,
the micro-batch accumulation with global normalisation (:func:`accumulate_step`), mixed-precision
autocast, and the split of a rollout batch into PPO mini-batches.

Per optimizer step the batch is split into micro-batches; for each, the objective returns
``(loss_sum, count)`` and ``loss_sum`` is back-propagated *unnormalised*; counts are summed over
micro-batches and all-reduced over ranks to the global ``N`` and gradients multiplied by
``world_size / N`` (DDP has averaged them over ranks), giving exactly d(global sum / N)/d(theta)
whatever the micro-batching or world size. ``simulate_bug`` reproduces two published silent bugs, for
experiments only (see docs/audit.md).
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch

from forklens.dist import global_sums as _global_sums
from forklens.dist import group as _dist
from forklens.errors import ConfigError
from forklens.objectives import Objective, ObjectiveResult, PolicyOutputs
from forklens.policy.score import TokenLogProbs
from forklens.rollouts import Rollouts


def forward(module, batch: Rollouts, target_tags: tuple[str, ...] | list[str] = ()) -> PolicyOutputs:
    """Differentiable per-token log-probs of ``batch`` under ``module`` (a :class:`TokenLogProbs`, possibly
    wrapped by DDP, or a bare causal LM) at the response tokens and at the positions marked by the tags
    named in ``target_tags`` (``env_mask`` for the environment-token loss). A ``gather_ids`` tag
    [B, L, K] in the batch also returns the log-probs of those ids at every scored position
    (``PolicyOutputs.gathered_logprobs``)."""
    if not isinstance(getattr(module, "module", module), TokenLogProbs):
        module = TokenLogProbs(module)
    targets = batch.response_mask
    for name in target_tags:
        if name not in batch.tags:
            raise ValueError(f"the objective needs tags[{name!r}] in the batch")
        targets = torch.maximum(targets, batch.tags[name].to(targets.dtype))
    lp, ent, gathered = module(batch.input_ids, batch.attention_mask, targets,
                               gather_ids=batch.tags.get("gather_ids"))
    return PolicyOutputs(logprobs=lp, entropy=ent, gathered_logprobs=gathered)


def resolve_precision(setting: str) -> str:
    """``no``, ``bf16`` or ``fp16``: the setting, or for ``auto`` accelerate's ``ACCELERATE_MIXED_PRECISION``."""
    if setting != "auto":
        return setting
    env = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").strip().lower() or "no"
    if env not in ("no", "bf16", "fp16"):
        raise ConfigError(f"ACCELERATE_MIXED_PRECISION={env!r}: forklens supports no, bf16 and fp16 "
                          "(set train.mixed_precision to override)")
    return env


def autocast_context(precision: str, device) -> Callable[[], Any]:
    """A factory of the forward passes' autocast context (a null context for ``no``)."""
    if precision == "no":
        return null_context
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    dev = torch.device(device).type
    return lambda: torch.autocast(device_type=dev, dtype=dtype)


def accumulate_step(model, objective: Objective, objective_config: Any, micro_batches: list[Rollouts],
                    simulate_bug: str = "none", no_sync: Callable | None = None,
                    autocast: Callable[[], Any] | None = None, scaler=None) -> dict[str, float]:
    """Forward/backward over the micro-batches of one optimizer step; leaves normalised gradients in
    ``.grad`` and returns the step's loss and objective metrics (global over ranks).

    The objective's optional hooks (see :mod:`forklens.objectives`): ``prepare`` runs first over every
    micro-batch (step-global tags); ``target_tags`` names extra scored positions; ``term_counts``
    switches to separately normalised terms, whose global counts are summed before any backward.
    ``metrics["prepass_tokens"]`` counts the tokens a pre-pass ran through the model (for FLOPs).
    ``autocast`` (a context factory) wraps every forward pass; ``scaler`` (fp16) scales the backward."""
    autocast = autocast or null_context
    dist = _dist()
    world = dist.get_world_size() if dist else 1
    params = [p for p in model.parameters() if p.requires_grad]
    prepared: dict[str, float] = {}
    if objective.prepare is not None:
        with autocast():
            prepared = objective.prepare(model, micro_batches, objective_config) or {}
    target_tags = objective.target_tags(objective_config) if objective.target_tags is not None else []
    term_counts = None
    if objective.term_counts is not None:
        per_mb = [objective.term_counts(mb, objective_config) for mb in micro_batches]
        if per_mb and per_mb[0] is not None:
            if simulate_bug != "none":
                raise ValueError("simulate_bug is not supported with separately normalised loss terms")
            local = {name: sum(c[name] for c in per_mb) for name in per_mb[0]}
            term_counts = _global_sums(local)
    k = len(micro_batches)
    loss_sum, count = 0.0, 0.0
    term_sums: dict[str, float] = {}
    metric_sums: dict[str, list[float]] = {}
    kept: list[torch.Tensor] | None = None
    for j, mb in enumerate(micro_batches):
        last = j == k - 1
        ctx = no_sync() if (no_sync is not None and not last) else null_context()
        with ctx:
            with autocast():
                out = forward(model, mb, target_tags)
            res: ObjectiveResult = objective(out, mb, objective_config)
            n_mb = float(res.count)
            if term_counts is not None:
                expected = per_mb[j]
                if abs(n_mb - expected["loss"]) > 1e-6 or set(res.terms) != set(expected) - {"loss"}:
                    raise RuntimeError(f"objective counts {n_mb} and terms {sorted(res.terms)} disagree with "
                                       f"its term_counts {expected}")
                loss = res.loss_sum * (world / max(term_counts["loss"], 1e-12))
                for name, (t_sum, t_n) in res.terms.items():
                    loss = loss + t_sum * (world / max(term_counts[name], 1e-12))
                    term_sums[name] = term_sums.get(name, 0.0) + float(t_sum.detach())
            elif res.terms:
                raise ValueError("an objective that returns extra loss terms must define term_counts")
            elif simulate_bug == "mean-of-means":
                loss = res.loss_sum / max(n_mb, 1e-12) / k
            else:
                loss = res.loss_sum
            (scaler.scale(loss) if scaler is not None else loss).backward()
        if simulate_bug == "offload-accum" and k > 2:
            # the accumulation buffer keeps micro-step 0 and the final micro-step only
            if j == 0:
                kept = [p.grad.detach().clone() if p.grad is not None else None for p in params]
            elif not last:
                for p, g in zip(params, kept):
                    p.grad = None if g is None else g.clone()
        loss_sum += float(res.loss_sum.detach())
        count += n_mb
        for name, (s, c) in res.metrics.items():
            acc = metric_sums.setdefault(name, [0.0, 0.0])
            acc[0] += s
            acc[1] += c
    names = sorted(metric_sums)
    term_names = sorted(term_sums)
    totals = torch.tensor([loss_sum, count] + [v for n in names for v in metric_sums[n]]
                          + [term_sums[n] for n in term_names], dtype=torch.float64)
    if dist:
        dist.all_reduce(totals)
    g_loss, g_count = float(totals[0]), float(totals[1])
    if simulate_bug != "mean-of-means" and term_counts is None:
        scale = world / max(g_count, 1e-12)  # DDP averaged over ranks; undo that, divide by global N
        for p in params:
            if p.grad is not None:
                p.grad.mul_(scale)
    metrics = {"loss": g_loss / max(g_count, 1e-12), "loss_count": g_count}
    for i, n in enumerate(names):
        s, c = float(totals[2 + 2 * i]), float(totals[3 + 2 * i])
        metrics[n] = s / c if c else float("nan")
    for i, n in enumerate(term_names):
        metrics[n] = float(totals[2 + 2 * len(names) + i]) / max(term_counts[n], 1e-12)
        metrics[f"{n}_count"] = term_counts[n]
    if prepared:
        metrics["prepass_tokens"] = float(_global_sums({"t": prepared.get("prepass_tokens", 0.0)})["t"])
        metrics.update({k2: v for k2, v in prepared.items() if k2 != "prepass_tokens"})
    return metrics


def mini_batch_parts(batch: Rollouts, parts: int) -> list[Rollouts]:
    """``batch`` split into ``parts`` contiguous parts of nearly equal size (every rank makes the same
    number of optimizer steps, so the collectives line up)."""
    if parts == 1:
        return [batch]
    n = len(batch)
    if n < parts:
        raise ValueError(f"train.mini_batches={parts} is more than the {n} sequences of this rank's batch")
    return [batch.select(range(i * n // parts, (i + 1) * n // parts)) for i in range(parts)]


def mean_metrics(per_update: list[tuple[dict[str, float], float]]) -> tuple[dict[str, float], float]:
    """The metrics of one batch's updates: the single update's as they are, else the mean of each key
    over the updates (the gradient norm too)."""
    if len(per_update) == 1:
        return per_update[0]
    keys = dict.fromkeys(k for m, _ in per_update for k in m)
    metrics = {k: sum(m.get(k, 0.0) for m, _ in per_update) / (1 if k == "prepass_tokens" else len(per_update))
               for k in keys}  # pre-pass tokens are work done, summed for FLOPs
    return metrics, sum(g for _, g in per_update) / len(per_update)


class null_context:
    """A context manager that does nothing (where autocast or no_sync do not apply)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
