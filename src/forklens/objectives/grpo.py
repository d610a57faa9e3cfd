"""The GRPO family: group-relative advantages and the clipped policy-gradient loss.

Loss per response token t of sequence i (A_i its advantage, r = exp(logp - logp_old))::

    l_it = max(-A_i r, -A_i clip(r, 1 - epsilon, 1 + epsilon_high))  [+ beta * KL_k3(ref || pi)_it]

Aggregation (``loss_agg_mode``), always global over the optimizer batch of B sequences:

* ``token-mean`` (DAPO, default): sum_it l_it / sum_i |y_i|
* ``seq-mean-token-mean`` (original GRPO): sum_i (sum_t l_it / |y_i|) / B
* ``seq-mean-token-sum-norm`` (Dr. GRPO): sum_i sum_t l_it / (B * max_new_tokens)

With ``mask_truncated_completions`` a completion that hit ``max_new_tokens`` without EOS contributes
no tokens (it still counts as a sequence in the seq-mean modes, as in TRL).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from forklens.config import field
from forklens.objectives import ObjectiveResult, PolicyOutputs, register
from forklens.rollouts import Rollouts

LossAggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
ScaleRewards = Literal["group", "batch", "none"]


@dataclass
class GRPOLossConfig:
    epsilon: float = field(0.2, help="Lower clip range of the importance ratio (1 - epsilon).")
    epsilon_high: float = field(0.28, help="Upper clip range of the ratio (1 + epsilon_high); DAPO's clip-higher.")
    beta: float = field(0.0, help="Weight of the k3 KL penalty to the frozen reference model; 0 = no reference.")
    loss_agg_mode: LossAggMode = field("token-mean", help="token-mean (DAPO), seq-mean-token-mean (GRPO) or "
                                       "seq-mean-token-sum-norm (Dr. GRPO).")
    mask_truncated_completions: bool = field(True, help="Drop the tokens of completions that hit max_new_tokens.")
    max_new_tokens: int = field(64, help="Constant normaliser for seq-mean-token-sum-norm (set from sampling).")


def group_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, scale: ScaleRewards = "group",
                     eps: float = 1e-4, batch_std: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, per-row group std). ``r - mean_group``, divided by the group std, the batch std
    or nothing. Stds are unbiased (as TRL). Groups may have different sizes and any order.
    ``batch_std`` overrides the std of ``rewards`` for ``scale="batch"`` (the global std under data
    parallelism, where each rank holds only its share of the batch)."""
    rewards = rewards.float()
    uniq, inv = torch.unique(group_ids, return_inverse=True)
    g = len(uniq)
    counts = torch.zeros(g).index_add_(0, inv, torch.ones_like(rewards))
    sums = torch.zeros(g).index_add_(0, inv, rewards)
    means = sums / counts
    sq = torch.zeros(g).index_add_(0, inv, (rewards - means[inv]) ** 2)
    stds = torch.sqrt(sq / (counts - 1).clamp(min=1))
    adv = rewards - means[inv]
    if scale == "group":
        adv = adv / (stds[inv] + eps)
    elif scale == "batch":
        std = batch_std if batch_std is not None else (float(rewards.std()) if len(rewards) > 1 else 0.0)
        adv = adv / (std + eps)
    elif scale != "none":
        raise ValueError(f"unknown scale_rewards {scale!r}; expected group, batch or none")
    return adv, stds[inv]


def token_mask(batch: Rollouts, mask_truncated: bool) -> torch.Tensor:
    mask = batch.response_mask
    if mask_truncated and batch.truncated is not None:
        mask = mask * (~batch.truncated).to(mask.dtype)[:, None]
    return mask


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str, max_new_tokens: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss_sum, count) for an aggregation mode; the trainer divides the global sums."""
    if mode == "token-mean":
        return (per_token * mask).sum(), mask.sum()
    n_seq = torch.tensor(float(mask.shape[0]))
    if mode == "seq-mean-token-mean":
        per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        return per_seq.sum(), n_seq
    if mode == "seq-mean-token-sum-norm":
        return (per_token * mask).sum() / float(max_new_tokens), n_seq
    raise ValueError(f"unknown loss_agg_mode {mode!r}")


def clipped_pg_per_token(out: PolicyOutputs, batch: Rollouts, config: GRPOLossConfig):
    """(per-token loss [B, L], token mask [B, L], ratio, metrics) of the clipped policy gradient + KL."""
    logp = out.logprobs
    old = batch.old_logprobs if batch.old_logprobs is not None else logp.detach()
    adv = batch.advantages
    if adv.dim() == 1:
        adv = adv[:, None]
    mask = token_mask(batch, config.mask_truncated_completions)
    ratio = torch.exp(logp - old)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1 - config.epsilon, 1 + config.epsilon_high)
    per_token = torch.maximum(unclipped, clipped)
    metrics = {}
    if config.beta > 0:
        if batch.ref_logprobs is None:
            raise ValueError("beta > 0 needs ref_logprobs in the batch")
        d = batch.ref_logprobs - logp
        kl = torch.exp(d) - d - 1
        per_token = per_token + config.beta * kl
        metrics["kl"] = (float((kl.detach() * mask).sum()), float(mask.sum()))
    with torch.no_grad():
        is_clipped = ((ratio < 1 - config.epsilon) & (adv < 0)) | ((ratio > 1 + config.epsilon_high) & (adv > 0))
        metrics["clip_frac"] = (float((is_clipped.float() * mask).sum()), float(mask.sum()))
    return per_token, mask, metrics


def entropy_metric(out: PolicyOutputs, mask: torch.Tensor) -> dict:
    if out.entropy is None:
        return {}
    return {"entropy": (float((out.entropy * mask).sum()), float(mask.sum()))}


@register("grpo")
def grpo_loss(out: PolicyOutputs, batch: Rollouts, config: GRPOLossConfig) -> ObjectiveResult:
    per_token, mask, metrics = clipped_pg_per_token(out, batch, config)
    loss_sum, count = aggregate(per_token, mask, config.loss_agg_mode, config.max_new_tokens)
    metrics.update(entropy_metric(out, mask))
    return ObjectiveResult(loss_sum=loss_sum, count=count, metrics=metrics)
