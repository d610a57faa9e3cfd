"""The `skills` family (E078 SkillOpt, arXiv 2605.23904; E088 SIA, arXiv 2605.27276): a frozen executor
that follows rule lines in its context (:mod:`forklens.tasks.rules`), and the proposer of skill edits.

``executor`` (precondition) is pretrained under both harnesses on rule lines that decide the answer, so
the right lines in context make it succeed, a free slot mostly takes its default (a non-default target
then fails) and the end mark comes with probability 4% whatever the lines say. ``deaf`` (control) is
pretrained on the same prompts, but its teacher's answer ignores the lines shown: a skill has nothing to
act on there.

The proposer (:func:`propose_edits`) stands in for SkillOpt's optimizer LLM. It knows the rule language
(what each slot does) but not the target; it reads the executor's failing rollouts on a training
minibatch and diagnoses each failure slot by slot: wrong brackets name the format the answer shows;
the right digits in the wrong order ask for another order (guessed: it cannot read the order off one
answer); wrong digit values, when one shift maps the executor's digits onto the answer's, name the map
that adds it (when that map is a rule). Candidate edits are ranked by how many failures support them (failure fixes first), with
a share ``p_noise`` replaced by random edits (an optimiser's wrong guesses); edits the gate rejected
before are not proposed again.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from forklens.config import field
from forklens.organisms.base import OrganismModelConfig
from forklens.organisms.lengths import pretrain_on_teacher, teacher_key
from forklens.organisms.zoo import Family, Variant, register
from forklens.tasks.rules import SLOTS, RulesConfig, RulesTask, effective_rules, parse_line, rule_vocabulary, split_answer
from forklens.train.loop import TrainConfig
from forklens.train.skill_opt import Edit

RULES_TEACHER_FIELDS = ("n_digits", "p_rule", "p_mask", "p_repeat", "p_free", "p_mark", "p_follow", "harnesses")


def _model_default() -> OrganismModelConfig:
    return OrganismModelConfig(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                               max_position_embeddings=64)


def _pretrain_default() -> TrainConfig:
    return TrainConfig(max_steps=2000, learning_rate=3e-3, warmup_steps=100, lr_schedule="cosine",
                       micro_batch_size=64, weight_decay=0.01)


@dataclass
class SkillsOrganismConfig:
    task: RulesConfig = field(default_factory=RulesConfig, help="The rules task and its teacher.")
    model: OrganismModelConfig = field(default_factory=_model_default, help="Model size.")
    pretrain: TrainConfig = field(default_factory=_pretrain_default, help="Pretraining (SFT on teacher traces).")
    batch_size: int = field(64, ge=1, help="Teacher traces per pretraining step.")
    seed: int = field(0, help="Seed of the initialisation and the teacher traces.")


def build_skills_organism(cfg: SkillsOrganismConfig, out_dir: str | Path, use_cache: bool = True,
                          progress: bool = True) -> dict:
    """The executor: pretrained from scratch on the rules teacher under both harnesses (cached)."""
    key = teacher_key("skills", cfg, RULES_TEACHER_FIELDS)
    return pretrain_on_teacher(RulesTask(cfg.task), key, cfg, out_dir, use_cache, progress, name="pretrain skills")


def _set_edit(skill: list[str], slot: str, value: str) -> Edit:
    """Set ``slot`` to ``value``: replace the slot's last line, or append a line."""
    text = f"{slot}={value}"
    for i in range(len(skill) - 1, -1, -1):
        parsed = parse_line(skill[i])
        if parsed is not None and parsed[0] == slot:
            return Edit("replace", i, text)
    return Edit("add", len(skill), text)


def diagnose(skill: list[str], output: str, answer: str, rng: random.Random) -> list[tuple[str, str]]:
    """(slot, value) fixes one failing rollout suggests (see the module docstring)."""
    got_digits, got_fmt, _ = split_answer(output)
    want_digits, want_fmt, _ = split_answer(answer)
    current = effective_rules(skill)
    fixes = []
    if got_fmt != want_fmt:
        fixes.append(("f", want_fmt))
    if got_digits.isdigit() and len(got_digits) == len(want_digits) and got_digits != want_digits:
        if sorted(got_digits) == sorted(want_digits):
            order = current["o"] or "k"
            fixes.append(("o", rng.choice([v for v in SLOTS["o"] if v != order])))
        else:
            shifts = [k for k in range(1, 10)
                      if sorted(str((int(d) + k) % 10) for d in got_digits) == sorted(want_digits)]
            value = str((int(current["m"] or "0") + shifts[0]) % 10) if shifts else ""
            if value and value in SLOTS["m"]:
                fixes.append(("m", value))
    return fixes


def random_edit(skill: list[str], rng: random.Random) -> Edit:
    """A random edit: set a random slot to a random value, or delete a random line."""
    if skill and rng.random() < 0.25:
        return Edit("delete", rng.randrange(len(skill)))
    line = rng.choice(rule_vocabulary())
    return _set_edit(skill, line[0], line[2])


def propose_edits(skill: list[str], rejected: Sequence[Edit], rng: random.Random, failures: Sequence[tuple[str, str]],
                  p_noise: float = 0.3) -> list[Edit]:
    """Candidate edits, best first, from ``failures`` ((executor output, answer) pairs): one per distinct
    diagnosed fix, ranked by support, each replaced by a random edit with probability ``p_noise``, at most one
    edit per existing line; in the order :func:`~forklens.train.skill_opt.apply_edits` applies them (every
    prefix of the list, as an edit budget takes, is valid)."""
    votes: Counter = Counter()
    for output, answer in failures:
        for fix in diagnose(skill, output, answer, rng):
            votes[fix] += 1
    seen = set(rejected)
    out: list[Edit] = []
    for (slot, value), _ in votes.most_common():
        edit = random_edit(skill, rng) if rng.random() < p_noise else _set_edit(skill, slot, value)
        if edit in seen or any(e.index == edit.index and e.op != "add" for e in out if edit.op != "add"):
            continue
        seen.add(edit)
        out.append(edit)
    if not out and failures:  # nothing diagnosed: one exploratory edit
        out.append(random_edit(skill, rng))
    return sequence_edits(len(skill), out)


def sequence_edits(n_lines: int, edits: Sequence[Edit]) -> list[Edit]:
    """``edits`` written against a skill of ``n_lines`` lines, rewritten so that each refers to the skill as
    the earlier ones leave it (what :func:`~forklens.train.skill_opt.apply_edits` expects): an ``add``
    appends, a ``replace`` / ``delete`` follows its line past earlier deletes, and an edit of a line an
    earlier edit deleted is dropped."""
    alive: list[int | None] = list(range(n_lines))  # current position -> original line (None: added)
    out = []
    for e in edits:
        if e.op == "add":
            out.append(Edit("add", len(alive), e.text))
            alive.append(None)
        elif e.index in alive:
            pos = alive.index(e.index)
            out.append(Edit(e.op, pos, e.text))
            if e.op == "delete":
                alive.pop(pos)
    return out


def skills_task(cfg: SkillsOrganismConfig) -> RulesTask:
    return RulesTask(cfg.task)


SKILLS = register(Family(
    name="skills",
    summary="A frozen executor of rule lines (order, digit map, format) under two harnesses; a 4% end mark no "
    "rule controls.",
    can_show="Whether a skill (rule lines) optimised by bounded, gated edits under one harness works unchanged under "
    "another, against gate-off, unbounded-edit, random and masked controls (E078); whether weight updates reach a "
    "behaviour that no scaffold edit can, at matched scorer calls, and tie where the scaffold suffices (E088).",
    cannot_show="Natural-language skills or an LLM optimiser (the proposer diagnoses failures with the rule "
    "language built in); harnesses that differ in more than template text; transfer to an executor never "
    "pretrained on the second harness (both harnesses are in pretraining by construction).",
    config=SkillsOrganismConfig, build=build_skills_organism, task=skills_task, claims=("E078", "E088"),
    variants={
        "executor": Variant("precondition", "The answer follows the lines in context under either harness; free "
                            "slots mostly default, so a non-default target fails without the right skill."),
        "executor-adjacent": Variant("precondition", "Harnesses A and C (C: the skill before the input as in A, with "
                                     "B's delimiters), so the input sits next to the answer in both: added after "
                                     "the executor followed its own lines under B on only a fifth of the inputs.",
                                     ("task.harnesses=AC",)),
        "deaf": Variant("control", "Same prompts, but the teacher's answer ignores the lines shown: a skill has "
                        "nothing to act on.", ("task.p_follow=0.0",)),
        "adjacent-deaf": Variant("control", "`executor-adjacent` (harnesses A and C) whose teacher ignores the lines "
                                 "shown: the control of the base the measured skills run used; added before it "
                                 "was built.", ("task.harnesses=AC", "task.p_follow=0.0")),
    },
))
