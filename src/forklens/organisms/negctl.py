"""The `negctl` family: (base, tuned) pairs on which forklens must say "no" (and one on which it must
say "yes", built the same way).

The base is the planted arith organism (:mod:`forklens.tasks.arith`) with a tokenizer that also holds
a letter notation for digits (:mod:`forklens.tasks.arith_notation`); the tuned model is the base
fine-tuned by SFT on gold traces, not by RL:

``notation`` (negative control)
    gold traces written in letters, which the base never emits: the tuned model's behaviour is not
    in the base at all, so ``forklens diff`` must call its changes *shifted* (RL token beyond the base
    top-5) and the oracle intervention (RL token emitted only where it is in the base top-5) must
    recover little of the gain;
``unreachable`` (negative control, a measurement)
    the teacher always drops the carry (``p_drop_carry = 1``), so the right carry has near-zero base
    probability; tuned on gold digit traces. In a 14-character vocabulary a near-zero-probability
    token can still be rank 2, so whether forklens says "shifted" here is measured, not built in;
``notation-strict`` (negative control of a method trained from the base)
    the ``notation-long`` pair with a verifier that rewards only answers written in letters: a method
    that trains from the base against the verifier (GRPO, fork-contrast) starts where the right
    behaviour has near-zero probability, so a method that only reweights the base's own branches
    (fork-contrast) has nothing to reweight;
``same-notation`` (consistency)
    gold traces in digits from the same base as ``notation``: the planted binary fork fixed by SFT,
    where forklens must say "reranked" and the oracle must recover the gain.

:func:`build_negctl_base` builds (and caches) the base; :func:`tune_negctl` fine-tunes it for one seed.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

from forklens.config import field
from forklens.organisms.arith import OrganismConfig
from forklens.organisms.base import cache_key, pretrain_organism
from forklens.organisms.zoo import Family, Variant, register
from forklens.policy import Policy
from forklens.runfolder import owned_rmtree
from forklens.tasks.arith_notation import NotationArithTask
from forklens.train.loop import TrainConfig
from forklens.train.run import train
from forklens.train.sources import SFTSource


def _base_default() -> OrganismConfig:
    cfg = OrganismConfig()
    cfg.model.num_hidden_layers = 2
    cfg.pretrain.max_steps = 300
    return cfg


def _tune_default() -> TrainConfig:
    return TrainConfig(max_steps=150, learning_rate=3e-3, warmup_steps=5, lr_schedule="constant",
                       micro_batch_size=256, weight_decay=0.0)


@dataclass
class NegCtlConfig:
    base: OrganismConfig = field(default_factory=_base_default, help="The base: the planted arith organism.")
    notation: Literal["digits", "letters"] = field("letters", help="Notation of the gold traces the tuned model is SFT'd on: digits or letters.")
    tune: TrainConfig = field(default_factory=_tune_default, help="SFT of the tuned model from the base.")
    tune_batch: int = field(64, ge=1, help="Gold traces per SFT step.")
    reward: Literal["either", "expert"] = field("either", help="What the verifier rewards: the right answer in "
                                                "either notation, or only in the expert notation.")


def negctl_task(cfg: NegCtlConfig) -> NotationArithTask:
    return NotationArithTask(cfg.base.arith, expert_notation=cfg.notation, reward_notation=cfg.reward)


def build_negctl_base(cfg: NegCtlConfig, out_dir: str | Path, use_cache: bool = True, progress: bool = True) -> dict:
    """Pretrain (or fetch) the base on the noisy teacher's digit traces, with the letter-aware tokenizer.

    The cache key covers the base config only, so every notation shares one base."""
    task = negctl_task(cfg)
    org = cfg.base
    source = SFTSource(lambda rng, n: [task.teacher_example(rng) for _ in range(n)], org.batch_size, org.seed)
    return pretrain_organism(cache_key({"family": "negctl", "base": asdict(org)}), task.alphabet, org.model,
                             replace(org.pretrain, seed=org.seed), source, asdict(org), out_dir, seed=org.seed,
                             use_cache=use_cache, progress=progress, name="pretrain negctl base")


def tune_negctl(cfg: NegCtlConfig, base_dir: str | Path, out_dir: str | Path, seed: int,
                progress: bool = False) -> dict:
    """SFT the base in ``base_dir`` on gold traces in ``cfg.notation`` (train split); save to ``out_dir``."""
    task = negctl_task(cfg)
    train_problems = task.problems("train")

    def gold(rng: random.Random, n: int) -> list[tuple[str, str]]:
        picks = [train_problems[rng.randrange(len(train_problems))] for _ in range(n)]
        return [(p.prompt, task.expert_response(p)) for p in picks]

    out_dir = Path(out_dir)
    work = out_dir.parent / f".{out_dir.name}-sft-tmp"
    owned_rmtree(work)
    res = train(Policy.load(base_dir), "sft", None, SFTSource(gold, cfg.tune_batch, seed), replace(cfg.tune, seed=seed),
                work, name=f"SFT ({cfg.notation})", progress=progress, model_dir=out_dir)
    info = {**res.info(), "notation": cfg.notation, "seed": seed}
    owned_rmtree(work)
    return info


NEGCTL = register(Family(
    name="negctl",
    summary="The tool's negative control: SFT teaches the base a behaviour it does not contain.",
    can_show="That forklens can say 'no': shifted tokens and an oracle intervention that recovers little when "
    "the tuned model's behaviour is outside the base (and 'yes' on the same pair built with the base's notation).",
    cannot_show="Anything about RL itself: the tuned models come from SFT on gold traces, chosen to put the "
    "behaviour outside (or inside) the base by construction.",
    config=NegCtlConfig, build=build_negctl_base, task=negctl_task,
    claims=("E026",),
    variants={
        "notation": Variant("negative-control", "Tuned by SFT on gold traces whose digits are written as letters "
                            "a-j, tokens the base never emits.", overrides=("notation=letters",)),
        "notation-long": Variant("negative-control", "`notation` with twice the SFT (300 steps): added after the measured "
                                 "run showed 150 steps leave the letter-writing model below the base on most seeds, "
                                 "so that the oracle has a gain to (fail to) recover.",
                                 overrides=("notation=letters", "tune.max_steps=300")),
        "notation-strict": Variant("negative-control", "`notation-long` whose verifier rewards only answers written in "
                                   "letters, which the base never emits: the right behaviour is outside the base for a "
                                   "method trained from it (fork-contrast, GRPO).",
                                   overrides=("notation=letters", "tune.max_steps=300", "reward=expert")),
        "unreachable": Variant("negative-control", "The base's teacher always drops the carry (p = 1), so the right "
                               "carry has near-zero base probability; tuned on gold digit traces (a measurement: "
                               "its rank may still be 2).",
                               overrides=("notation=digits", "base.arith.p_drop_carry=1.0")),
        "same-notation": Variant("consistency", "The planted base of `notation`, tuned on gold traces in digits: "
                                 "the binary carry fork fixed by SFT, where forklens must say 'reranked'.",
                                 overrides=("notation=digits",)),
    },
))
