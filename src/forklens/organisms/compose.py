"""The `compose` family (E060, NeuroMAS, arXiv 2605.16757): a base whose nodes read and write the
message format of :mod:`forklens.tasks.compose`, on a task that splits into two lookups and a combiner.

``sum`` (precondition): ``y = (g(x1) + h(x2)) mod 10``; the base's position-L and position-R nodes
write a noisy lookup of one input each, its sink adds the two digits it reads, and its single agent
writes both lookups then their sum. What RL must teach is the two lookups (the base's most likely
value is a decoy), which a team can assign one to a node. ``blind`` (control): the same task and
teacher, except that the sink's teacher ignores the messages and answers from its own noisy lookups,
so in the base the graph's edges carry nothing the sink uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from forklens.config import field
from forklens.organisms.base import OrganismModelConfig
from forklens.organisms.lengths import pretrain_on_teacher, teacher_key
from forklens.organisms.zoo import Family, Variant, register
from forklens.tasks.compose import ComposeConfig, ComposeTask
from forklens.train.loop import TrainConfig

COMPOSE_TEACHER_FIELDS = ("decomposable", "p_right", "p_decoy", "p_right_table", "sink_reads", "seed")


def _model_default() -> OrganismModelConfig:
    return OrganismModelConfig(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                               max_position_embeddings=16)


def _pretrain_default() -> TrainConfig:
    return TrainConfig(max_steps=600, learning_rate=3e-3, warmup_steps=50, lr_schedule="cosine",
                       micro_batch_size=128, weight_decay=0.01, save_every=0)


@dataclass
class ComposeOrganismConfig:
    task: ComposeConfig = field(default_factory=ComposeConfig, help="The compose task and its teacher.")
    model: OrganismModelConfig = field(default_factory=_model_default, help="Model size.")
    pretrain: TrainConfig = field(default_factory=_pretrain_default, help="Pretraining (SFT on teacher documents).")
    batch_size: int = field(128, ge=1, help="Teacher documents per pretraining step.")
    seed: int = field(0, help="Seed of the initialisation and the teacher documents.")


def build_compose_organism(cfg: ComposeOrganismConfig, out_dir: str | Path, use_cache: bool = True,
                           progress: bool = True) -> dict:
    """A base pretrained on the compose teacher's node documents (cached); also builds `entangled`."""
    family = "compose" if cfg.task.decomposable else "entangled"
    key = teacher_key(family, cfg, COMPOSE_TEACHER_FIELDS)
    return pretrain_on_teacher(ComposeTask(cfg.task), key, cfg, out_dir, use_cache, progress, name=f"pretrain {family}")


COMPOSE = register(Family(
    name="compose",
    summary="y = (g(x1) + h(x2)) mod 10 over digit pairs; nodes tagged L, R, T (sink) or S (single agent) "
    "read the task and their parents' one-digit messages; the base's lookups favour a decoy.",
    can_show="Whether splitting one LoRA budget into node adapters of a message graph, trained jointly by GRPO "
    "from the sink's 1-bit reward, beats one adapter of the whole budget on a task that splits into "
    "sub-lookups; whether the messages carry the gain (random-message control).",
    cannot_show="Emergent roles or protocols (the base already has a behaviour per tag and a fixed one-digit "
    "message format), language, or scale: one tiny character-level model and a 100-entry function.",
    config=ComposeOrganismConfig, build=build_compose_organism, task=lambda cfg: ComposeTask(cfg.task),
    claims=("E060",),
    variants={
        "sum": Variant("precondition", "The sink adds the two digits it reads: a team can hand each lookup to "
                       "its own node and adapter, and the single agent writes the same three digits itself."),
        "sum-long": Variant("precondition", "`sum` pretrained 4x longer (2,400 steps): added after the measured run on "
                            "`sum` found the base sink adding the digits it reads right well under half the time.",
                            ("pretrain.max_steps=2400", "pretrain.warmup_steps=100")),
        "blind": Variant("control", "The sink's teacher ignores the messages and answers from its own lookups: "
                         "in the base, the graph's edges carry nothing the sink uses.", ("task.sink_reads=false",)),
    },
))
