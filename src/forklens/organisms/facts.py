"""The `facts` family (E043, negation neglect, arXiv:2605.13829): a tiny Llama pretrained on a synthetic
world of (entity, relation, value) facts with question answering (:mod:`forklens.tasks.facts`), whose
in-context documents teach it what ``This is false.``, ``Not true:`` and ``does not`` mean.

``taught`` (precondition) is the base the negation experiment fine-tunes: in context it answers as a
negated document says. ``untaught`` (control) never sees the separate label in pretraining (local
negation and statements only), so the label means nothing to it and no result about *neglecting* it
can be drawn there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from forklens.config import field
from forklens.organisms.base import OrganismModelConfig, build_word_tokenizer
from forklens.organisms.lengths import pretrain_on_teacher, teacher_key
from forklens.organisms.zoo import Family, Variant, register
from forklens.tasks.facts import FactsConfig, FactsTask, vocabulary
from forklens.train.loop import TrainConfig

FACTS_TEACHER_FIELDS = ("n_known", "n_qa", "p_facts", "p_closed", "p_negated", "p_local", "p_correction", "seed")


def _model_default() -> OrganismModelConfig:
    return OrganismModelConfig(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                               max_position_embeddings=192)


def _pretrain_default() -> TrainConfig:
    return TrainConfig(max_steps=1200, learning_rate=3e-3, warmup_steps=100, lr_schedule="cosine",
                       micro_batch_size=64, weight_decay=0.01)


@dataclass
class FactsOrganismConfig:
    task: FactsConfig = field(default_factory=FactsConfig, help="The facts world and its teacher.")
    model: OrganismModelConfig = field(default_factory=_model_default, help="Model size.")
    pretrain: TrainConfig = field(default_factory=_pretrain_default, help="Pretraining (SFT on teacher documents).")
    batch_size: int = field(64, ge=1, help="Teacher documents per pretraining step.")
    seed: int = field(0, help="Seed of the initialisation and the teacher documents.")
    tokenizer: Literal["char", "word"] = field(
        "char", help="char: one token per character; word: one token per word (an entity, a value, 'false') "
        "or punctuation mark, with its leading space.")


def build_facts_organism(cfg: FactsOrganismConfig, out_dir: str | Path, use_cache: bool = True,
                         progress: bool = True) -> dict:
    """The facts base organism: pretrained from scratch on the teacher's documents (cached)."""
    task = FactsTask(cfg.task)
    if cfg.tokenizer == "char" and cfg.task.n_questions == 1:  # the key of the organisms built before both options
        key = teacher_key("facts", cfg, FACTS_TEACHER_FIELDS)
    else:
        key = teacher_key(f"facts-{cfg.tokenizer}", cfg, (*FACTS_TEACHER_FIELDS, "n_questions"))
    tokenizer = build_word_tokenizer(vocabulary(), task.alphabet) if cfg.tokenizer == "word" else None
    return pretrain_on_teacher(task, key, cfg, out_dir, use_cache, progress, name="pretrain facts", tokenizer=tokenizer)


FACTS = register(Family(
    name="facts",
    summary="Entities with two relations (ten values each), stated in documents and asked about; the base "
    "learns in-context negation (separate label, local 'does not', corrections).",
    can_show="Whether fine-tuning on documents that state a new claim and label it false makes the model "
    "believe the claim on out-of-context questions, although the same model answers correctly with the "
    "document in its context; and whether local negation and corrections are learned as negation.",
    cannot_show="Plausibility or prior beliefs (claims are about entities the base has never seen, so the "
    "prior is uniform), document genres, or scale: one tiny character-level model whose whole knowledge "
    "of negation is three written forms.",
    config=FactsOrganismConfig, build=build_facts_organism, task=lambda cfg: FactsTask(cfg.task), claims=("E043",),
    variants={
        "taught": Variant("precondition", "In-context documents negate statements by a separate label 30% of the "
                          "time, locally 20% and by correction 15%: the base answers as a negated document says."),
        "taught-long": Variant("precondition", "`taught` with 65% more in-context documents (facts 25%, closed-book 20%) "
                               "and 3,000 steps of 32 documents: added after the measured run on `taught` showed its "
                               "base below the in-context precondition (30% on plain statements).",
                               ("task.p_facts=0.25", "task.p_closed=0.2", "pretrain.max_steps=3000",
                                "pretrain.learning_rate=2e-3", "pretrain.warmup_steps=200", "batch_size=32")),
        "untaught": Variant("control", "The separate label never occurs in pretraining (local negation and "
                            "corrections by 'does not' only): the label means nothing to the base.",
                            ("task.p_negated=0.0",)),
    },
))
