"""The `lengths` family (E009: silent SFT bugs) and the `curriculum` family (E048: reverse-perplexity
curriculum), both on repeated addition of a digit to a two-digit number with a variable number of steps
(:mod:`forklens.tasks.lengths`).

The base is a tiny Llama pretrained on a teacher that never carries, so the expert (gold) traces,
which carry, hold a skill the base does not contain and SFT on them is far from saturation in one
epoch. ``lengths/varied`` has 1-11 steps (responses of 16-126 tokens); ``lengths/equal`` has 6 steps
only (71 tokens each, the same mean), where the mean-of-means loss equals the global token mean. Both
share one base organism (the teacher's chains have 1-11 steps in both), so they differ only in the
problems.
The `curriculum` family reuses the two tasks as heterogeneous vs homogeneous difficulty.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from forklens.config import field
from forklens.organisms.base import OrganismModelConfig, cache_key, pretrain_organism
from forklens.organisms.zoo import Family, Variant, register
from forklens.tasks.lengths import LengthsConfig, LengthsTask
from forklens.train.loop import TrainConfig
from forklens.train.sources import SFTSource

EQUAL = ("task.min_steps=6", "task.max_steps=6")  # the mean step count of 1..11: same mean trace length


def _model_default() -> OrganismModelConfig:
    return OrganismModelConfig(num_hidden_layers=2, max_position_embeddings=160)


def _pretrain_default() -> TrainConfig:
    return TrainConfig(max_steps=600, learning_rate=3e-3, warmup_steps=50, lr_schedule="cosine",
                       micro_batch_size=64, weight_decay=0.01)


@dataclass
class LengthsOrganismConfig:
    task: LengthsConfig = field(default_factory=LengthsConfig, help="Repeated addition and its teacher.")
    model: OrganismModelConfig = field(default_factory=_model_default, help="Model size.")
    pretrain: TrainConfig = field(default_factory=_pretrain_default, help="Pretraining (SFT on teacher traces).")
    batch_size: int = field(64, ge=1, help="Teacher traces per pretraining step.")
    seed: int = field(0, help="Seed of the initialisation and the teacher traces.")


TEACHER_FIELDS = ("teacher_min_steps", "teacher_max_steps", "p_carry", "p_slip", "test_fraction")


def teacher_key(family: str, cfg, fields: tuple[str, ...] = TEACHER_FIELDS) -> str:
    """The cache key: only what pretraining reads (the teacher's settings, model, recipe, seed), so
    variants that differ only in their problems (``varied`` / ``equal``) share one base organism."""
    teacher = {k: getattr(cfg.task, k) for k in fields}
    return cache_key({"family": family, "teacher": teacher, "model": asdict(cfg.model),
                      "pretrain": asdict(cfg.pretrain), "batch_size": cfg.batch_size, "seed": cfg.seed})


def lengths_organism_key(cfg: LengthsOrganismConfig) -> str:
    return teacher_key("lengths", cfg)


def pretrain_on_teacher(task, key: str, cfg, out_dir: str | Path, use_cache: bool = True, progress: bool = True,
                        name: str = "pretrain", tokenizer=None) -> dict:
    """Pretrain (or fetch from the cache) a base organism on ``task``'s teacher traces (``tokenizer``: None
    for the char tokenizer of ``task.alphabet``)."""
    source = SFTSource(lambda rng, n: [task.teacher_example(rng) for _ in range(n)], cfg.batch_size, cfg.seed)
    return pretrain_organism(key, task.alphabet, cfg.model, replace(cfg.pretrain, seed=cfg.seed), source, asdict(cfg),
                             out_dir, seed=cfg.seed, use_cache=use_cache, progress=progress, name=name,
                             tokenizer=tokenizer)


def build_lengths_organism(cfg: LengthsOrganismConfig, out_dir: str | Path, use_cache: bool = True,
                           progress: bool = True) -> dict:
    """The lengths base organism: pretrained on the never-carrying teacher's traces."""
    return pretrain_on_teacher(LengthsTask(cfg.task), lengths_organism_key(cfg), cfg, out_dir, use_cache, progress,
                               name="pretrain lengths")


def lengths_task(cfg: LengthsOrganismConfig) -> LengthsTask:
    return LengthsTask(cfg.task)


LENGTHS = register(Family(
    name="lengths",
    summary="Repeated addition of a digit, 1-11 steps; the base's teacher never carries, the expert does.",
    can_show="Whether a loss-normalisation or accumulation bug costs SFT accuracy when trained-token counts "
    "vary 8x across traces and SFT has a skill to teach (carrying) that the base lacks.",
    cannot_show="Effects of sequence packing, of multi-rank data parallelism or of chains beyond 126 tokens; "
    "how a bug's cost scales with model size (one tiny model).",
    config=LengthsOrganismConfig, build=build_lengths_organism, task=lengths_task, claims=("E009",),
    variants={
        "varied": Variant("precondition", "1-11 steps (responses of 16-126 tokens, mean 71): micro-batches hold "
                          "different token counts, so a mean of per-micro-batch means reweights tokens."),
        "equal": Variant("control", "6 steps only (every response 71 tokens): the mean of equal-count micro-batch "
                         "means is the global token mean, so the mean-of-means bug cannot act.", EQUAL),
    },
))

CURRICULUM = register(Family(
    name="curriculum",
    summary="The lengths organisms as a difficulty mix for one-epoch SFT curricula (reverse perplexity).",
    can_show="Whether ordering one epoch of expert traces from high to low initial perplexity beats a shuffled "
    "epoch when difficulty (steps, carries) varies from trivial to hard.",
    cannot_show="Multi-epoch curricula, or difficulty that perplexity does not reflect (every hard trace here "
    "is also long and carry-dense, so perplexity and difficulty are aligned by construction).",
    config=LengthsOrganismConfig, build=build_lengths_organism, task=lengths_task, claims=("E048",),
    variants={
        "mixed": Variant("precondition", "1-11 steps: initial perplexity of expert traces ranges from "
                         "carry-free chains (the base writes them) to long chains with many carries."),
        "uniform": Variant("control", "6 steps only: difficulty varies only with the number of carries, so a "
                           "perplexity order has little to sort.", EQUAL),
    },
))
