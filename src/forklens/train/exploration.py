"""Exploration interleaving (arXiv 2605.16143): exploration-only episodes, rewarded by checkpoint
coverage of the knowledge base, interleaved with task episodes.

Every ``task_steps + 1``-th optimizer step is an exploration step: GRPO on episodes started from
exploration prompts (``?qwe>``: no question, see :func:`forklens.tasks.agent.exploration_problem`),
reward = coverage (the fraction of the enumerated checkpoints, every relation and attribute of the
listed entities, that the episode looked up). The other steps are the ordinary task steps. The paper
reports that task-only GRPO drives coverage to zero; the default ratio is 5 task : 1 exploration
[guess: 5 task updates per exploration update; docs/levers.md]. Task steps log
``coverage_task`` (coverage of the task episodes over the same checkpoints), exploration steps
``coverage_explore``. The schedule depends only on the step, so resume is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from forklens.config import field
from forklens.rollouts import Rollouts
from forklens.tasks.agent import coverage_reward, exploration_problem
from forklens.train.sources import GRPOSource, SamplingConfig


@dataclass
class ExplorationConfig:
    task_steps: int = field(5, ge=0, help="Task steps per exploration step (5 = the 5:1 interleaving; 0 = only exploration).")
    T: int = field(5, help="Tool-call cap of exploration episodes.")
    seed_offset: int = field(7919, help="Added to the seed of the exploration episodes, so they differ from the "
                             "task episodes of the same step.")


def is_exploration_step(step: int, task_steps: int) -> bool:
    return step % (task_steps + 1) == task_steps


class ExplorationInterleavedSource:
    """Task steps from ``task_source``; every ``task_steps + 1``-th step an exploration step on the
    exploration prompts of the same training questions."""

    def __init__(self, task_source: GRPOSource, config: ExplorationConfig | None = None):
        self.config = config or ExplorationConfig()
        if self.config.task_steps < 0:
            raise ValueError(f"task_steps must be >= 0, got {self.config.task_steps}")
        self.task_source = task_source
        sampling: SamplingConfig = replace(task_source.config, T=self.config.T)
        self.explore_source = GRPOSource(
            task_source.task, [exploration_problem(p) for p in task_source.problems], sampling,
            reward_fns=[coverage_reward], seed=task_source.seed + self.config.seed_offset,
            coverage_key="coverage_explore")

    def batch(self, step: int, policy) -> tuple[Rollouts, dict[str, float]]:
        if is_exploration_step(step, self.config.task_steps):
            batch, info = self.explore_source.batch(step, policy)
            return batch, {**info, "explore_step": 1.0}
        batch, info = self.task_source.batch(step, policy)
        return batch, {**info, "explore_step": 0.0}
