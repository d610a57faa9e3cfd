"""The GRPO family: group-relative advantages and the clipped policy-gradient loss.

Loss per response token t of sequence i (A_i its advantage, r = exp(logp - logp_old))::

    l_it = max(-A_i r, -A_i clip(r, 1 - epsilon, 1 + epsilon_high))  [+ beta * KL_k3(ref || pi)_it]

Aggregation (``loss_agg_mode``), always global over the optimizer batch of B sequences:

* ``token-mean`` (DAPO, default): sum_it l_it / sum_i |y_i|
* ``seq-mean-token-mean`` (original GRPO): sum_i (sum_t l_it / |y_i|) / B
* ``seq-mean-token-sum-norm`` (Dr. GRPO): sum_i sum_t l_it / (B * max_new_tokens)

With ``mask_truncated_completions`` a completion that hit ``max_new_tokens`` without EOS contributes
no tokens (it still counts as a sequence in the seq-mean modes, as in TRL).

Two training-loop levers live here (docs/levers.md):

* ``top_entropy_quantile`` (TRL's name and meaning; arXiv 2506.01939): the policy-gradient part of
  ``l_it`` is kept only on tokens whose entropy is at or above the ``1 - q`` quantile of the entropies
  of all trained tokens, so ``q = 0.2`` keeps the top 20% and ``q = 1`` (default) keeps every token.
  The KL term and the normaliser are unchanged (as in TRL). Unlike TRL, which takes the quantile over
  each micro-batch's tokens, the quantile here is over the whole optimizer step (all micro-batches and
  ranks; :func:`prepare_entropy_mask`), so the update does not depend on micro-batching.
* ``env_loss_coef`` (ECHO): adds ``coef * CE`` on observation tokens as a separately normalised term
  (:mod:`forklens.objectives.env_tokens`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from forklens.config import field
from forklens.dist import all_gather_variable
from forklens.objectives import ObjectiveResult, PolicyOutputs, register
from forklens.objectives.env_tokens import ENV_TERM, env_targets, env_token_term
from forklens.policy.score import TokenLogProbs
from forklens.rollouts import Rollouts

LossAggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


@dataclass
class GRPOLossConfig:
    epsilon: float = field(0.2, ge=0, lt=1, help="Lower clip range of the importance ratio (1 - epsilon).")
    epsilon_high: float = field(0.28, ge=0, help="Upper clip range of the ratio (1 + epsilon_high); DAPO's clip-higher.")
    beta: float = field(0.0, ge=0, help="Weight of the k3 KL penalty to the frozen reference model; 0 = no reference.")
    loss_agg_mode: LossAggMode = field("token-mean", help="token-mean (DAPO), seq-mean-token-mean (GRPO) or "
                                       "seq-mean-token-sum-norm (Dr. GRPO).")
    mask_truncated_completions: bool = field(True, help="Drop the tokens of completions that hit max_new_tokens.")
    max_new_tokens: int | None = field(None, ge=1, help="Constant normaliser of seq-mean-token-sum-norm; unset (null) = the "
                                       "run's sampling.max_new_tokens, filled in where the run is wired (train/run.py).")
    top_entropy_quantile: float = field(1.0, gt=0, le=1, help="Policy gradient only on the top q fraction of trained tokens by "
                                        "entropy, threshold over the whole optimizer step (TRL's name; the paper "
                                        "uses 0.2; 1.0 = every token). Costs one extra no-grad forward per step.")
    env_loss_coef: float = field(0.0, ge=0, help="ECHO: weight of the next-token CE on environment observation tokens, "
                                 "normalised by their own count (the paper uses 0.05; 0 = off).")
    tis_cap: float = field(2.0, ge=0, help="Truncated importance sampling for rollouts sampled by another engine "
                           "(vLLM): each token's policy-gradient term is weighted by min(pi_train / pi_sampler, tis_cap), "
                           "detached, where the sampler's log-probs came with the rollouts (tags['sampler_logprobs']); "
                           "0 = off. Rollouts from forklens's own sampler carry none, so it does nothing there.")


SAMPLER_LOGPROBS = "sampler_logprobs"  # [B, L] log-probs of the sampled tokens under the sampling engine (NaN: unknown)


def tis_weights(train_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance weights min(exp(train - sampler), cap), detached; 1 where the sampler's
    log-prob is unknown (NaN, e.g. an EOS the engine did not report)."""
    known = ~torch.isnan(sampler_logprobs)
    diff = torch.where(known, train_logprobs.detach() - torch.nan_to_num(sampler_logprobs), torch.zeros_like(train_logprobs))
    return torch.exp(diff).clamp(max=cap).detach()


def token_mask(batch: Rollouts, mask_truncated: bool) -> torch.Tensor:
    mask = batch.response_mask
    if mask_truncated and batch.truncated is not None:
        mask = mask * (~batch.truncated).to(mask.dtype)[:, None]
    return mask


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str, max_new_tokens: int | None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss_sum, count) for an aggregation mode; the trainer divides the global sums."""
    if mode == "token-mean":
        return (per_token * mask).sum(), mask.sum()
    n_seq = torch.tensor(float(mask.shape[0]))
    if mode == "seq-mean-token-mean":
        per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        return per_seq.sum(), n_seq
    if mode == "seq-mean-token-sum-norm":
        if max_new_tokens is None:
            raise ValueError("seq-mean-token-sum-norm needs max_new_tokens in the loss config (train/run.py sets it "
                             "from sampling.max_new_tokens)")
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
    sampler = batch.tags.get(SAMPLER_LOGPROBS)
    if config.tis_cap > 0 and sampler is not None:
        w = tis_weights(old, sampler, config.tis_cap)
        per_token = per_token * w
        metrics["tis_weight"] = (float((w * mask).sum()), float(mask.sum()))
    if config.top_entropy_quantile < 1.0:
        emask = batch.tags.get(ENTROPY_MASK)
        if emask is None:
            raise ValueError("top_entropy_quantile < 1 needs tags['entropy_mask'] (the trainer's pre-pass writes it; "
                             "call prepare_entropy_mask on the whole step's micro-batches)")
        per_token = per_token * emask
        metrics["entropy_kept_frac"] = (float((emask * mask).sum()), float(mask.sum()))
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


ENTROPY_MASK = "entropy_mask"


def _quantile(values: torch.Tensor, q: float) -> float:
    """``torch.quantile(values, q)`` (linear interpolation) without its input-size limit."""
    v = values.double().sort().values
    pos = q * (len(v) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return float(v[lo] + (v[hi] - v[lo]) * (pos - lo))


def entropy_threshold(entropies: torch.Tensor, top_quantile: float) -> float:
    """The entropy at the ``1 - top_quantile`` quantile of ``entropies`` (every rank's, when distributed)."""
    values = all_gather_variable(entropies.detach().float().cpu())
    if len(values) == 0:
        return float("inf")
    return _quantile(values, 1.0 - top_quantile)


@torch.no_grad()
def prepare_entropy_mask(model, micro_batches: list[Rollouts], config: GRPOLossConfig) -> dict[str, float]:
    """Pre-pass of an optimizer step: entropy of every trained token of every micro-batch (no grad), one
    threshold over all of them (and all ranks), ``tags["entropy_mask"]`` = 1 where entropy >= threshold.
    Returns ``{"prepass_tokens": tokens run through the model}`` for FLOP accounting."""
    if config.top_entropy_quantile >= 1.0:
        return {}
    if not 0.0 < config.top_entropy_quantile < 1.0:
        raise ValueError(f"top_entropy_quantile must be in (0, 1], got {config.top_entropy_quantile}")
    inner = getattr(model, "module", model)
    if not isinstance(inner, TokenLogProbs):
        inner = TokenLogProbs(inner)
    was_training = inner.training
    inner.eval()
    ents, masks, tokens = [], [], 0.0
    try:
        for mb in micro_batches:
            mask = token_mask(mb, config.mask_truncated_completions)
            _, ent, _ = inner(mb.input_ids, mb.attention_mask, mb.response_mask)
            ents.append(ent)
            masks.append(mask)
            tokens += float(mb.attention_mask.sum())
    finally:
        inner.train(was_training)
    flat = torch.cat([e[m.bool()] for e, m in zip(ents, masks)]) if ents else torch.zeros(0)
    thr = entropy_threshold(flat, config.top_entropy_quantile)
    for mb, ent, mask in zip(micro_batches, ents, masks):
        mb.tags[ENTROPY_MASK] = ((ent >= thr) & mask.bool()).to(mb.response_mask.dtype)
    return {"prepass_tokens": tokens, "entropy_threshold": thr}


def grpo_term_counts(batch: Rollouts, config: GRPOLossConfig) -> dict[str, float] | None:
    """Counts of the policy loss and the environment-token term, from the batch alone (None: no term)."""
    if config.env_loss_coef <= 0:
        return None
    mask = token_mask(batch, config.mask_truncated_completions)
    main = float(mask.sum()) if config.loss_agg_mode == "token-mean" else float(mask.shape[0])
    return {"loss": main, ENV_TERM: float(env_targets(batch).sum())}


def grpo_target_tags(config: GRPOLossConfig) -> list[str]:
    """Tags whose positions the trainer's forward must score besides the response tokens."""
    return ["env_mask"] if config.env_loss_coef > 0 else []


def add_env_term(result: ObjectiveResult, out: PolicyOutputs, batch: Rollouts, config: GRPOLossConfig) -> ObjectiveResult:
    if config.env_loss_coef > 0:
        term_sum, n = env_token_term(out, batch, config.env_loss_coef)
        result.terms[ENV_TERM] = (term_sum, n)
        result.metrics["env_ce"] = (float(term_sum.detach()) / config.env_loss_coef, float(n))
    return result


@register("grpo", prepare=prepare_entropy_mask, target_tags=grpo_target_tags, term_counts=grpo_term_counts,
          uses_old_logprobs=True)
def grpo_loss(out: PolicyOutputs, batch: Rollouts, config: GRPOLossConfig) -> ObjectiveResult:
    per_token, mask, metrics = clipped_pg_per_token(out, batch, config)
    loss_sum, count = aggregate(per_token, mask, config.loss_agg_mode, config.max_new_tokens)
    metrics.update(entropy_metric(out, mask))
    return add_env_term(ObjectiveResult(loss_sum=loss_sum, count=count, metrics=metrics), out, batch, config)
