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


#: the word-level organisms' shared settings (variants `words-pilot`, `taught-words`)
WORDS = ("tokenizer=word", "model.num_hidden_layers=3", "batch_size=32")
TAUGHT_WORDS = WORDS + ("pretrain.max_steps=1500", "task.n_questions=4", "task.p_facts=0.3", "task.p_closed=0.2")
READING = TAUGHT_WORDS + ("task.document_loss=false", "task.n_qa=90")


def build_facts_organism(cfg: FactsOrganismConfig, out_dir: str | Path, use_cache: bool = True,
                         progress: bool = True) -> dict:
    """The facts base organism: pretrained from scratch on the teacher's documents (cached)."""
    task = FactsTask(cfg.task)
    if cfg.tokenizer == "char" and cfg.task.n_questions == 1:  # the key of the organisms built before both options
        key = teacher_key("facts", cfg, FACTS_TEACHER_FIELDS)
    else:
        fields = (*FACTS_TEACHER_FIELDS, "n_questions") + (() if cfg.task.document_loss else ("document_loss",))
        key = teacher_key(f"facts-{cfg.tokenizer}", cfg, fields)
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
        "words-pilot": Variant("consistency", "Failed design 1 (kept): word-level tokens (one per entity, value, "
                               "word), 3 layers, 1,200 steps of 32 documents; pilot base below the in-context "
                               "precondition (plain statements 45%, separately negated 72%, closed book 53%).",
                               WORDS + ("pretrain.max_steps=1200",)),
        "taught-words": Variant("consistency", "Failed design 2 (kept): `words-pilot` with four questions after every "
                                "in-context document (in-context 50%, facts 30%, closed-book 20%) and 1,500 steps; "
                                "pilot base still below (statements 67%, separately negated 64%: it picks the "
                                "negated value of a two-way choice; closed book 43%).", TAUGHT_WORDS),
        "taught-reading": Variant("consistency", "`taught-words` with in-context documents as prompts (only their "
                                  "questions and answers trained); its pilot was stopped unfinished for CPU time in "
                                  "favour of `taught-reading-qa`: not built, no result.",
                                  TAUGHT_WORDS + ("task.document_loss=false",)),
        "taught-reading-qa": Variant("consistency", "Failed design 3 (kept): `taught-reading` with closed-book "
                                     "questions about 90 of the 120 known entities; pilot base: closed book 72% (the "
                                     "check passes) but separately negated 64% (a two-way choice after a negated "
                                     "statement still picks the negated value, 37%).", READING),
        "reading-8q": Variant("consistency", "`taught-reading-qa` with eight questions after every in-context "
                              "document; its pilot was stopped unfinished for CPU time in favour of `reading-deep`: "
                              "not built, no result.", READING + ("task.n_questions=8",)),
        "reading-deep": Variant("consistency", "Failed design 4 (kept): `taught-reading-qa` with 4 layers instead of "
                                "3; pilot base worse in the same 1,500 steps (statements 31%, separately negated 55%, "
                                "closed book 45%).", READING + ("model.num_hidden_layers=4",)),
        "reading-long": Variant("precondition", "`taught-reading-qa` pretrained for 3,000 steps instead of 1,500 (its "
                                "loss was still falling); the first design whose pilot base passes both organism "
                                "checks (separately negated 91%, closed book 93%).", READING + ("pretrain.max_steps=3000",)),
        "untaught": Variant("control", "The separate label never occurs in pretraining (local negation and "
                            "corrections by 'does not' only): the label means nothing to the base.",
                            ("task.p_negated=0.0",)),
        "reading-long-untaught": Variant("control", "`reading-long` whose teacher never writes the separate label "
                                         "(task.p_negated=0): the word-level control of the base the measured "
                                         "negation run used; added before it was built.",
                                         READING + ("pretrain.max_steps=3000", "task.p_negated=0.0")),
    },
))
