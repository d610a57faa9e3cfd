"""The `shortcut` family (E081 premature confidence, E079 MaR): repeated addition with an answer cue in
the prompt (:mod:`forklens.tasks.shortcut`); the base's teacher sometimes answers with the cue."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from forklens.config import field
from forklens.organisms.base import OrganismModelConfig
from forklens.organisms.lengths import TEACHER_FIELDS, _model_default, _pretrain_default, pretrain_on_teacher, teacher_key
from forklens.organisms.zoo import Family, Variant, register
from forklens.tasks.shortcut import ShortcutConfig, ShortcutTask
from forklens.train.loop import TrainConfig


PREMATURE = ("task.p_premature=0.3",)


@dataclass
class ShortcutOrganismConfig:
    task: ShortcutConfig = field(default_factory=ShortcutConfig, help="Cued repeated addition and its teacher.")
    model: OrganismModelConfig = field(default_factory=_model_default, help="Model size.")
    pretrain: TrainConfig = field(default_factory=_pretrain_default, help="Pretraining (SFT on teacher traces).")
    batch_size: int = field(64, ge=1, help="Teacher traces per pretraining step.")
    seed: int = field(0, help="Seed of the initialisation and the teacher traces.")


def shortcut_key(cfg: ShortcutOrganismConfig) -> str:
    """The base's cache key; ``p_premature`` enters it only when set, so the bases of the variants
    without premature answers (``cue``, ``no-cue``) keep the keys they had before it existed."""
    premature = ("p_premature",) if cfg.task.p_premature else ()
    return teacher_key("shortcut", cfg, TEACHER_FIELDS + ("p_cue", "p_guess") + premature)


def build_shortcut_organism(cfg: ShortcutOrganismConfig, out_dir: str | Path, use_cache: bool = True,
                            progress: bool = True) -> dict:
    """A base pretrained on the never-carrying teacher, which answers with the cue with probability p_guess
    (after its chain) and p_premature (before any step)."""
    return pretrain_on_teacher(ShortcutTask(cfg.task), shortcut_key(cfg), cfg, out_dir, use_cache, progress,
                               name="pretrain shortcut")


SHORTCUT = register(Family(
    name="shortcut",
    summary="Repeated addition whose prompt holds an answer cue (right 80% of the time); the base sometimes copies it.",
    can_show="Whether outcome-only RL settles on answering from a surface cue before (or instead of) reasoning, "
    "and whether premature-confidence shaping or MaR's process terms catch right answers with wrong steps.",
    cannot_show="Shortcuts the model must discover by itself (the base's teacher copies the cue), or subtle "
    "cues: this one is a literal copy of the answer. A guess after a full chain is hardly learned by a tiny "
    "base (`cue` at hidden 64); the `premature` variants put the guess before the chain instead.",
    config=ShortcutOrganismConfig, build=build_shortcut_organism, task=lambda cfg: ShortcutTask(cfg.task),
    claims=("E081", "E079"),
    variants={
        "cue": Variant("precondition", "The cue equals the answer with probability 0.8: copying it beats the "
                       "base's never-carrying chain at every length, and right answers can come with wrong steps."),
        "no-cue": Variant("control", "The same prompt format, but the cue never equals the answer: copying it scores "
                          "0 and only the chain can be right.", ("task.p_cue=0.0",)),
        "premature": Variant("precondition", "As `cue`, but the teacher answers with the cue before any step 30% of "
                             "the time (p_premature 0.3), so the base samples answering from the prompt before "
                             "reasoning.", PREMATURE),
        "premature-no-cue": Variant("control", "The `premature` teacher on `no-cue` prompts: the base answers before "
                                    "reasoning as often, but the cue is never the answer, so guessing scores 0.",
                                    (*PREMATURE, "task.p_cue=0.0")),
    },
))
