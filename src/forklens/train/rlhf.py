"""Iterative RLHF with a reward model that is refit between policy steps (arXiv 2605.04266, E025).

One GRPO run (the one trainer, the one group-rollout source, the ``grpo`` objective) whose reward is
the current reward model's score minus an optional FPO penalty (:mod:`forklens.objectives.fpo`); after
every ``policy_steps`` policy steps a callback refits the reward model, so each *iteration* is

1. policy step(s): GRPO on s(y) = r_phi(x, y) - penalty(y, y_ref), y sampled from the policy;
2. reward-model refit: ``rm_steps`` SGD steps of the Bradley-Terry loss on pairs labelled by the true
   utility U with the soft label sigma(U_a - U_b), either
   * ``refit=policy``: (the last policy batch's samples y, each with its problem's reference y_ref), the
     paper's refit on the policy's own samples, through which the policy steers its next reward model;
   * ``refit=reference``: as many pairs (y_ref, y_ref') drawn from the fixed reference responses, the
     control with no steering channel (the refit data do not depend on the policy).

The callback writes ``rlhf/*`` metrics into each step's line of ``metrics.jsonl``: the batch's mean
true utility, reward-model score, penalty, the refit loss and whatever ``probe(rm, texts)`` returns
(e.g. the organism's hack-token mass and the reward model's weight on it). A run cannot be resumed
(the reward model is not checkpointed); start it afresh.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch

from forklens.config import field
from forklens.objectives.fpo import FPOConfig, fpo_penalty
from forklens.rewards import texts_of
from forklens.rewards.reward_model import RewardModel, head_gradients
from forklens.train.reward_model import PreferencePair, refit_step

Refit = Literal["policy", "reference"]


@dataclass
class RLHFConfig:
    policy_steps: int = field(1, ge=1, help="GRPO steps per iteration (between reward-model refits).")
    refit: Refit = field("policy", help="Refit the reward model on the policy's own samples (policy) or on fixed "
                         "reference pairs (reference: no steering channel, the control).")
    rm_learning_rate: float = field(0.1, gt=0, help="SGD learning rate of the reward-model refit.")
    rm_steps: int = field(1, ge=1, help="SGD steps of each refit.")
    fpo: FPOConfig = field(default_factory=FPOConfig, help="The FPO penalty subtracted from the reward model's score.")


def soft_label(u_a: float, u_b: float) -> float:
    """P(a preferred to b) under the true utility: sigma(U_a - U_b)."""
    return float(torch.sigmoid(torch.tensor(u_a - u_b)))


class IterativeRLHF:
    """The reward function (TRL signature, columns ``problem``) and the trainer callback of one run.

    ``utility(text) -> U``; each problem's ``meta["reference"]`` is its reference response;
    ``reference_pool`` the fixed (prompt, response) set of ``refit=reference``. Only the reward head is
    refit; the backbone is frozen here, so a causal-LM reward model needs a model of its own (not the
    policy being trained)."""

    def __init__(self, rm: RewardModel, config: RLHFConfig, utility: Callable[[str], float],
                 reference_pool: Sequence[tuple[str, str]], seed: int = 0,
                 probe: Callable[[RewardModel, list[str]], dict[str, float]] | None = None):
        if config.refit == "reference" and len(reference_pool) < 2:
            raise ValueError("refit=reference needs at least two reference responses")
        self.rm = rm
        self.config = config
        self.utility = utility
        self.pool = list(reference_pool)
        self.rng = random.Random(f"rlhf-{seed}")
        self.probe = probe
        self.optimizer = torch.optim.SGD(rm.head_parameters(), lr=config.rm_learning_rate)
        for p in rm.backbone.parameters():
            p.requires_grad_(False)
        self.last: dict = {}
        self.iterations = 0
        self.__name__ = "rlhf"

    # --- the reward ----------------------------------------------------------------------------
    def __call__(self, prompts, completions, problem, **_) -> list[float]:
        texts = texts_of(completions)
        refs = [p.meta["reference"] for p in problem]
        prompts = [p.prompt for p in problem]
        batch_y, batch_ref = self.rm.encode(prompts, texts), self.rm.encode(prompts, refs)
        with torch.no_grad():
            r_y, r_ref = self.rm(batch_y), self.rm(batch_ref)
        u_y = torch.tensor([self.utility(t) for t in texts])
        u_ref = torch.tensor([self.utility(t) for t in refs])
        if self.config.fpo.form == "none":
            penalty = torch.zeros(len(texts))
        else:
            penalty = fpo_penalty(self.config.fpo, head_gradients(self.rm, batch_y), head_gradients(self.rm, batch_ref),
                                  r_y.cpu(), r_ref.cpu(), u_y, u_ref)
        self.last = {"prompts": prompts, "texts": texts, "refs": refs, "u": u_y.tolist(), "u_ref": u_ref.tolist(),
                     "r": r_y.cpu().tolist(), "penalty": penalty.tolist()}
        return (r_y.cpu() - penalty).tolist()

    # --- the refit -----------------------------------------------------------------------------
    def refit_pairs(self) -> list[PreferencePair]:
        last = self.last
        if self.config.refit == "policy":
            return [PreferencePair(p, y, ref, soft_label(u, u_ref))
                    for p, y, ref, u, u_ref in zip(last["prompts"], last["texts"], last["refs"], last["u"], last["u_ref"])]
        pairs = []
        for _ in range(len(last["texts"])):
            (p, a), (_, b) = self.rng.sample(self.pool, 2)
            pairs.append(PreferencePair(p, a, b, soft_label(self.utility(a), self.utility(b))))
        return pairs

    def after_step(self, trainer, metrics: dict) -> bool:
        if not self.last:
            return False
        n = len(self.last["texts"])
        metrics["rlhf/utility"] = sum(self.last["u"]) / n
        metrics["rlhf/rm_reward"] = sum(self.last["r"]) / n
        metrics["rlhf/penalty"] = sum(self.last["penalty"]) / n
        if self.probe is not None:
            metrics.update({f"rlhf/{k}": v for k, v in self.probe(self.rm, self.last["texts"]).items()})
        if trainer.step % self.config.policy_steps == 0:
            pairs = self.refit_pairs()
            for _ in range(self.config.rm_steps):
                fit = refit_step(self.rm, self.optimizer, pairs)
            self.rm.eval()
            self.iterations += 1
            metrics["rlhf/iteration"] = float(self.iterations)
            metrics["rlhf/rm_loss"] = fit["rm_loss"]
            metrics["rlhf/rm_pair_accuracy"] = fit["rm_pair_accuracy"]
        return False

    def callback(self) -> Callable:
        """The trainer callback (refits after every ``policy_steps`` steps; never stops the run)."""
        return self.after_step
