"""The `addv` family: tiny Llamas pretrained on GOLD variable-length addition traces
(:mod:`forklens.tasks.addv`), whose mistakes are their own.

No teacher coin is planted: the base model errs because it was trained too briefly (``undertrained``),
is too small for the lengths (``capacity``) or meets lengths it never saw (``length-gen``). Where its
errors sit, how many branches compete there and whether RL's fixes lie in the base top-5 are then
measurements, not consequences of the design: this is the family on which the sparse policy
selection account (arXiv 2605.06241) can hold or fail (docs/organisms.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from forklens.config import field
from forklens.organisms.base import OrganismModelConfig, cache_key, pretrain_organism
from forklens.organisms.zoo import Family, Variant, register
from forklens.tasks.addv import AddvConfig, AddvTask
from forklens.train.loop import TrainConfig
from forklens.train.sources import SFTSource


def _pretrain_default() -> TrainConfig:
    return TrainConfig(max_steps=400, learning_rate=3e-3, warmup_steps=50, lr_schedule="cosine",
                       micro_batch_size=256, weight_decay=0.01)


def _model_default() -> OrganismModelConfig:
    return OrganismModelConfig(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                               max_position_embeddings=128)


@dataclass
class AddvOrganismConfig:
    addv: AddvConfig = field(default_factory=AddvConfig, help="Operand lengths and splits.")
    model: OrganismModelConfig = field(default_factory=_model_default, help="Model size.")
    pretrain: TrainConfig = field(default_factory=_pretrain_default, help="Pretraining (SFT on gold traces).")
    batch_size: int = field(64, ge=1, help="Gold traces per pretraining step.")
    seed: int = field(0, help="Seed of the initialisation and the traces.")


def build_addv_organism(cfg: AddvOrganismConfig, out_dir: str | Path, use_cache: bool = True,
                        progress: bool = True) -> dict:
    """Pretrain (or fetch from the cache) an addv base organism on gold traces; save it to ``out_dir``."""
    task = AddvTask(cfg.addv)
    source = SFTSource(lambda rng, n: [task.teacher_example(rng) for _ in range(n)], cfg.batch_size, cfg.seed)
    return pretrain_organism(cache_key({"family": "addv", "config": asdict(cfg)}), task.alphabet, cfg.model,
                             replace(cfg.pretrain, seed=cfg.seed), source, asdict(cfg), out_dir, seed=cfg.seed,
                             use_cache=use_cache, progress=progress, name="pretrain addv")


ADDV = register(Family(
    name="addv",
    summary="Variable-length addition pretrained on gold traces only; the base's errors are its own.",
    can_show="Whether RL's token changes sit in the base top-5 at high-entropy positions (E026 sparse "
    "selection) when nobody planted the fork: the rank, entropy and branch count at disagreements are measured.",
    cannot_show="Anything about natural-language reasoning or long chains of thought; forks are digit lookups and "
    "carries in a 14-token vocabulary, so 'top-5' covers a third of the plausible tokens.",
    config=AddvOrganismConfig, build=build_addv_organism, task=lambda cfg: AddvTask(cfg.addv),
    claims=("E026",),
    variants={
        "undertrained": Variant("precondition", "1-5 digit operands, hidden 128 x 2 layers, pretraining stopped "
                                "early (160 steps) so the base errs on its own.",
                                overrides=("pretrain.max_steps=160",)),
        "undertrained-mid": Variant("precondition", "As undertrained but pretrained for 240 steps, so the base is "
                                    "right often enough (greedy about half) for GRPO's groups to have signal.",
                                    overrides=("pretrain.max_steps=240",)),
        "length-gen": Variant("precondition", "Pretrained to convergence on 1-3 digit operands; RL and test on 1-5 "
                              "digits, so the errors are on lengths it never saw.",
                              overrides=("addv.pretrain_max_digits=3", "pretrain.max_steps=400")),
        "capacity": Variant("precondition", "A 1-layer, hidden-32 model on 1-6 digit operands, trained for the full "
                            "400 steps: errors from too little capacity.",
                            overrides=("addv.max_digits=6", "model.hidden_size=32", "model.intermediate_size=96",
                                       "model.num_hidden_layers=1", "model.num_attention_heads=2")),
    },
))
