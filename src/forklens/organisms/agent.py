"""The `agent` model organism: a tiny Llama pretrained on the noisy teacher's tool-use trajectories
(:mod:`forklens.tasks.agent`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from forklens.config import field
from forklens.organisms.base import OrganismModelConfig, cache_key, pretrain_organism
from forklens.organisms.zoo import Family, Variant, register
from forklens.tasks.agent import FORMAT_VERSION, AgentConfig, AgentTask
from forklens.train.episode_source import EpisodeSFTSource
from forklens.train.loop import TrainConfig


def _pretrain_default() -> TrainConfig:
    return TrainConfig(max_steps=1000, learning_rate=3e-3, warmup_steps=50, lr_schedule="cosine",
                       micro_batch_size=256, weight_decay=0.01)


@dataclass
class AgentOrganismConfig:
    agent: AgentConfig = field(default_factory=AgentConfig, help="Questions, knowledge bases and the teacher.")
    model: OrganismModelConfig = field(default_factory=OrganismModelConfig, help="Model size.")
    pretrain: TrainConfig = field(default_factory=_pretrain_default, help="Pretraining (SFT) settings.")
    batch_size: int = field(64, ge=1, help="Teacher trajectories per pretraining step.")
    seed: int = field(0, help="Seed of the initialisation and the teacher trajectories.")


def agent_organism_key(cfg: AgentOrganismConfig) -> str:
    """The cache key of a base organism: its config without the split-only fields (train/test depths
    never reach pretraining) and without ``p_right`` and ``kb`` at their defaults, so organisms built
    before those fields existed keep their keys."""
    config = asdict(cfg)
    agent = config["agent"]
    for name in ("train_depths", "test_depths"):
        agent.pop(name)
    for name, default in (("p_right", 1.0), ("kb", "random")):
        if agent[name] == default:
            agent.pop(name)
    return cache_key({"organism": "agent", "format": FORMAT_VERSION, "config": config})


def build_agent_organism(cfg: AgentOrganismConfig, out_dir: str | Path, use_cache: bool = True,
                         progress: bool = True) -> dict:
    """Pretrain (or fetch from the cache) the agent base organism; save it to ``out_dir`` in HF format.

    Pretraining is SFT with the one trainer on fresh noisy-teacher trajectories every step
    (:class:`~forklens.train.episode_source.EpisodeSFTSource`: observation tokens are in the
    sequence but not trained on). Cached like the arith organism (``FORKLENS_CACHE``).
    """
    task = AgentTask(cfg.agent)
    source = EpisodeSFTSource(lambda rng, n: [task.teacher_example(rng) for _ in range(n)], cfg.batch_size,
                              cfg.seed)
    return pretrain_organism(agent_organism_key(cfg), task.alphabet, cfg.model, replace(cfg.pretrain, seed=cfg.seed),
                             source, asdict(cfg), out_dir, seed=cfg.seed, use_cache=use_cache,
                             progress=progress, name="pretrain agent base")


AGENT = register(Family(
    name="agent",
    summary="Multi-hop lookups through a tool; the noisy teacher stops early with probability 1 - p_continue per hop.",
    can_show="Tool-use plumbing (episodes, observation masks, PASS@(k,T)); RL vs SFT on the same questions.",
    cannot_show="Whether RL expands the capability boundary: with p_continue = 0.5 and depths 1-4 the base "
    "finds the full chain with probability >= 1/16, so 64 samples rescue almost every question.",
    config=AgentOrganismConfig, build=build_agent_organism, task=lambda cfg: AgentTask(cfg.agent),
    claims=("E011",),
    variants={
        "coin": Variant("control", "Today's teacher: one more lookup with probability 0.5 wherever one is needed "
                        "(depths 1-4); the full chain is always within reach of sampling.", claims=("E011",)),
    },
))
