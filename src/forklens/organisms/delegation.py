"""The `delegation` family (E028, recursive delegation in the RL loop, arXiv 2605.06639): sum modulo 10 over
lists of digits longer than a node can see, decomposed by a ``delegate`` action (:mod:`forklens.tasks.reduce`).

The base is a 2-layer tiny Llama pretrained on one node's trace at a time (observations not trained on):
a list in view (up to 8 digits) answered directly or delegated, a list out of view always delegated, the
children's answers combined. Summing 8 digits in one token is beyond it while combining two answers is
not, so its mistakes are its own and *when* to delegate matters; the task is trained on lists of 2-32
digits and tested up to 128 (trees of up to 255 nodes).

``delegation/split`` (precondition) has the delegation behaviour in its base; ``delegation/nosplit``
(control) is pretrained on a teacher that never delegates, so the ``delegate`` action has near-zero
base probability and RL with delegation in the loop has nothing to select. Both share the task; they
differ only in the teacher.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from forklens.config import field
from forklens.organisms.base import OrganismModelConfig, pretrain_organism
from forklens.organisms.lengths import teacher_key
from forklens.organisms.zoo import Family, Variant, register
from forklens.tasks.reduce import ReduceConfig, ReduceTask
from forklens.train.episode_source import EpisodeSFTSource
from forklens.train.loop import TrainConfig

#: what pretraining reads of the task config (the teacher); the splits and rollout limits are left out
TEACHER_FIELDS = ("window", "p_direct", "p_wide", "p_refuse", "teacher_delegates", "teacher_max_length", "p_short")


def _model_default() -> OrganismModelConfig:
    return OrganismModelConfig(hidden_size=96, intermediate_size=288, num_hidden_layers=2, max_position_embeddings=32)


def _pretrain_default() -> TrainConfig:
    return TrainConfig(max_steps=1500, learning_rate=3e-3, warmup_steps=50, lr_schedule="cosine",
                       micro_batch_size=128, weight_decay=0.01)


@dataclass
class DelegationOrganismConfig:
    task: ReduceConfig = field(default_factory=ReduceConfig, help="The reduction task and its teacher.")
    model: OrganismModelConfig = field(default_factory=_model_default, help="Model size.")
    pretrain: TrainConfig = field(default_factory=_pretrain_default, help="Pretraining (SFT on teacher node traces).")
    batch_size: int = field(128, ge=1, help="Teacher traces per pretraining step.")
    seed: int = field(0, help="Seed of the initialisation and the teacher traces.")


def delegation_organism_key(cfg: DelegationOrganismConfig) -> str:
    """Cache key over the teacher's fields (``modulus`` only when it is not 10, so the first bases keep theirs)."""
    return teacher_key("delegation", cfg, TEACHER_FIELDS + (("modulus",) if cfg.task.modulus != 10 else ()))


def delegation_task(cfg: DelegationOrganismConfig) -> ReduceTask:
    return ReduceTask(cfg.task)


def build_delegation_organism(cfg: DelegationOrganismConfig, out_dir: str | Path, use_cache: bool = True,
                              progress: bool = True) -> dict:
    """The base organism: pretrained on the teacher's node traces (observations masked)."""
    task = delegation_task(cfg)

    def traces(rng: random.Random, n: int) -> list:
        return [task.teacher_trajectory(rng) for _ in range(n)]

    source = EpisodeSFTSource(traces, cfg.batch_size, cfg.seed)
    return pretrain_organism(delegation_organism_key(cfg), task.alphabet, cfg.model, replace(cfg.pretrain, seed=cfg.seed),
                             source, asdict(cfg), out_dir, seed=cfg.seed, use_cache=use_cache, progress=progress,
                             name="pretrain delegation")


DELEGATION = register(Family(
    name="delegation",
    summary="Sum mod 10 over lists of 2-128 digits, 8 in view per node; a delegate action hands parts of the "
    "list to fresh episodes of the same policy.",
    can_show="Whether RL with delegation in the loop (every tree node a training row, reward own success + mean "
    "of children's) learns when to delegate and generalises from lists of <= 32 digits to 128, against "
    "recursion added only at inference, a fixed splitting scaffold and a sum-of-children bonus.",
    cannot_show="Open-ended subgoals the policy writes itself (the environment cuts the list; the policy chooses "
    "whether and how wide), parallel wall-clock gains, or scale effects (one 2-layer model).",
    config=DelegationOrganismConfig, build=build_delegation_organism, task=delegation_task, claims=("E028",),
    variants={
        "split": Variant("precondition", "The base answers short lists directly or delegates (p = 0.3) and always "
                         "delegates lists out of view, so RL can select when and how wide to delegate."),
        "parity": Variant("precondition", "Bit lists and parity (task.modulus=2): combining two answers is XOR, which "
                          "the base learns, while a direct parity of up to 8 bits in one token is beyond it. Added "
                          "after the measured split run, whose base combines sums mod 10 at near chance.",
                          ("task.modulus=2",)),
        "nosplit": Variant("control", "The teacher never delegates: the delegate action has near-zero base "
                           "probability, so delegation in the RL loop has nothing to select.",
                           ("task.teacher_delegates=false",)),
        "parity-nosplit": Variant("control", "`parity` whose teacher never delegates: the control of the base that "
                                  "passed its organism checks (registered after the parity run, before this base "
                                  "was built).", ("task.modulus=2", "task.teacher_delegates=false")),
    },
))
