"""Environment-token loss (ECHO, arXiv 2605.24517): next-token cross-entropy on the observation tokens
an environment appended to a rollout (``tags["env_mask"]``), in the same forward pass as the policy
loss, on every rollout (failed ones included).

It is a separate term normalised by its own token count: ``coef * sum_env(-log p) / N_env``, with
``N_env`` the observation tokens of the whole optimizer step (all micro-batches and ranks), while the
policy loss keeps its own normaliser. The trainer does the two divisions
(:class:`forklens.objectives.ObjectiveResult` ``terms``).
"""

from __future__ import annotations

import torch

from forklens.objectives import PolicyOutputs
from forklens.rollouts import Rollouts

ENV_TERM = "env_loss"


def env_targets(batch: Rollouts) -> torch.Tensor:
    """[B, L] mask of the observation tokens that are prediction targets (every one but position 0)."""
    env = batch.tags.get("env_mask")
    if env is None:
        raise ValueError("env_loss_coef > 0 needs observation tokens in the batch (tags['env_mask']); "
                         "only the rollouts of a task with tools (e.g. --task agent) have them")
    env = env.clone()
    env[:, 0] = 0  # nothing predicts position 0 (it is a prompt token anyway)
    return env


def env_token_term(out: PolicyOutputs, batch: Rollouts, coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(``coef * sum of -log p`` over observation tokens, their count). The trainer's forward must have
    scored those positions (``target_tags`` of the objective returns ``["env_mask"]``)."""
    mask = env_targets(batch).to(out.logprobs.dtype)
    return coef * -(out.logprobs * mask).sum(), mask.sum()
