"""Policy and rubric generator trained in alternation (EvoLM, arXiv 2605.03871, digest E019).

The policy is trained by GRPO (the one trainer, :func:`forklens.train.run.train`) on the rubric reward
r_pi = J(y | R), R one rubric per prompt sampled from the generator G (:func:`forklens.rewards.rubric.rubric_reward`).
A trainer callback (:meth:`RubricCoTraining.callback`) then, every ``every`` policy steps, runs
``generator_steps`` GRPO steps of G (a second Trainer, :func:`forklens.train.run.stepwise_trainer`) on the
temporal-contrast reward r_G = 1[J(y+ | R) > J(y- | R)] (:class:`forklens.rewards.rubric.TemporalContrastReward`):
y+ a sample of the current policy, y- a sample of the policy ``lag`` steps earlier (weights snapshots,
the paper's replay buffer 20-100 steps old), for the same prompt.

Generator modes: ``trained`` (the paper), ``frozen`` (G stays at its initialisation; the control with no
discriminative training) and ``shuffled`` (G trained, but the older/newer order of each pair is a coin:
no discriminative signal). Costs are counted in FLOPs: the generator's training run (its sampling and
updates), the rubric samples drawn for the policy's reward and the (y+, y-) samples of the contrast
(2 x parameters per processed token).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Literal

import torch

from forklens.config import field
from forklens.policy import Policy
from forklens.rewards.rubric import Judge, Rubric, TemporalContrastReward, rubric_reward
from forklens.tasks.base import Problem
from forklens.train.run import RLConfig, grpo_loss, stepwise_trainer
from forklens.train.sources import GRPOSource

GeneratorMode = Literal["trained", "frozen", "shuffled"]


@dataclass
class RubricTrainingConfig:
    generator: GeneratorMode = field("trained", help="trained (temporal contrast), frozen (never trained) or shuffled "
                                     "(trained on pairs whose older/newer order is a coin).")
    lag: int = field(10, ge=1, help="Policy steps between the older policy (y-) and the current one (y+).")
    every: int = field(1, ge=1, help="Policy steps between generator updates.")
    generator_steps: int = field(1, ge=1, help="Generator GRPO steps per update.")
    judge_noise: float = field(0.1, ge=0, le=0.5, help="Probability that the judge misreads a check's outcome.")


class RubricCoTraining:
    """The rubric reward of a policy run and the callback that trains its generator.

    ``generator`` and ``old_policy`` are Policies of their own (``old_policy`` of the policy's
    architecture: it is loaded with the snapshot ``lag`` steps old); ``parse(text) -> Rubric`` reads a
    generator sample; ``gen_rl`` configures the generator's GRPO steps (its ``train.max_steps`` is the
    most generator steps the run may take)."""

    def __init__(self, policy: Policy, generator: Policy, old_policy: Policy, task, problems: list[Problem],
                 parse: Callable[[str], Rubric], config: RubricTrainingConfig, gen_rl: RLConfig, out_dir: str | Path,
                 seed: int = 0):
        self.policy, self.generator, self.old = policy, generator, old_policy
        self.parse = parse
        self.config = config
        self.seed = seed
        self.max_new_tokens = gen_rl.sampling.max_new_tokens
        self.judge = Judge(noise=config.judge_noise, seed=seed)
        self.snapshots: OrderedDict[int, dict] = OrderedDict()
        self.snapshot(0)
        self.draws = 0
        self.sample_flops = 0.0  # rubric samples for the policy's reward + the contrast's (y+, y-) samples
        self.reward = rubric_reward(self.rubrics_for, self.judge, name="rubric")
        self.contrast = TemporalContrastReward(self.sample_pair, Judge(noise=config.judge_noise, seed=seed + 7919),
                                               parse, shuffle=config.generator == "shuffled", seed=seed)
        self.trainer = None
        if config.generator != "frozen":
            source = GRPOSource(task, problems, gen_rl.sampling, reward_fns=[self.contrast], seed=seed + 104729)
            self.trainer = stepwise_trainer(generator, "grpo", grpo_loss(gen_rl), source,
                                            replace(gen_rl.train, seed=seed), Path(out_dir) / "generator",
                                            name=f"rubric generator seed {seed}")
        self.last_gen: dict = {}

    # --- sampling --------------------------------------------------------------------------------
    def _sample(self, model: Policy, problems: list[Problem]) -> list[str]:
        self.draws += 1
        s = model.sample([p.prompt for p in problems], n=1, temperature=1.0, max_new_tokens=self.max_new_tokens,
                         seed=self.seed * 1_000_003 + self.draws)
        self.sample_flops += 2.0 * model.num_params() * s.tokens_processed
        return list(s.texts)

    def rubrics_for(self, problems: list[Problem]) -> list[Rubric]:
        """One rubric per problem, sampled from the generator (temperature 1)."""
        return [self.parse(t) for t in self._sample(self.generator, problems)]

    def sample_pair(self, problems: list[Problem]) -> list[tuple[str, str]]:
        """(y+ of the current policy, y- of the policy ``lag`` steps earlier) per problem."""
        return list(zip(self._sample(self.policy, problems), self._sample(self.old, problems)))

    # --- the older policy ------------------------------------------------------------------------
    def snapshot(self, step: int) -> None:
        self.snapshots[step] = {k: v.detach().clone() for k, v in self.policy.model.state_dict().items()}
        while len(self.snapshots) > self.config.lag + 1:
            self.snapshots.popitem(last=False)

    def load_old(self, step: int) -> int:
        """Load the snapshot ``lag`` steps before ``step`` (the oldest kept, early on) into the old policy."""
        older = [s for s in self.snapshots if s <= step - self.config.lag]
        at = max(older) if older else min(self.snapshots)
        with torch.no_grad():
            self.old.model.load_state_dict(self.snapshots[at])
        return at

    # --- the callback ----------------------------------------------------------------------------
    @property
    def generator_flops(self) -> float:
        return self.trainer.flops if self.trainer is not None else 0.0

    def after_step(self, trainer, metrics: dict) -> bool:
        step = trainer.step
        self.snapshot(step)
        rubrics = list(self.reward.last_rubrics.values())
        if rubrics:
            metrics["rubric/checks"] = sum(len(r.checks) for r in rubrics) / len(rubrics)
        if self.trainer is not None and step % self.config.every == 0 \
                and self.trainer.step < self.trainer.config.max_steps:
            metrics["rubric/old_step"] = float(self.load_old(step))
            before = dict(self.contrast.stats)
            self.last_gen = self.trainer.train(stop_after=self.config.generator_steps)
            pairs = self.contrast.stats["pairs"] - before["pairs"]
            if pairs:
                metrics["rubric/pairs_differ"] = (self.contrast.stats["differ"] - before["differ"]) / pairs
            metrics["rubric/generator_reward"] = float(self.last_gen.get("reward_mean", float("nan")))
        metrics["rubric/generator_flops"] = self.generator_flops
        metrics["rubric/sample_flops"] = self.sample_flops
        return False

    def callback(self) -> Callable:
        return self.after_step
