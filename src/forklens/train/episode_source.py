"""Data sources over multi-turn episodes: GRPO on sampled episodes, SFT on written trajectories.

Both train only on the model's own tokens. Observation tokens the environment appended are part of
``input_ids`` (every later token conditions on them) but have ``response_mask = 0`` and are marked in
``tags["env_mask"]``. Like the single-turn sources, batches are deterministic in (seed, step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from forklens.config import field
from forklens.errors import DataError
from forklens.objectives.grpo import ScaleRewards, group_advantages
from forklens.policy.episodes import episodes_to_rollouts, sample_episodes
from forklens.rewards import RewardFn, component_means, compose_rewards
from forklens.rollouts import Rollouts
from forklens.tasks.base import Problem
from forklens.train.sources import (SFTSource, StepProblems, _global_std, group_reduce, log_mi_proxy,
                                    stage_and_replay_info, snr_keep_groups, stage_rewards, verifier_reward)

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


@dataclass
class EpisodeSamplingConfig:
    prompts_per_step: int = field(16, ge=1, help="Distinct questions per optimizer step.")
    group_size: int = field(8, ge=1, warn={1: "every advantage is zero (a group of one has nothing to compare with), so the policy gradient is zero and only the KL term trains"}, help="Episodes per question.")
    T: int = field(5, ge=0, help="Tool-call cap of the training episodes (forced answer at the cap).")
    temperature: float = field(1.0, ge=0, warn={0: "greedy episodes: every member of a group is the same, so every advantage is zero"},
                               help="Sampling temperature of the episodes.")
    top_p: float = field(1.0, gt=0, le=1, help="Nucleus sampling threshold of the episodes.")
    turn_tokens: int = field(12, ge=1, help="Most tokens in one model turn; an episode whose turn runs longer is "
                              "truncated.")
    scale_rewards: ScaleRewards = field("group", help="Divide advantages by the group std, batch std, or none.")
    snr_filter_rho: float = field(0.0, ge=0, le=1, help="Reward-variance (SNR) filtering of question groups (as in SamplingConfig; "
                                  "0 = off, the paper uses 0.9).")
    snr_filter_eps: float = field(0.01, ge=0, help="Tolerance of the SNR filter's cumulative-std threshold.")
    mi_proxy_every: int = field(0, ge=0, help="Every N steps, log the mutual-information proxy over the model's own tokens "
                                "of the episodes (mi_proxy_acc, mi_proxy_chance; 0 = off).")


class EpisodeGRPOSource(StepProblems):
    """GRPO over multi-turn episodes: ``group_size`` episodes for each of ``prompts_per_step``
    training questions, group-relative advantages per episode. The reward is the task's verifier on
    the whole transcript (binary exact match for the agent organism) unless ``reward_fns`` (TRL
    signature; their columns include ``episode``, the sampled :class:`Episode`) and ``reward_weights``
    say otherwise."""

    RNG_KEY = "episode-grpo"

    def __init__(self, task, problems: list[Problem], config: EpisodeSamplingConfig, seed: int = 0, env=None,
                 reward_fns: list[RewardFn] | None = None, reward_weights: list[float] | None = None,
                 coverage_key: str = "coverage_task", reward_schedule=None, replay=None):
        if not problems:
            raise DataError("the training split has no problems")
        self.task = task
        self.env = env if env is not None else task.environment()
        self.problems = problems
        self.config = config
        self.seed = seed
        self.reward_fns = reward_fns if reward_fns is not None else [verifier_reward(task)]
        self.weights = reward_weights
        self.coverage_key = coverage_key
        self.schedule = reward_schedule
        self.replay = replay
        self.last_chosen: list[Problem] = []
        self.last_episodes: list = []

    def batch(self, step: int, policy) -> tuple[Rollouts, dict[str, float]]:
        c = self.config
        chosen, seed = self.choose_problems(step)
        eps = sample_episodes(policy, self.env, chosen, n=c.group_size, T=c.T, temperature=c.temperature,
                              top_p=c.top_p, turn_tokens=c.turn_tokens, seed=seed)
        self.last_episodes = list(eps.episodes)
        probs = [chosen[g] for g in eps.group]
        fns, weights = stage_rewards(self, step)
        rewards, components = compose_rewards(
            fns, weights, [p.prompt for p in probs], [e.text for e in eps.episodes],
            problem=probs, answer=[p.answer for p in probs], id=[p.id for p in probs], episode=list(eps.episodes))
        group_ids = torch.tensor(eps.group, dtype=torch.long)
        adv, stds = group_advantages(rewards, group_ids, c.scale_rewards, batch_std=_global_std(rewards))
        batch = episodes_to_rollouts(eps, policy.pad_id, rewards=rewards, advantages=adv, group_ids=group_ids)
        group_max = group_reduce(rewards, group_ids, len(chosen), "amax")
        group_min = group_reduce(rewards, group_ids, len(chosen), "amin")
        own = batch.response_mask.sum(-1)
        info = {
            "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std()) if len(rewards) > 1 else 0.0,
            "frac_zero_std_groups": float((group_max == group_min).float().mean()),
            "tool_calls_mean": sum(len(e.calls) for e in eps.episodes) / len(eps.episodes),
            "forced_frac": sum(e.forced for e in eps.episodes) / len(eps.episodes),
            "response_len_mean": float(own.mean()),
            "truncated_frac": float(batch.truncated.float().mean()),
            "sampled_tokens": float(eps.tokens_processed),
            "scored_tokens": 0.0,
        }
        if len(components) > 1:
            info.update(component_means(components))
        info.update(stage_and_replay_info(self, step, chosen, components, group_ids))
        if c.mi_proxy_every and step % c.mi_proxy_every == 0:
            eps_ = eps.episodes
            mi = log_mi_proxy(policy, [e.prompt_ids for e in eps_], [e.response_ids for e in eps_],
                              [[1 - m for m in e.env_mask] for e in eps_])
            info["scored_tokens"] += mi.pop("mi_proxy_scored_tokens")
            info.update(mi)
        if c.snr_filter_rho > 0:
            first_row = [eps.group.index(g) for g in range(len(chosen))]
            keep = set(snr_keep_groups(stds[first_row], c.snr_filter_rho, c.snr_filter_eps))
            batch = batch.select([i for i, g in enumerate(eps.group) if g in keep])
            info["snr_kept_groups_frac"] = len(keep) / len(chosen)
        if hasattr(self.task, "coverage"):  # exploration coverage of the knowledge base (agent organism)
            info[self.coverage_key] = sum(self.task.coverage(p, e.calls) for p, e in zip(probs, eps.episodes)) / len(probs)
        return batch, info
