"""Data sources: what an optimizer step trains on. Deterministic in (seed, step) for exact resume."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch

from forklens.analysis.mi_proxy import mi_proxy
from forklens.config import field
from forklens.dist import global_std, rank, world_size
from forklens.errors import ConfigError, DataError
from forklens.objectives.advantages import ScaleRewards, estimate_advantages, get_advantage_estimator
from forklens.policy import Samples
from forklens.policy.score import token_logprobs_and_entropy
from forklens.rewards import RewardFn, as_problem, component_means, compose_rewards, reward_name, texts_of
from forklens.rollouts import Rollouts
from forklens.tasks.base import Problem
from forklens.train.schedule import solved_flags

SFTOrder = Literal["shuffle", "reverse_perplexity", "perplexity"]


class SFTSource:
    """Teacher-forced (prompt, response) pairs; the response gets EOS appended.

    ``examples`` is either a fixed list or a callable ``(rng, n) -> list`` that generates fresh
    examples (organism pretraining). Subclasses that train on other example types override
    :meth:`to_rollouts`.

    ``order`` (fixed lists only): ``shuffle`` (default) reshuffles every epoch with the seed;
    ``reverse_perplexity`` is the SU-01 curriculum (arXiv 2605.13301): every example is scored once by
    ``policy`` (the *initial* model) with its length-normalised perplexity ``exp(mean NLL of the trained
    tokens)`` and training runs from the highest to the lowest, without shuffling (later epochs repeat
    the order); ``perplexity`` runs low to high (the paper's worst ablation). Ties keep the list order.
    The scoring forward pass over the dataset is counted in :attr:`scoring_tokens`.
    """

    samples = False  # teacher-forced: no sampling, so FSDP need not gather weights for batch()

    def __init__(self, examples: Sequence | Callable, batch_size: int, seed: int = 0, order: SFTOrder = "shuffle",
                 policy=None):
        if not callable(examples) and len(examples) == 0:
            raise DataError("the SFT dataset is empty: nothing to train on")
        if order not in ("shuffle", "reverse_perplexity", "perplexity"):
            raise ValueError(f"unknown SFT order {order!r}; expected shuffle, reverse_perplexity or perplexity")
        self.examples = examples
        self.batch_size = batch_size
        self.seed = seed
        self.order = order
        self.perplexities: list[float] | None = None
        self.ordered: list[int] | None = None
        self.scoring_tokens = 0.0
        if order != "shuffle":
            if callable(examples):
                raise ValueError(f"order={order!r} needs a fixed list of examples, not a generator")
            if policy is None:
                raise ValueError(f"order={order!r} scores the examples with the initial model: pass policy=")
            self.perplexities = self.score_perplexities(policy)
            by = sorted(range(len(examples)), key=lambda i: self.perplexities[i])  # stable: ties keep list order
            if order == "reverse_perplexity":
                by = sorted(range(len(examples)), key=lambda i: -self.perplexities[i])
            self.ordered = by

    @torch.no_grad()
    def score_perplexities(self, policy, rows_per_pass: int = 64) -> list[float]:
        """Length-normalised perplexity of every example under ``policy``, over its trained tokens."""
        was_training = policy.model.training
        policy.model.eval()
        out: list[float] = []
        try:
            for s in range(0, len(self.examples), rows_per_pass):
                ro = self.to_rollouts(policy, list(self.examples[s:s + rows_per_pass]), -1).to(policy.device)
                lp, _, _ = token_logprobs_and_entropy(policy.model, ro.input_ids, ro.attention_mask, ro.response_mask,
                                                      with_entropy=False)
                mask = ro.response_mask.clone()
                mask[:, 0] = 0
                nll = -(lp.double() * mask).sum(-1) / mask.sum(-1).clamp(min=1)
                out += torch.exp(nll).cpu().tolist()
                self.scoring_tokens += float(ro.attention_mask.sum())
        finally:
            policy.model.train(was_training)
        return out

    def examples_for(self, step: int) -> list:
        """The global batch of ``step`` (every rank computes the same list)."""
        if callable(self.examples):
            return self.examples(random.Random(f"sft-{self.seed}-{step}"), self.batch_size)
        n = len(self.examples)
        out = []
        for k in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, i = divmod(k, n)
            if self.ordered is not None:
                out.append(self.examples[self.ordered[i]])
                continue
            perm = list(range(n))
            random.Random(f"sft-{self.seed}-epoch-{epoch}").shuffle(perm)
            out.append(self.examples[perm[i]])
        return out

    def to_rollouts(self, policy, examples: list, step: int) -> Rollouts:
        prompts = [policy.encode_prompt(p) for p, _ in examples]
        responses = [policy.encode_response(r) for _, r in examples]
        for i, (p, r) in enumerate(zip(prompts, responses)):
            policy.check_length(len(p) + len(r), f"SFT example {i} of step {step}")
        return Rollouts.from_ids(prompts, responses, policy.pad_id)

    def batch(self, step: int, policy) -> tuple[Rollouts, dict[str, float]]:
        mine = self.examples_for(step)[rank()::world_size()]  # this rank's share of the global batch
        return self.to_rollouts(policy, mine, step), {}


def verifier_reward(task) -> RewardFn:
    """The task's exact verifier in TRL's reward-function signature (``problem`` rows may be
    :class:`Problem` objects or dicts, as a TRL dataset column holds them)."""
    def reward(prompts, completions, problem, **_):
        return [task.verify(as_problem(p), c) for p, c in zip(problem, texts_of(completions))]
    reward.__name__ = f"{task.name}_verifier"
    return reward


@dataclass
class SamplingConfig:
    prompts_per_step: int = field(16, ge=1, help="Distinct prompts per optimizer step.")
    group_size: int = field(8, ge=1, warn={1: "every advantage is zero (a group of one has nothing to compare with), so the policy gradient is zero and only the KL term trains"},
                            help="Completions (episodes, for a task with tools) per prompt (TRL: num_generations).")
    temperature: float = field(1.0, ge=0, warn={0: "greedy rollouts: every member of a group is the same, so every advantage is zero"},
                               help="Sampling temperature of the rollouts.")
    top_p: float = field(1.0, gt=0, le=1, help="Nucleus sampling threshold of the rollouts.")
    max_new_tokens: int = field(64, ge=1, help="Completion length cap of single-turn rollouts; longer completions are "
                                "truncated.")
    T: int = field(5, ge=0, help="Tool-call cap of multi-turn rollouts (forced answer at the cap).")
    turn_tokens: int = field(12, ge=1, help="Most tokens in one model turn of a multi-turn rollout; an episode whose turn "
                             "runs longer is truncated.")
    advantage_estimator: Literal["grpo", "grpo_population", "loo"] = field("grpo", help="Advantage estimator by name (forklens.objectives.advantages): "
                                     "grpo (unbiased group std), grpo_population (population std, floored) or loo "
                                     "(leave-one-out baseline).")
    scale_rewards: ScaleRewards = field("group", help="Divide advantages by the group std, batch std, or none.")
    snr_filter_rho: float = field(0.0, ge=0, le=1, help="Reward-variance (SNR) filtering of prompt groups, RAGEN-2 style: drop "
                                  "zero-std groups, keep the highest-std groups until they hold rho of the total "
                                  "std (0 = off; the paper uses 0.9). Filtered groups are sampled but not trained on.")
    snr_filter_eps: float = field(0.01, ge=0, help="Tolerance of the SNR filter's cumulative-std threshold.")
    backend: Literal["torch", "vllm"] = field("torch", help="Rollout sampler: the built-in one, or vLLM (GPU only; "
                                              "`pip install vllm`; weights are pushed to it after every step).")
    vllm_gpu_memory_utilization: float = field(0.3, gt=0, le=1, help="Share of GPU memory the colocated vLLM engine may take.")
    mi_proxy_every: int = field(0, ge=0, help="Every N steps, log the mutual-information proxy (mi_proxy_acc: retrieval "
                                "accuracy of each rollout's own prompt among the step's prompts; chance in "
                                "mi_proxy_chance) over the model's own tokens. Costs prompts x rollouts "
                                "teacher-forced sequences (0 = off).")


def snr_keep_groups(group_std: torch.Tensor, rho: float, eps: float = 0.01) -> list[int]:
    """Groups kept by reward-variance filtering: zero-std groups dropped, the rest sorted by std
    (descending) and kept until their cumulative std reaches ``rho * total - eps``. At least one
    group is always kept (so every rank has something to train on; a zero-std group has zero
    advantage and contributes no gradient). Returns group indices in ascending order."""
    std = group_std.double()
    live = (std > 0).nonzero().flatten().tolist()
    if not live:
        return [int(std.argmax())]
    total = float(std[live].sum())
    kept, cum = [], 0.0
    for g in sorted(live, key=lambda i: (-float(std[i]), i)):
        kept.append(g)
        cum += float(std[g])
        if cum >= rho * total - eps:
            break
    return sorted(kept)


def group_reduce(values: torch.Tensor, group_ids: torch.Tensor, n_groups: int, op: str) -> torch.Tensor:
    """Per-group max/min/sum/mean of ``values`` (``op`` as in ``Tensor.scatter_reduce``)."""
    return torch.zeros(n_groups, dtype=values.dtype).scatter_reduce(0, group_ids, values, op, include_self=False)


def log_mi_proxy(policy, prompt_ids, response_ids, masks=None) -> dict[str, float]:
    """The MI proxy of this rank's rollouts, as step info (its scoring counts in ``scored_tokens``)."""
    out = mi_proxy(policy, prompt_ids, response_ids, masks)
    return {"mi_proxy_acc": out["mi_proxy_acc"], "mi_proxy_chance": out["mi_proxy_chance"],
            "mi_proxy_scored_tokens": out["scored_tokens"]}


def stage_rewards(source, step: int | None) -> tuple[list[RewardFn], list[float] | None]:
    """The reward functions and weights of a source at ``step`` (its schedule's stage, if it has one)."""
    if source.schedule is None or step is None:
        return source.reward_fns, source.weights
    stage = source.schedule.at(step)
    return stage.reward_fns, stage.weights


def with_replay(source, chosen: list[Problem]) -> list[Problem]:
    """``chosen`` with its first problems replaced by queued replay problems (single process only)."""
    if source.replay is None:
        return chosen
    if world_size() > 1:
        raise ConfigError("replay of barely-solved problems runs in one process only (each rank would queue "
                          "different problems); turn replay off for data-parallel runs")
    replayed = source.replay.take(len(chosen))
    return replayed + chosen[len(replayed):]


def stage_and_replay_info(source, step: int, chosen: list[Problem], components: dict, group_ids: torch.Tensor,
                          rows: torch.Tensor | None = None) -> dict[str, float]:
    """Queue this step's barely-solved problems; the stage index and replay counters as step info."""
    info: dict[str, float] = {}
    if source.schedule is not None:
        info["reward_stage"] = float(source.schedule.index_at(step))
    if source.replay is not None:
        name = source.schedule.solved_component if source.schedule is not None else reward_name(source.reward_fns[0])
        solved = solved_flags(components, name)
        if rows is not None:
            solved, group_ids = solved[rows], group_ids[rows]
        info["replay_added"] = float(source.replay.observe(chosen, solved, group_ids))
        info["replayed"] = float(source.replay.replayed)
        info["replay_queue"] = float(len(source.replay.queue))
    return info


class StepProblems:
    """The step's problems of a GRPO source (deterministic in seed and step, whole groups
    per rank, queued replay problems first) and the replay queue's checkpoint state. Subclasses set
    ``problems``, ``config`` (``prompts_per_step``), ``seed``, ``replay`` and ``RNG_KEY``."""

    RNG_KEY = "grpo"

    def choose_problems(self, step: int) -> tuple[list[Problem], int]:
        """(this rank's problems for ``step``, this rank's sampling seed); sets ``last_chosen``."""
        rng = random.Random(f"{self.RNG_KEY}-{self.seed}-{step}")
        chosen = [self.problems[rng.randrange(len(self.problems))] for _ in range(self.config.prompts_per_step)]
        seeds = [rng.randrange(2**31) for _ in range(world_size())]
        chosen = chosen[rank()::world_size()]  # whole groups per rank: prompts_per_step is global
        self.last_chosen = with_replay(self, chosen)
        return self.last_chosen, seeds[rank()]

    def state_dict(self) -> dict:
        return {"replay": self.replay.state_dict()} if self.replay is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.replay is not None and "replay" in state:
            self.replay.load_state_dict(state["replay"])


class GRPOSource(StepProblems):
    """GRPO groups over any task: ``group_size`` rollouts for each of ``prompts_per_step`` training
    problems, drawn by the task's own rollout (single-turn samples, or episodes with tool
    observations, marked ``tags["env_mask"]`` and not trained on), scored by TRL-style reward
    functions (default: the task's verifier), with advantages from the estimator named by
    ``config.advantage_estimator``.

    Composable pieces, each off by default: a reward schedule (staged rewards) and replay of
    barely-solved problems (:mod:`forklens.train.schedule`), reward-variance (SNR) filtering of groups
    (``snr_filter_rho``), the MI proxy (``mi_proxy_every``), a frozen reference policy (KL term), and
    expert traces: with ``expert_fn`` (problem -> expert response text) and ``n_expert > 0`` each group
    holds ``group_size - n_expert`` on-policy rollouts plus ``n_expert`` copies of the expert trace,
    tagged ``extras["off_policy"]`` (LUFFY-style mixed-policy GRPO; train with the ``mixed_policy``
    objective). Reward functions see the columns ``problem``, ``answer``, ``id`` and, for episodes,
    ``episode``. Exploration interleaving wraps two such sources (:mod:`forklens.train.exploration`).
    """

    def __init__(self, task, problems: list[Problem], config: SamplingConfig, reward_fns: list[RewardFn] | None = None,
                 seed: int = 0, ref_policy=None, reward_weights: list[float] | None = None,
                 expert_fn: Callable[[Problem], str] | None = None, n_expert: int = 0,
                 reward_schedule=None, replay=None, coverage_key: str = "coverage_task"):
        if not problems:
            raise DataError("the training split has no problems")
        if n_expert and expert_fn is None:
            raise ValueError("n_expert > 0 needs expert_fn")
        if n_expert >= config.group_size:
            raise ValueError(f"n_expert ({n_expert}) must be smaller than group_size ({config.group_size})")
        get_advantage_estimator(config.advantage_estimator)  # an unknown name fails here, not at step 0
        self.task = task
        self.problems = problems
        self.reward_fns = reward_fns if reward_fns is not None else [verifier_reward(task)]
        self.weights = reward_weights or [1.0] * len(self.reward_fns)
        self.config = config
        self.seed = seed
        self.ref_policy = ref_policy
        self.expert_fn = expert_fn
        self.n_expert = n_expert
        self.schedule = reward_schedule
        self.replay = replay
        self.coverage_key = coverage_key
        self.last_chosen: list[Problem] = []
        self.last_samples: Samples | None = None

    def rewards(self, problems: list[Problem], completions: list[str], step: int | None = None,
                episodes: list | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted total reward and each component (see :func:`forklens.rewards.compose_rewards`); with a
        reward schedule, the functions of ``step``'s stage."""
        fns, weights = stage_rewards(self, step)
        columns = {"problem": problems, "answer": [p.answer for p in problems], "id": [p.id for p in problems]}
        if getattr(self.task, "dataset_columns", False):  # your data: its other columns, as TRL passes them
            for key in dict.fromkeys(k for p in problems for k in p.meta if k not in ("expert", "where")):
                columns.setdefault(key, [p.meta.get(key) for p in problems])
        if episodes is not None:
            columns["episode"] = episodes
        return compose_rewards(fns, weights, [p.prompt for p in problems], completions, **columns)

    def with_experts(self, policy, chosen: list[Problem], samples: Samples) -> tuple[Samples, list[bool]]:
        """``samples`` with ``n_expert`` expert rows after each group's own rollouts; the off-policy flags."""
        n_policy = self.config.group_size - self.n_expert
        out = Samples(prompt_ids=list(samples.prompt_ids), response_ids=list(samples.response_ids),
                      finished=list(samples.finished), group=list(samples.group), texts=list(samples.texts),
                      tokens_processed=samples.tokens_processed,
                      env_masks=list(samples.env_masks) if samples.env_masks is not None else None,
                      episodes=list(samples.episodes) if samples.episodes is not None else None)
        off_policy = [False] * len(out.group)
        for g, problem in enumerate(chosen):
            text = self.expert_fn(problem)
            ids = policy.encode_response(text)
            at = (g + 1) * n_policy + g * self.n_expert  # after the group's own samples
            for _ in range(self.n_expert):
                out.prompt_ids.insert(at, out.prompt_ids[g * (n_policy + self.n_expert)])
                out.response_ids.insert(at, ids)
                out.group.insert(at, g)
                out.texts.insert(at, text)
                out.finished.insert(at, True)
                off_policy.insert(at, True)
                if out.env_masks is not None:
                    out.env_masks.insert(at, [0] * len(ids))
                if out.episodes is not None:
                    out.episodes.insert(at, None)
        return out, off_policy

    def batch(self, step: int, policy) -> tuple[Rollouts, dict[str, float]]:
        c = self.config
        chosen, seed = self.choose_problems(step)
        samples = self.task.rollout(policy, chosen, c.group_size - self.n_expert, c, seed=seed)
        self.last_samples = samples
        sampled_tokens = samples.tokens_processed
        off_policy = [False] * len(samples.group)
        if self.n_expert:
            samples, off_policy = self.with_experts(policy, chosen, samples)
        groups = samples.group
        probs = [chosen[g] for g in groups]
        rewards, components = self.rewards(probs, samples.texts, step, samples.episodes)
        group_ids = torch.tensor(groups, dtype=torch.long)
        adv, stds = estimate_advantages(c.advantage_estimator, rewards, group_ids, scale=c.scale_rewards,
                                        batch_std=global_std(rewards))
        batch = samples.to_rollouts(policy.pad_id, rewards=rewards, advantages=adv, group_ids=group_ids)
        if self.n_expert:
            batch.extras["off_policy"] = torch.tensor(off_policy)
        on = ~torch.tensor(off_policy)
        info = rollout_info(rewards, group_ids, len(chosen), batch, on, sampled_tokens)
        info["scored_tokens"] += self.score_reference(batch, samples)
        if len(components) > 1:
            info.update(component_means(components, on))
        info.update(stage_and_replay_info(self, step, chosen, components, group_ids, on))
        metrics = self.task.rollout_metrics(probs, samples)
        if "coverage" in metrics:
            metrics[self.coverage_key] = metrics.pop("coverage")
        info.update(metrics)
        if c.mi_proxy_every and step % c.mi_proxy_every == 0:
            own = [i for i in range(len(groups)) if not off_policy[i]]
            masks = None if samples.env_masks is None else [[1 - m for m in samples.env_masks[i]] for i in own]
            mi = log_mi_proxy(policy, [samples.prompt_ids[i] for i in own], [samples.response_ids[i] for i in own],
                              masks)
            info["scored_tokens"] += mi.pop("mi_proxy_scored_tokens")
            info.update(mi)
        if c.snr_filter_rho > 0:
            first_row = [groups.index(g) for g in range(len(chosen))]
            keep = set(snr_keep_groups(stds[first_row], c.snr_filter_rho, c.snr_filter_eps))
            batch = batch.select([i for i, g in enumerate(groups) if g in keep])
            info["snr_kept_groups_frac"] = len(keep) / len(chosen)
        return batch, info

    def score_reference(self, batch: Rollouts, samples: Samples) -> float:
        """Fill ``batch.ref_logprobs`` from the frozen reference policy (when there is one); the tokens it ran."""
        if self.ref_policy is None:
            return 0.0
        ref = self.ref_policy.score(samples.prompt_ids, samples.response_ids)
        batch.ref_logprobs = torch.zeros_like(batch.response_mask)
        for i, s in enumerate(ref):
            start = int(batch.prompt_lens[i])
            batch.ref_logprobs[i, start:start + len(s.logprob)] = s.logprob
        return float(batch.attention_mask.sum())


def rollout_info(rewards: torch.Tensor, group_ids: torch.Tensor, n_groups: int, batch: Rollouts, on: torch.Tensor,
                 sampled_tokens: float) -> dict[str, float]:
    """Step info of a GRPO batch over its on-policy rows: reward mean/std, the fraction of zero-std
    groups, the model's own response length, the truncated fraction and the sampled tokens."""
    group_max = group_reduce(rewards, group_ids, n_groups, "amax")
    group_min = group_reduce(rewards, group_ids, n_groups, "amin")
    lens = batch.response_lens[on]
    return {
        "reward_mean": float(rewards[on].mean()),
        "reward_std": float(rewards[on].std()) if int(on.sum()) > 1 else 0.0,
        "frac_zero_std_groups": float((group_max == group_min).float().mean()),
        "response_len_mean": float(lens.mean()),
        "response_len_max": float(lens.max()),
        "truncated_frac": float(batch.truncated[on].float().mean()),
        "sampled_tokens": float(sampled_tokens),
        "scored_tokens": 0.0,
    }


class InterleavedSFTSource:
    """ReLIFT-style interleaving: RL steps from ``rl_source``; problems whose whole group failed go to
    a buffer; every ``sft_every``-th step (when the buffer holds at least ``min_buffer`` problems) is
    an SFT step on their expert traces instead (rows tagged ``extras["sft"]``, ``mixed_policy``
    objective). The buffer is part of the checkpoint, so resume is exact."""

    def __init__(self, rl_source: GRPOSource, expert_fn: Callable[[Problem], str], sft_every: int = 5,
                 min_buffer: int = 4, max_buffer: int = 64):
        self.rl = rl_source
        self.expert_fn = expert_fn
        self.sft_every = sft_every
        self.min_buffer = min_buffer
        self.max_buffer = max_buffer
        self.buffer: list[Problem] = []
        self.by_id = {p.id: p for p in rl_source.problems}

    def state_dict(self) -> dict:
        return {"buffer": [p.id for p in self.buffer]}

    def load_state_dict(self, state: dict) -> None:
        self.buffer = [self.by_id[i] for i in state["buffer"]]

    def batch(self, step: int, policy) -> tuple[Rollouts, dict[str, float]]:
        if (step + 1) % self.sft_every == 0 and len(self.buffer) >= self.min_buffer:
            problems, self.buffer = self.buffer, []
            prompts = [policy.encode_prompt(p.prompt) for p in problems]
            responses = [policy.encode_response(self.expert_fn(p)) for p in problems]
            batch = Rollouts.from_ids(prompts, responses, policy.pad_id)
            batch.extras["sft"] = torch.ones(len(problems), dtype=torch.bool)
            return batch, {"sft_step": 1.0, "sft_rows": float(len(problems))}
        batch, info = self.rl.batch(step, policy)
        failed = group_reduce(batch.rewards, batch.group_ids, len(self.rl.last_chosen), "amax") <= 0
        for g in failed.nonzero().flatten().tolist():
            if len(self.buffer) < self.max_buffer:
                self.buffer.append(self.rl.last_chosen[g])
        return batch, {**info, "sft_step": 0.0, "buffer_size": float(len(self.buffer))}
