"""Staged rewards and replay of barely-solved problems for RL (SU-01, arXiv 2605.13301).

* :class:`RewardSchedule`: a list of stages ``(start_step, reward_fns, weights)``; the stage whose
  ``start_step`` is the latest one ``<= step`` gives the step's reward functions. SU-01's two stages:
  cheap verifiable rewards first, then (from step ``S``) verifiable + process rewards
  (:meth:`RewardSchedule.two_stage`). The stage depends only on the step, so resume is exact.
* :class:`ReplayBuffer`: problems that exactly one of the ``G`` rollouts of their group solved (the
  hardest problems the policy can still solve, where a group carries the most signal) are queued and
  replayed: each later step replaces up to ``frac * prompts_per_step`` fresh problems with the oldest
  queued ones. "Solved" is the first reward function of the first stage (the verifiable reward)
  being > 0.5. The buffer is part of the checkpoint (sources' ``state_dict``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from forklens.rewards import RewardFn, reward_name
from forklens.tasks.base import Problem


@dataclass
class RewardStage:
    start_step: int
    reward_fns: list[RewardFn]
    weights: list[float] | None = None


class RewardSchedule:
    def __init__(self, stages: Sequence[RewardStage | tuple]):
        self.stages = [s if isinstance(s, RewardStage) else RewardStage(*s) for s in stages]
        if not self.stages or self.stages[0].start_step != 0:
            raise ValueError("a reward schedule needs a first stage starting at step 0")
        starts = [s.start_step for s in self.stages]
        if starts != sorted(set(starts)):
            raise ValueError(f"stage start steps must be strictly increasing, got {starts}")
        for s in self.stages:
            if not s.reward_fns:
                raise ValueError(f"the stage starting at step {s.start_step} has no reward functions")
            if s.weights is not None and len(s.weights) != len(s.reward_fns):
                raise ValueError(f"{len(s.weights)} weights for {len(s.reward_fns)} reward functions")

    @classmethod
    def two_stage(cls, verifiable: RewardFn, process: RewardFn, start: int, process_weight: float = 1.0
                  ) -> "RewardSchedule":
        """Stage 1: the verifiable reward alone; from step ``start``: verifiable + weighted process reward."""
        return cls([RewardStage(0, [verifiable], [1.0]),
                    RewardStage(start, [verifiable, process], [1.0, process_weight])])

    def index_at(self, step: int) -> int:
        return max(i for i, s in enumerate(self.stages) if s.start_step <= step)

    def at(self, step: int) -> RewardStage:
        return self.stages[self.index_at(step)]

    @property
    def solved_component(self) -> str:
        """The reward component that decides "solved" for replay (the first stage's first function)."""
        return reward_name(self.stages[0].reward_fns[0])


class ReplayBuffer:
    """FIFO of problems solved by exactly one rollout of their group."""

    def __init__(self, problems: Sequence[Problem], frac: float = 0.25, max_size: int = 256):
        if not 0.0 < frac <= 1.0:
            raise ValueError(f"replay frac must be in (0, 1], got {frac}")
        self.frac = frac
        self.max_size = max_size
        self.by_id = {p.id: p for p in problems}
        self.queue: list[Problem] = []
        self.replayed = 0

    def take(self, n_prompts: int) -> list[Problem]:
        """Up to ``floor(frac * n_prompts)`` oldest queued problems (removed from the queue)."""
        k = min(len(self.queue), int(self.frac * n_prompts))
        out, self.queue = self.queue[:k], self.queue[k:]
        self.replayed = k
        return out

    def observe(self, problems: Sequence[Problem], solved: torch.Tensor, group_ids: torch.Tensor) -> int:
        """Queue every problem whose group has exactly one solved rollout; returns how many were queued."""
        counts = torch.zeros(len(problems)).index_add_(0, group_ids, (solved > 0.5).float())
        added = 0
        for g in (counts == 1).nonzero().flatten().tolist():
            if len(self.queue) < self.max_size:
                self.queue.append(problems[g])
                added += 1
        return added

    def state_dict(self) -> dict:
        return {"queue": [p.id for p in self.queue]}

    def load_state_dict(self, state: dict) -> None:
        self.queue = [self.by_id[i] for i in state["queue"]]


def solved_flags(components: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in components:
        raise ValueError(f"replay needs the reward component {name!r}; got {sorted(components)}")
    return torch.nan_to_num(components[name], nan=0.0)
