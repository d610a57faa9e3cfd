"""The `steer` family (E025, arXiv 2605.04266): a policy whose learned reward model can be steered.

The base is a tiny Llama pretrained on the reference distribution of the steer task
(:mod:`forklens.tasks.steer`): 8-character strings of signal, neutral and (rarely) hack tokens. The true
utility counts signal tokens and ignores the hack token; a bag-of-tokens reward model can come to
reward it. The variants differ only in what iterative RLHF refits the reward model on (they share one
base organism): the policy's own samples (the steering channel of the paper) or a fixed reference set.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from forklens.config import field
from forklens.organisms.base import OrganismModelConfig, cache_key, pretrain_organism
from forklens.organisms.zoo import Family, Variant, register
from forklens.policy import Policy
from forklens.rewards.reward_model import RewardModel
from forklens.tasks.steer import SteerConfig, SteerTask
from forklens.train.loop import TrainConfig
from forklens.train.rlhf import Refit
from forklens.train.sources import SFTSource

TEACHER = ("signal", "neutral", "hack", "prompt", "length", "p_hack")


def _model_default() -> OrganismModelConfig:
    return OrganismModelConfig(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                               max_position_embeddings=32)


def _pretrain_default() -> TrainConfig:
    return TrainConfig(max_steps=300, learning_rate=3e-3, warmup_steps=30, lr_schedule="cosine",
                       micro_batch_size=64, weight_decay=0.01, save_every=0)


@dataclass
class SteerOrganismConfig:
    task: SteerConfig = field(default_factory=SteerConfig, help="The steer task and its reference distribution.")
    model: OrganismModelConfig = field(default_factory=_model_default, help="Model size.")
    pretrain: TrainConfig = field(default_factory=_pretrain_default, help="Pretraining (SFT on reference strings).")
    batch_size: int = field(64, ge=1, help="Reference strings per pretraining step.")
    seed: int = field(0, help="Seed of the initialisation and the pretraining strings.")
    rm_signal: float = field(0.5, help="Initial reward-model weight of each signal token (the true utility's is 1: "
                             "a reward model that has the direction but half the scale).")
    rm_hack: float = field(0.6, help="Initial reward-model weight of the hack token (0 in the true utility: a "
                           "reward model that slightly prefers the filler to a signal token).")
    rm_noise: float = field(0.1, ge=0, help="Standard deviation of the noise added to each non-signal token's initial "
                            "weight (the hack's included).")
    refit: Refit = field("policy", help="What iterative RLHF refits the reward model on (not part of the base: "
                         "both variants share it).")


def steer_organism_key(cfg: SteerOrganismConfig) -> str:
    teacher = {k: getattr(cfg.task, k) for k in TEACHER}
    return cache_key({"family": "steer", "teacher": teacher, "model": asdict(cfg.model),
                      "pretrain": asdict(cfg.pretrain), "batch_size": cfg.batch_size, "seed": cfg.seed})


def build_steer_organism(cfg: SteerOrganismConfig, out_dir: str | Path, use_cache: bool = True,
                         progress: bool = True) -> dict:
    """The steer base organism: SFT from scratch on reference strings (cached)."""
    task = SteerTask(cfg.task)
    source = SFTSource(lambda rng, n: [task.teacher_example(rng) for _ in range(n)], cfg.batch_size, cfg.seed)
    return pretrain_organism(steer_organism_key(cfg), task.alphabet, cfg.model, replace(cfg.pretrain, seed=cfg.seed),
                             source, asdict(cfg), out_dir, seed=cfg.seed, use_cache=use_cache, progress=progress,
                             name="pretrain steer")


def initial_reward_model(policy: Policy, cfg: SteerOrganismConfig, seed: int) -> RewardModel:
    """The organism's bag-of-tokens reward model before any refit: weight ``rm_signal`` on each signal token,
    ``rm_hack`` + noise on the hack token, noise on each neutral token, 0 elsewhere, bias 0 (seeded)."""
    rm = RewardModel.bag_of_tokens(policy)
    vocab = policy.tokenizer.get_vocab()
    gen = torch.Generator().manual_seed(seed)
    w = torch.zeros(rm.backbone.feature_dim)
    task = cfg.task
    for ch in task.signal:
        w[vocab[ch]] = cfg.rm_signal
    for ch in task.neutral + task.hack:
        w[vocab[ch]] = cfg.rm_noise * float(torch.randn(1, generator=gen))
    w[vocab[task.hack]] += cfg.rm_hack
    with torch.no_grad():
        rm.head.weight.copy_(w[None])
        rm.head.bias.zero_()
    return rm


def reward_model_weights(rm: RewardModel, cfg: SteerOrganismConfig) -> dict[str, float]:
    """The reward model's hack and mean signal weights, each relative to the mean neutral weight (the only
    identified quantities: every response has the same length, so adding a constant to every weight
    changes no comparison)."""
    vocab = rm.policy.tokenizer.get_vocab()
    w = rm.head.weight.detach()[0]
    neutral = float(w[[vocab[c] for c in cfg.task.neutral]].mean())
    return {"rm_hack_weight": float(w[vocab[cfg.task.hack]]) - neutral,
            "rm_signal_weight": float(w[[vocab[c] for c in cfg.task.signal]].mean()) - neutral}


STEER = register(Family(
    name="steer",
    summary="8-token strings; the true utility counts signal tokens and ignores a hack token that a "
    "bag-of-tokens reward model, refit in iterative RLHF, can come to reward.",
    can_show="Whether refitting the reward model on the policy's own samples lets the policy steer it toward "
    "a feature the true utility ignores (hack-token mass up, utility down), and whether FPO's penalty "
    "(practical or relaxed) prevents that better than a generic L2 penalty of the same size.",
    cannot_show="Sycophancy in language (the hack is one token); reward models with learned features (the "
    "organism's is linear in token counts, so the practical penalty is a fixed function of the response); "
    "effects that need the paper's scale (a 1B policy, a DeBERTa reward model).",
    config=SteerOrganismConfig, build=build_steer_organism, task=lambda cfg: SteerTask(cfg.task),
    claims=("E025",),
    variants={
        "policy-refit": Variant("precondition", "The reward model is refit on the policy's own samples (against each "
                                "problem's reference), so what the policy writes decides what the reward model "
                                "learns: the steering channel FPO accounts for."),
        "reference-refit": Variant("control", "The reward model is refit on fixed reference pairs that do not depend "
                                   "on the policy: no steering channel, so FPO's steering correction has nothing to "
                                   "correct.", ("refit=reference",)),
    },
))
