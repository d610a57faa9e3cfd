"""Preference losses for a reward model and the FPO steering penalty (arXiv 2605.04266).

**Bradley-Terry.** For a pair (chosen c, rejected r) with reward-model scores r_c, r_r and a label
p = P(c preferred) (1 for a hard preference, or a soft label such as sigma(U_c - U_r) from a true
utility U), the loss is the logistic cross-entropy

    l = -p log sigma(r_c - r_r) - (1 - p) log sigma(r_r - r_c)

(p = 1 gives TRL RewardTrainer's ``-log sigma(r_c - r_r)``). :func:`bradley_terry_loss` returns its sum
and the pair count; the caller divides once.

**FPO (foresighted policy optimisation).** When the reward model is refit on the policy's own samples,
the policy's gradient has a term standard iterative RLHF drops: the policy's influence on its next
reward model (the parameter-steering term, (d phi*/d theta)^T grad_phi E[r_phi]). FPO restores it to
first order with the reward model's Hessian taken as the identity. With g(y) = grad_phi r_phi(y) over
the reward head's parameters and y_ref the reference response the refit compares y with, the
per-sample penalty subtracted from the score is

* ``practical``: gamma * <g(y), g(y) - g(y_ref)> (the released code's form of gamma ||g(y)||^2);
* ``relaxed``: the same, times the reward model's overconfidence against the true utility,
  sigma(r_y - r_ref) - sigma(U_y - U_ref) (needs an oracle U; negative where the model under-rates y);
* ``l2``: gamma * ||g(y) - g(y_ref)||^2, a control: a generic L2 distance to the reference of the same
  size, symmetric in y and y_ref, so it carries no steering direction.

Under a score-function (GRPO) update the penalty enters as a per-sample reward term: its policy
gradient is E[-penalty(y) grad log pi(y)], the first-order steering term.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from forklens.config import field

FPOForm = Literal["none", "practical", "relaxed", "l2"]
FORMS: tuple[str, ...] = ("none", "practical", "relaxed", "l2")


@dataclass
class FPOConfig:
    form: FPOForm = field("none", help="FPO penalty: none (standard iterative RLHF), practical "
                          "(gamma <g_y, g_y - g_ref>), relaxed (times the overconfidence against the true utility) "
                          "or l2 (gamma ||g_y - g_ref||^2, the generic-penalty control).")
    gamma: float = field(0.1, ge=0, help="Weight gamma of the penalty (the paper's linear simulation uses 0.1).")


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor,
                       label: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """(sum over pairs of the Bradley-Terry loss, number of pairs); ``label`` = P(chosen preferred), default 1."""
    if r_chosen.shape != r_rejected.shape or r_chosen.dim() != 1:
        raise ValueError(f"scores must be two 1-d tensors of one shape, got {tuple(r_chosen.shape)} and "
                         f"{tuple(r_rejected.shape)}")
    margin = r_chosen - r_rejected
    if label is None:
        label = torch.ones_like(margin)
    if label.shape != margin.shape:
        raise ValueError(f"label shape {tuple(label.shape)} differs from the scores' {tuple(margin.shape)}")
    if bool(((label < 0) | (label > 1)).any()):
        raise ValueError("labels must lie in [0, 1]")
    loss = torch.nn.functional.binary_cross_entropy_with_logits(margin, label.to(margin.dtype), reduction="sum")
    return loss, int(margin.numel())


def overconfidence(r_y: torch.Tensor, r_ref: torch.Tensor, u_y: torch.Tensor, u_ref: torch.Tensor) -> torch.Tensor:
    """sigma(r_y - r_ref) - sigma(U_y - U_ref): how much more the reward model prefers y to the reference
    than the true utility does."""
    return torch.sigmoid(r_y - r_ref) - torch.sigmoid(u_y - u_ref)


def fpo_penalty(config: FPOConfig, g_y: torch.Tensor, g_ref: torch.Tensor, r_y: torch.Tensor | None = None,
                r_ref: torch.Tensor | None = None, u_y: torch.Tensor | None = None,
                u_ref: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample penalty [B] of form ``config.form`` from head gradients ``g_y``, ``g_ref`` [B, P]."""
    if g_y.shape != g_ref.shape or g_y.dim() != 2:
        raise ValueError(f"head gradients must be [B, P] of one shape, got {tuple(g_y.shape)} and {tuple(g_ref.shape)}")
    if config.form == "none":
        return torch.zeros(g_y.shape[0], dtype=g_y.dtype)
    if config.form == "l2":
        return config.gamma * ((g_y - g_ref) ** 2).sum(-1)
    inner = (g_y * (g_y - g_ref)).sum(-1)
    if config.form == "practical":
        return config.gamma * inner
    if config.form == "relaxed":
        if any(x is None for x in (r_y, r_ref, u_y, u_ref)):
            raise ValueError("the relaxed FPO penalty needs r_y, r_ref and the true utilities u_y, u_ref")
        return config.gamma * inner * overconfidence(r_y, r_ref, u_y, u_ref)
    raise ValueError(f"unknown FPO form {config.form!r}; expected one of {', '.join(FORMS)}")
