"""Supervised fine-tuning: token-level negative log-likelihood of the response tokens."""

from __future__ import annotations

from forklens.objectives import ObjectiveResult, PolicyOutputs, register
from forklens.rollouts import Rollouts


@register("sft")
def sft_loss(out: PolicyOutputs, batch: Rollouts, config=None) -> ObjectiveResult:
    """Sum of -log p over response tokens; the trainer divides by the global token count."""
    mask = batch.response_mask
    nll = -(out.logprobs * mask).sum()
    n = mask.sum()
    return ObjectiveResult(loss_sum=nll, count=n, metrics={"nll": (float(nll.detach()), float(n))})
