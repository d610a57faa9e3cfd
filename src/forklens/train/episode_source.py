"""SFT on written multi-turn trajectories (GRPO over episodes is :class:`forklens.train.sources.GRPOSource`
with a task whose rollout is multi-turn).

Training is on the model's own tokens only. Observation tokens the environment appended are part of
``input_ids`` (every later token conditions on them) but have ``response_mask = 0`` and are marked in
``tags["env_mask"]``. Like the other sources, batches are deterministic in (seed, step).
"""

from __future__ import annotations

from typing import Sequence

import torch

from forklens.rollouts import Rollouts
from forklens.train.sources import SFTSource

#: (prompt, [(segment text, written by the environment), ...]); the source appends EOS
Trajectory = tuple[str, Sequence[tuple[str, bool]]]


def trajectory_ids(policy, trajectory: Trajectory) -> tuple[list[int], list[int], list[int]]:
    """(prompt ids, response ids with EOS, env mask) of a written trajectory."""
    prompt, segments = trajectory
    ids: list[int] = []
    env: list[int] = []
    for text, is_env in segments:
        seg = list(policy.tokenizer(text, add_special_tokens=False)["input_ids"])
        ids += seg
        env += [int(is_env)] * len(seg)
    ids.append(policy.tokenizer.eos_token_id)
    env.append(0)
    return policy.encode_prompt(prompt), ids, env


def trajectories_to_rollouts(policy, trajectories: Sequence[Trajectory]) -> Rollouts:
    """Teacher-forced rollouts of written trajectories; observation tokens are not trained on."""
    triples = [trajectory_ids(policy, t) for t in trajectories]
    for i, (p, r, _) in enumerate(triples):
        policy.check_length(len(p) + len(r), f"trajectory {i}")
    ro = Rollouts.from_ids([p for p, _, _ in triples], [r for _, r, _ in triples], policy.pad_id)
    env = torch.zeros_like(ro.response_mask)
    for i, (p, _, m) in enumerate(triples):
        env[i, len(p):len(p) + len(m)] = torch.tensor(m, dtype=env.dtype)
    ro.response_mask = ro.response_mask * (1 - env)
    ro.tags["env_mask"] = env
    return ro


class EpisodeSFTSource(SFTSource):
    """SFT on written multi-turn trajectories (fixed list, shuffled per epoch, or a generator callable
    ``(rng, n) -> list[Trajectory]``), with the loss on the model's own tokens only."""

    def to_rollouts(self, policy, examples: list, step: int) -> Rollouts:
        return trajectories_to_rollouts(policy, examples)
