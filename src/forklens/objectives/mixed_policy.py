"""Mixed-policy objectives: off-policy expert rows inside GRPO groups (LUFFY-style) and SFT rows
inside an RL run (ReLIFT-style), in one loss over tagged rows.

Rows are tagged per sequence in ``batch.extras``:

* ``off_policy`` (bool): an expert trace placed in a GRPO group. Its behaviour probability is unknown,
  so (as in LUFFY) the ratio is taken against 1 and *policy shaping* replaces it:
  ``l_t = -A * f(pi(y_t))`` with ``f(p) = p / (p + gamma)``, unclipped. The shaping keeps gradients
  on low-probability expert tokens from vanishing.
* ``sft`` (bool): a row trained by plain negative log-likelihood (ReLIFT's SFT steps on the hardest
  problems' expert traces).
* other rows: the clipped GRPO loss of :mod:`forklens.objectives.grpo`.

All rows are aggregated together with ``loss_agg_mode`` (token-mean by default), so the objective
keeps the trainer's global normalisation and is invariant to micro-batching.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from forklens.config import field
from forklens.objectives import ObjectiveResult, PolicyOutputs, register
from forklens.objectives.grpo import (GRPOLossConfig, add_env_term, aggregate, clipped_pg_per_token, entropy_metric,
                                     grpo_target_tags, grpo_term_counts, prepare_entropy_mask, token_mask)
from forklens.rollouts import Rollouts


@dataclass
class MixedPolicyLossConfig(GRPOLossConfig):
    shaping_gamma: float = field(0.1, gt=0, help="LUFFY policy shaping f(p) = p / (p + gamma) on off-policy tokens.")


def _row_flag(batch: Rollouts, name: str) -> torch.Tensor:
    flag = batch.extras.get(name)
    if flag is None:
        return torch.zeros(len(batch), dtype=torch.bool, device=batch.input_ids.device)
    return flag.bool()


def trained_mask(batch: Rollouts, config: MixedPolicyLossConfig) -> torch.Tensor:
    """Tokens the loss is over: truncation-masked on-policy rows, every response token of expert rows."""
    rows = (_row_flag(batch, "off_policy") | _row_flag(batch, "sft"))[:, None]
    return torch.where(rows, batch.response_mask, token_mask(batch, config.mask_truncated_completions))


def mixed_term_counts(batch: Rollouts, config: MixedPolicyLossConfig) -> dict[str, float] | None:
    counts = grpo_term_counts(batch, config)
    if counts is not None and config.loss_agg_mode == "token-mean":
        counts["loss"] = float(trained_mask(batch, config).sum())
    return counts


@register("mixed_policy", prepare=prepare_entropy_mask, target_tags=grpo_target_tags, term_counts=mixed_term_counts,
          uses_old_logprobs=True)
def mixed_policy_loss(out: PolicyOutputs, batch: Rollouts, config: MixedPolicyLossConfig) -> ObjectiveResult:
    off = _row_flag(batch, "off_policy")[:, None]
    sft = _row_flag(batch, "sft")[:, None]
    if batch.advantages is None:  # a batch of SFT rows only
        batch.advantages = torch.zeros(len(batch), device=batch.input_ids.device)
    per_token, mask, metrics = clipped_pg_per_token(out, batch, config)
    adv = batch.advantages[:, None] if batch.advantages.dim() == 1 else batch.advantages
    p = out.logprobs.exp()
    shaped = -adv * p / (p + config.shaping_gamma)
    per_token = torch.where(off, shaped, per_token)
    per_token = torch.where(sft, -out.logprobs, per_token)
    mask = trained_mask(batch, config)  # expert rows are never truncated
    loss_sum, count = aggregate(per_token, mask, config.loss_agg_mode, config.max_new_tokens)
    n = float(mask.sum())
    metrics["off_policy_token_frac"] = (float((mask * off).sum()), n)
    metrics["sft_token_frac"] = (float((mask * sft).sum()), n)
    metrics.update(entropy_metric(out, mask))
    return add_env_term(ObjectiveResult(loss_sum=loss_sum, count=count, metrics=metrics), out, batch, config)

