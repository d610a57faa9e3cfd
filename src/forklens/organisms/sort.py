"""The `sort` family (E019, arXiv 2605.03871): a noisy sorter whose own guesses can serve as a rubric.

The base is a tiny Llama pretrained on the noisy sort teacher (:mod:`forklens.tasks.sort`): it sorts 6
digits, but each teacher position is a random digit with probability ``task.p_noise``, so the base's
answers are partly wrong in ways that are its own. The true utility (fraction of correct positions) is
known exactly, so a reward's pair accuracy and the utility of the policy it trains can both be measured.

Variants: ``noisy`` (the precondition of trained rubrics: the base's most likely digit is usually right,
so rubrics written from its guesses carry information a temporal contrast can select) and
``uninformed`` (a teacher that writes random digits: the base knows nothing about the answer, so no
rubric it writes can carry information; the control of the organism itself).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from forklens.config import field
from forklens.organisms.base import OrganismModelConfig, cache_key, pretrain_organism
from forklens.organisms.zoo import Family, Variant, register
from forklens.tasks.sort import SortConfig, SortTask
from forklens.train.loop import TrainConfig
from forklens.train.sources import SFTSource

TEACHER = ("n_digits", "prompt_end", "p_noise")


def _model_default() -> OrganismModelConfig:
    return OrganismModelConfig(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                               max_position_embeddings=32)


def _pretrain_default() -> TrainConfig:
    return TrainConfig(max_steps=150, learning_rate=3e-3, warmup_steps=30, lr_schedule="cosine",
                       micro_batch_size=64, weight_decay=0.01, save_every=0)


@dataclass
class SortOrganismConfig:
    task: SortConfig = field(default_factory=SortConfig, help="The sort task and its noisy teacher.")
    model: OrganismModelConfig = field(default_factory=_model_default, help="Model size.")
    pretrain: TrainConfig = field(default_factory=_pretrain_default, help="Pretraining (SFT on noisy sorts).")
    batch_size: int = field(64, ge=1, help="Teacher examples per pretraining step.")
    seed: int = field(0, help="Seed of the initialisation and the pretraining examples.")


def sort_organism_key(cfg: SortOrganismConfig) -> str:
    teacher = {k: getattr(cfg.task, k) for k in TEACHER}
    return cache_key({"family": "sort", "teacher": teacher, "model": asdict(cfg.model),
                      "pretrain": asdict(cfg.pretrain), "batch_size": cfg.batch_size, "seed": cfg.seed})


def build_sort_organism(cfg: SortOrganismConfig, out_dir: str | Path, use_cache: bool = True,
                        progress: bool = True) -> dict:
    """The sort base organism: SFT from scratch on the noisy teacher (cached)."""
    task = SortTask(cfg.task)
    source = SFTSource(lambda rng, n: [task.teacher_example(rng) for _ in range(n)], cfg.batch_size, cfg.seed)
    return pretrain_organism(sort_organism_key(cfg), task.alphabet, cfg.model, replace(cfg.pretrain, seed=cfg.seed),
                             source, asdict(cfg), out_dir, seed=cfg.seed, use_cache=use_cache, progress=progress,
                             name="pretrain sort")


SORT = register(Family(
    name="sort",
    summary="Sort 6 digits after SFT on a noisy teacher (30% random digits); true utility = fraction of "
    "correct positions; the policy's own guesses can be written as (position, digit) rubric checks.",
    can_show="Whether rubrics of concrete checks, written by a generator trained on a temporal contrast and "
    "scored by a weak judge that cannot sort, train a better policy than a Bradley-Terry reward model with a "
    "higher pair accuracy (E019), with frozen-generator and shuffled-order controls.",
    cannot_show="Rubrics in natural language, judges that understand them, or the paper's scale (an 8B "
    "generator, a 1.7B judge, Tulu-3 prompts); the generator here can only write (position, digit) checks.",
    config=SortOrganismConfig, build=build_sort_organism, task=lambda cfg: SortTask(cfg.task),
    claims=("E019",),
    variants={
        "noisy": Variant("precondition", "The base's most likely digit is usually right, so rubrics written from "
                         "its own guesses carry information a temporal contrast can select."),
        "uninformed": Variant("control", "The teacher writes random digits: the base knows nothing of the answer, "
                              "so no rubric it writes can carry information about it.", ("task.p_noise=1.0",)),
    },
))
