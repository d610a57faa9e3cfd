"""Fork-contrast (ReasonMaxxer-style, RL-free): signed NLL at decision tokens + KL anchor elsewhere.

For an optimizer batch of B base rollouts with advantages A_i, decision tokens D (teacher-forced
base entropy > tau, chosen once by the data source) and the remaining response tokens N::

    L = (1/|D|) sum_{(i,t) in D} A_i * (-log pi(y_it))  +  lambda * (1/|N|) sum_{(i,t) in N} KL(P_base || pi)_it

|D| and |N| are counts over the *whole optimizer batch* (all micro-batches and ranks), so each
decision token weighs the same whatever rollout it sits in (the official code, batch 1 + gradient
accumulation, weighs each rollout equally instead; see docs/forks.md).

**Normalisation and micro-batch invariance.** The two terms have different denominators, so a single
``(loss_sum, count)`` with a token count cannot express L. The data source, which sees the whole
optimizer batch, stores per-token weights in ``tags``::

    w_pg[i, t] = B / |D|   at decision tokens (0 elsewhere)
    w_kl[i, t] = B / |N|   at the other response tokens (0 elsewhere)

and the objective returns ``loss_sum = sum_t w_pg A (-log pi) + lambda * sum_t w_kl KL`` with
``count = number of rows``. The trainer sums both over micro-batches and ranks and divides once:
``(B * L) / B = L`` exactly, for any micro-batching, accumulation or world size, because every
per-token weight is a global constant of the step.

**KL storage.** The data source stores the base's top-K token ids and log-probs at every response
position (``tags["kl_ids"]``, ``tags["kl_logp"]``, [B, L, K]). The KL is computed over those K tokens
plus one "rest of the vocabulary" bucket::

    KL_t = sum_k p_b(k) (log p_b(k) - log pi(k)) + p_b(rest) (log p_b(rest) - log pi(rest))

This is the exact KL between the two distributions coarsened to K+1 outcomes: a lower bound of the
full KL (data processing), exact when K covers the vocabulary (the organism: K = 18 = vocabulary).
Non-decision tokens have base entropy below tau, so their mass sits on a few tokens and K = 20 loses
almost nothing on real models, while costing 2 x K numbers per token instead of the vocabulary
(150k on Qwen). The policy's log-probs at those ids come from :func:`fork_forward`, the trainer's
forward plus one gather.

The objective needs :func:`fork_forward` rather than the trainer's default forward (which returns
only the log-prob of each target token). ``fork_contrast_loss.forward`` names it; until
``forklens.train.loop.accumulate_step`` calls ``getattr(objective, "forward", forward)``, run the
trainer inside :func:`trainer_forward_hook`.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from forklens.config import field
from forklens.objectives import ObjectiveResult, PolicyOutputs, register
from forklens.policy.score import head_logits, hidden_states
from forklens.rollouts import Rollouts

KL_TAGS = ("kl_ids", "kl_logp")


@dataclass
class ForkContrastLossConfig:
    kl_coef: float = field(0.1, help="lambda: weight of the mean KL(P_base || pi) over non-decision tokens "
                           "(METHODS: 0.1 default, 0.2 in some runs).")


@dataclass
class ForkOutputs(PolicyOutputs):
    """:class:`PolicyOutputs` plus the policy's log-probs at the stored base top-K ids, [B, L, K]."""

    kl_logprobs: torch.Tensor | None = None


def _causal_lm(module):
    """The causal LM inside what the trainer differentiates (a bare LM or a ``TokenLogProbs`` wrapper)."""
    if hasattr(module, "module") and not hasattr(module, "model"):  # DDP / FSDP wrapper
        raise NotImplementedError(
            "fork_contrast under data parallelism needs the trainer's DDP-wrapped forward to return the "
            "gathered log-probs (docs/forks.md, 'Trainer hook'); run it in one process for now")
    inner = module
    while type(inner).__name__ == "TokenLogProbs":
        inner = inner.model
    return inner


def fork_forward(model, batch: Rollouts) -> ForkOutputs:
    """The trainer's forward (same log-probs and entropy as ``token_logprobs_and_entropy``) plus
    ``log pi`` at ``batch.tags["kl_ids"]`` for every response token. ``model`` is a causal LM or the
    trainer's ``TokenLogProbs`` wrapper around one."""
    model = _causal_lm(model)
    ids, attn, tmask = batch.input_ids, batch.attention_mask, batch.response_mask
    hidden = hidden_states(model, ids, attn)
    tm = tmask.bool().clone()
    tm[:, 0] = False  # position 0 has nothing that predicts it
    pred = torch.zeros_like(tm)
    pred[:, :-1] = tm[:, 1:]
    logits = head_logits(model, hidden[pred])
    logp_all = F.log_softmax(logits, dim=-1)
    targets = ids[tm]
    lp = logp_all.gather(-1, targets[:, None]).squeeze(-1)
    out_lp = torch.zeros(tm.shape, dtype=lp.dtype, device=lp.device).masked_scatter(tm, lp)
    with torch.no_grad():
        ent = -(logp_all.exp() * logp_all).sum(-1)
    out_ent = torch.zeros(tm.shape, dtype=ent.dtype, device=ent.device).masked_scatter(tm, ent)
    kl_lp = None
    if "kl_ids" in batch.tags:
        kid = batch.tags["kl_ids"].long()
        g = logp_all.gather(-1, kid[tm])  # [N, K]
        k = kid.shape[-1]
        kl_lp = torch.zeros((*tm.shape, k), dtype=g.dtype, device=g.device).masked_scatter(
            tm[..., None].expand(-1, -1, k), g)
    return ForkOutputs(logprobs=out_lp, entropy=out_ent, kl_logprobs=kl_lp)


def topk_kl(base_logp: torch.Tensor, pi_logp: torch.Tensor) -> torch.Tensor:
    """KL(P_base || pi) over K given tokens plus a rest-of-vocabulary bucket; [..., K] -> [...]."""
    pb = base_logp.exp()
    head = (pb * (base_logp - pi_logp)).sum(-1)
    rest_b = (1.0 - pb.sum(-1)).clamp(min=0.0)
    # log(1 - sum_k pi_k), stable: log(-expm1(logsumexp)); clamped away from 0 so it stays finite
    lse = torch.logsumexp(pi_logp, dim=-1).clamp(max=-1e-7)
    log_rest_pi = torch.log(-torch.expm1(lse))
    rest = rest_b * (torch.log(rest_b.clamp(min=1e-30)) - log_rest_pi)
    return head + rest


@register("fork_contrast")
def fork_contrast_loss(out: PolicyOutputs, batch: Rollouts, config: ForkContrastLossConfig | None = None
                       ) -> ObjectiveResult:
    """``loss_sum = sum w_pg A (-log pi) + kl_coef * sum w_kl KL``, ``count = rows`` (see module doc)."""
    cfg = config or ForkContrastLossConfig()
    for name in ("w_pg", "w_kl"):
        if name not in batch.tags:
            raise ValueError(f"fork_contrast needs per-token weights tags[{name!r}] from ForkContrastSource")
    w_pg, w_kl = batch.tags["w_pg"], batch.tags["w_kl"]
    adv = batch.advantages
    if adv is None:
        raise ValueError("fork_contrast needs per-rollout advantages")
    if adv.dim() == 1:
        adv = adv[:, None]
    pg_tok = adv * (-out.logprobs)
    pg = (w_pg * pg_tok).sum()
    metrics: dict[str, tuple[float, float]] = {}
    loss_sum = pg
    kl_mask = w_kl > 0
    if cfg.kl_coef != 0 and bool(kl_mask.any()):
        kl_lp = getattr(out, "kl_logprobs", None)
        if kl_lp is None:
            raise ValueError("fork_contrast's KL term needs the policy's log-probs at the base top-K ids: "
                             "compute the outputs with forklens.objectives.fork_contrast.fork_forward "
                             "(run the trainer inside trainer_forward_hook())")
        kl = topk_kl(batch.tags["kl_logp"].to(kl_lp.dtype), kl_lp)
        kl = torch.where(kl_mask, kl, torch.zeros_like(kl))
        loss_sum = loss_sum + cfg.kl_coef * (w_kl * kl).sum()
        metrics["kl"] = (float(kl.detach().sum()), float(kl_mask.sum()))
    n_rows = float(batch.input_ids.shape[0])
    with torch.no_grad():
        dmask = w_pg > 0
        metrics["pg"] = (float(pg.detach()), n_rows)
        metrics["decision_nll"] = (float((-out.logprobs.detach() * dmask).sum()), float(dmask.sum()))
        if out.entropy is not None:
            metrics["decision_entropy"] = (float((out.entropy * dmask).sum()), float(dmask.sum()))
    return ObjectiveResult(loss_sum=loss_sum, count=n_rows, metrics=metrics)


fork_contrast_loss.forward = fork_forward  # the forward this objective needs (see module doc)


@contextmanager
def trainer_forward_hook():
    """Make ``forklens.train.loop`` use :func:`fork_forward` for batches that carry ``kl_ids`` tags.

    ``accumulate_step`` looks ``forward`` up in its module at call time; this swaps in a dispatcher
    for the duration of the block (other batches still take the default forward) and restores it.
    Harmless once the trainer honours ``objective.forward`` itself.
    """
    from forklens.train import loop

    original = loop.forward

    def dispatch(model, batch):
        if "kl_ids" in batch.tags:
            return fork_forward(model, batch)
        return original(model, batch)

    loop.forward = dispatch
    try:
        yield
    finally:
        loop.forward = original
