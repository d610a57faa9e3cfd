"""The `agent-explore` family: a base that learned to explore, for exploration interleaving (E052,
arXiv 2605.16143: task-focused GRPO drops exploration checkpoint coverage on unfamiliar environments, and
interleaving exploration rollouts rewarded by coverage, 5 task : 1 exploration, recovers it for ~17%
training overhead).

Bridge questions of depths 1-3 over private random knowledge bases (:mod:`forklens.tasks.agent`), the
noisy teacher (one more lookup with probability 0.5). The `explorer` base (precondition) also saw
exploration episodes in pretraining (a quarter of its examples, :mod:`forklens.tasks.agent_explore`):
given ``?qwe>`` it looks up 3-9 of the entity's 9 checkpoints, so before RL it explores, and task-only
GRPO has an exploration behaviour to erode. The `no-explorer` base (control) is pretrained on the task
stream alone: it has no exploration behaviour, so task-only GRPO has nothing to drop. RL and the
held-out evaluation run on questions whose knowledge bases the base never saw.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from forklens.config import field
from forklens.organisms.base import OrganismModelConfig, cache_key, pretrain_organism
from forklens.organisms.zoo import Family, Variant, register
from forklens.tasks.agent import FORMAT_VERSION
from forklens.tasks.agent_explore import ExploreAgentConfig, ExploreAgentTask
from forklens.train.episode_source import EpisodeSFTSource
from forklens.train.loop import TrainConfig

#: bump when the exploration teacher changes, so cached bases are rebuilt
EXPLORE_FORMAT = 1


def explore_agent_config() -> ExploreAgentConfig:
    return ExploreAgentConfig(bridge_depths=[1, 2, 3], p_comparison=0.0)


def explore_model() -> OrganismModelConfig:
    """Laptop size; context 192 (a 9-call exploration episode is about 115 tokens)."""
    return OrganismModelConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                               max_position_embeddings=192)


def explore_pretrain() -> TrainConfig:
    """The agent organism's pretraining recipe, 400 steps."""
    return TrainConfig(max_steps=400, learning_rate=3e-3, warmup_steps=50, lr_schedule="cosine",
                       micro_batch_size=256, weight_decay=0.01)


@dataclass
class AgentExploreOrganismConfig:
    agent: ExploreAgentConfig = field(default_factory=explore_agent_config,
                                      help="Questions, knowledge bases, the noisy teacher and its exploration episodes.")
    model: OrganismModelConfig = field(default_factory=explore_model, help="Model size.")
    pretrain: TrainConfig = field(default_factory=explore_pretrain, help="Pretraining (SFT) settings.")
    batch_size: int = field(64, ge=1, help="Teacher trajectories per pretraining step.")
    seed: int = field(0, help="Seed of the initialisation and the teacher trajectories.")


def explore_organism_key(cfg: AgentExploreOrganismConfig) -> str:
    """The cache key: the config without the split-only fields (they never reach pretraining)."""
    config = asdict(cfg)
    for name in ("train_depths", "test_depths", "n_train", "n_test"):
        config["agent"].pop(name)
    return cache_key({"organism": "agent-explore", "format": FORMAT_VERSION, "explore_format": EXPLORE_FORMAT,
                      "config": config})


def build_explore_organism(cfg: AgentExploreOrganismConfig, out_dir: str | Path, use_cache: bool = True,
                           progress: bool = True) -> dict:
    """Pretrain (or fetch from the cache) the base on the teacher's task and exploration episodes
    (observation tokens in the sequence, not trained on), saved to ``out_dir`` in HF format."""
    task = ExploreAgentTask(cfg.agent)
    source = EpisodeSFTSource(lambda rng, n: [task.teacher_example(rng) for _ in range(n)], cfg.batch_size,
                              cfg.seed)
    return pretrain_organism(explore_organism_key(cfg), task.alphabet, cfg.model, replace(cfg.pretrain, seed=cfg.seed),
                             source, asdict(cfg), out_dir, seed=cfg.seed, use_cache=use_cache,
                             progress=progress, name="pretrain agent-explore base")


AGENT_EXPLORE = register(Family(
    name="agent-explore",
    summary="Bridge questions (depths 1-3) through a lookup tool; the explorer base also learned to look up "
    "an entity's checkpoints when asked to explore (?qwe>), the control base did not.",
    can_show="Whether task-only GRPO erodes an exploration behaviour the base has (ECC on held-out exploration "
    "prompts), whether 5:1 interleaved exploration rollouts keep it, and their token overhead (E052).",
    cannot_show="Premature exploitation from prior knowledge (every knowledge base is private and random, so no "
    "environment is familiar in content) and exploration that pays off in the task (the chain is written in "
    "the prompt, so looking around never helps answer).",
    config=AgentExploreOrganismConfig, build=build_explore_organism, task=lambda cfg: ExploreAgentTask(cfg.agent),
    claims=("E052",),
    variants={
        "explorer": Variant("precondition", "A quarter of the pretraining examples are exploration episodes "
                            "(3-9 of an entity's 9 checkpoints, order A-F, X-Z): the base explores before RL."),
        "no-explorer": Variant("control", "The same task stream without exploration episodes: no exploration "
                               "behaviour for task-only GRPO to drop.", ("agent.p_explore=0",)),
    },
))
