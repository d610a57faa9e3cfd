"""RL over delegation trees (RAO, arXiv 2605.06639): the GRPO source with every tree node as a training row.

:class:`DelegationSource` extends :class:`forklens.train.sources.GRPOSource` (same problem choice per
step, same rollout settings, same step info) and changes what a row is: the task draws ``group_size``
delegation trees per problem (``task.rollout_trees``, :mod:`forklens.policy.delegation`), each node is
verified on its own subgoal, its reward is its own success plus ``bonus`` times the mean (or, as the
control, the sum) of its children's success, and its advantage comes from the estimator named by
``sampling.advantage_estimator`` over the sibling groups of :func:`forklens.policy.delegation.sibling_groups`
(``loo``: the leave-one-out baseline). Rows are plain sequences with observation tokens masked, so every
objective and the normalisation rule apply; every node's tokens count in the FLOPs (``sampled_tokens``
covers all nodes' decoding and prefills, the trained tokens all nodes' rows).
"""

from __future__ import annotations

import torch

from forklens.dist import global_std
from forklens.objectives.advantages import estimate_advantages
from forklens.policy.delegation import Aggregate, sibling_groups, tree_rewards, tree_stats
from forklens.rollouts import Rollouts
from forklens.tasks.base import Problem
from forklens.train.sources import GRPOSource, SamplingConfig, rollout_info


class DelegationSource(GRPOSource):
    """GRPO/RLOO over delegation trees of a task with ``rollout_trees`` (see the module docstring)."""

    def __init__(self, task, problems: list[Problem], config: SamplingConfig, seed: int = 0, bonus: float = 1.0,
                 aggregate: Aggregate = "mean"):
        if not hasattr(task, "rollout_trees"):
            raise TypeError(f"task {getattr(task, 'name', task)!r} has no delegation trees (rollout_trees)")
        if bonus < 0:
            raise ValueError(f"the delegation bonus must be >= 0, got {bonus}")
        super().__init__(task, problems, config, seed=seed)
        self.bonus, self.aggregate = bonus, aggregate
        if aggregate not in ("mean", "sum", "none"):
            raise ValueError(f"unknown aggregate {aggregate!r}; expected mean, sum or none")

    def batch(self, step: int, policy) -> tuple[Rollouts, dict[str, float]]:
        c = self.config
        chosen, seed = self.choose_problems(step)
        trees = self.task.rollout_trees(policy, chosen, c.group_size, c, seed=seed)
        success = [self.task.verify(nd.problem, nd.text) for nd in trees.nodes]
        rewards = torch.tensor(tree_rewards(trees, success, self.bonus, self.aggregate), dtype=torch.float32)
        groups = sibling_groups(trees)
        group_ids = torch.tensor(groups, dtype=torch.long)
        adv, _ = estimate_advantages(c.advantage_estimator, rewards, group_ids, scale=c.scale_rewards,
                                     batch_std=global_std(rewards))
        samples = trees.as_samples()
        batch = samples.to_rollouts(policy.pad_id, rewards=rewards, advantages=adv, group_ids=group_ids)
        on = torch.ones(len(groups), dtype=torch.bool)
        info = rollout_info(rewards, group_ids, max(groups) + 1, batch, on, samples.tokens_processed)
        info["root_accuracy"] = sum(success[r] for r in trees.roots) / len(trees.roots)
        info["node_accuracy"] = sum(success) / len(success)
        info.update(tree_stats(trees))
        return batch, info
