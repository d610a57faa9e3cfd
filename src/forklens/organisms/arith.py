"""The `arith` model organism: a tiny Llama pretrained on the noisy teacher's addition traces
(:mod:`forklens.tasks.arith`), the demo's base model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from forklens.config import field
from forklens.organisms.base import OrganismModelConfig, cache_key, pretrain_organism
from forklens.organisms.zoo import Family, Variant, register
from forklens.tasks import get_task
from forklens.tasks.arith import ArithConfig
from forklens.train.loop import TrainConfig
from forklens.train.sources import SFTSource


def _pretrain_default() -> TrainConfig:
    return TrainConfig(max_steps=600, learning_rate=3e-3, warmup_steps=50, lr_schedule="cosine",
                       micro_batch_size=256, weight_decay=0.01)


@dataclass
class OrganismConfig:
    task: str = field("arith", help="Built-in task the organism is pretrained on.")
    arith: ArithConfig = field(default_factory=ArithConfig, help="Arithmetic task settings.")
    model: OrganismModelConfig = field(default_factory=OrganismModelConfig, help="Model size.")
    pretrain: TrainConfig = field(default_factory=_pretrain_default, help="Pretraining (SFT) settings.")
    batch_size: int = field(64, ge=1, help="Teacher traces per pretraining step.")
    seed: int = field(0, help="Seed of the initialisation and the teacher traces.")


def organism_key(cfg: OrganismConfig) -> str:
    return cache_key({"config": asdict(cfg)})


def build_base_organism(cfg: OrganismConfig, out_dir: str | Path, use_cache: bool = True,
                        progress: bool = True) -> dict:
    """Pretrain (or fetch from the cache) the base arith organism; save it to ``out_dir`` in HF format.

    Returns an info dict: cache key, whether the cache was used, pretraining steps, FLOPs, wall time.
    """
    task = get_task(cfg.task, cfg.arith)
    source = SFTSource(lambda rng, n: [task.teacher_example(rng) for _ in range(n)], cfg.batch_size, cfg.seed)
    return pretrain_organism(organism_key(cfg), task.alphabet, cfg.model, replace(cfg.pretrain, seed=cfg.seed),
                             source, asdict(cfg), out_dir, seed=cfg.seed, use_cache=use_cache,
                             progress=progress, name="pretrain base")


ARITH = register(Family(
    name="arith",
    summary="Fixed-width addition; the noisy teacher drops the carry at a planted binary fork.",
    can_show="That forklens's diff, intervention and trainers recover a planted fork (consistency checks); "
    "method comparisons that could go either way on it (FLOPs to a target, the cost of a bug).",
    cannot_show="Whether RL only re-ranks forks already in the base: the base's errors are the teacher's coin, "
    "so every fork is binary, in the top-2 and at H(0.6, 0.4) by construction.",
    config=OrganismConfig, build=build_base_organism, task=lambda cfg: get_task(cfg.task, cfg.arith),
    claims=("E026",),
    variants={
        "planted": Variant("consistency", "The teacher writes carry 0 instead of 1 with probability 0.6 "
                           "(one binary fork per carry; the right branch is the base's second choice)."),
    },
))
