"""`forklens experiment sft-then-rl-zoo`: corrected SFT-then-RL vs LUFFY- and ReLIFT-style mixed-policy
methods (claim E009, arXiv 2604.23747; LUFFY arXiv 2504.14945, ReLIFT arXiv 2506.07527) on a
*precondition* organism, where SFT on expert traces does not saturate and RL has room, and on a
*control*, where SFT alone takes every method to the same ceiling.

Each side is one :func:`~forklens.experiments.sft_then_rl.run_sft_then_rl` run (its own organism, SFT
recipe and RL settings; ``precondition`` and ``control`` are full :class:`SFTThenRLConfig`s), over the
same seeds. Default precondition: ``lengths/varied`` (a base that never carries; expert traces that do,
1-11 steps; three epochs of SFT reach about a third of the validation problems). Default control: the
arithmetic organism of ``sft-then-rl --quick`` (SFT then RL, LUFFY and ReLIFT all end near 98%).

``summary.precondition`` and ``summary.control`` are the two runs' summaries (``comparison``,
``sft_only``, ``methods``, ``curves``); ``summary.contrast.plateau_difference.[<m>-sft-then-rl]`` is,
for each mixed-policy method, the paired (by seed) difference between the two organisms of that
method's plateau minus SFT-then-RL's (precondition - control): below zero when SFT-then-RL's lead is
larger where SFT does not saturate. One accuracy-vs-FLOPs plot per side.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from forklens.analysis.curves import paired_difference
from forklens.config import field
from forklens.errors import ConfigError
from forklens.experiments.sft_then_rl import (COMPARED, SFTThenRLConfig, _ci, check_sft_only, curves_of, markdown_table,
                                              organism_name, organism_task, plot, run_sft_then_rl)
from forklens.runfolder import claim_folder

SIDES = ("precondition", "control")


def _precondition_default() -> SFTThenRLConfig:
    # lengths/varied with the sft-bugs recipe (three epochs over 528 expert traces, K = 8 micro-steps)
    cfg = SFTThenRLConfig(family="lengths", variant="varied", pool_size=528, n_validation=200,
                          methods=list(COMPARED))
    sft = replace(cfg.sft, max_steps=198, learning_rate=1e-3, lr_schedule="cosine", warmup_steps=10, micro_batch_size=1)
    rl = replace(cfg.rl, sampling=replace(cfg.rl.sampling, max_new_tokens=128))
    return replace(cfg, sft=sft, sft_batch_size=8, rl=rl)


def _control_default() -> SFTThenRLConfig:
    return SFTThenRLConfig(methods=list(COMPARED))


@dataclass
class SFTThenRLZooConfig:
    precondition: SFTThenRLConfig = field(default_factory=_precondition_default,
                                          help="The run where SFT does not saturate (a zoo variant).")
    control: SFTThenRLConfig = field(default_factory=_control_default,
                                     help="The run where SFT saturates (default: the arith organism).")
    seeds: int = field(5, ge=1, help="Seeds per method on each side (overrides both sides' seeds).")
    seed: int = field(0, help="First seed (overrides both sides'); seeds are seed, seed+1, ...")


def _check(cfg: SFTThenRLZooConfig) -> None:
    for side in SIDES:
        sub = getattr(cfg, side)
        missing = set(COMPARED) - set(sub.methods)
        if missing:
            raise ConfigError(f"{side}.methods must include {', '.join(COMPARED)} (missing {sorted(missing)}): "
                              "the contrast compares them on both sides")
        check_sft_only(sub.sft_only_bugs)
        organism_task(sub)  # unknown family / variant: refused before anything is written


def plateau_contrast(pre: dict, ctrl: dict) -> dict:
    """Per mixed-policy method: paired by seed, (plateau - sft-then-rl's plateau) on the precondition
    minus the same on the control."""
    out = {}
    ref = COMPARED[0]
    for m in COMPARED[1:]:
        gap = {}
        for side, summary in (("pre", pre), ("ctrl", ctrl)):
            by_seed = {name: {r["seed"]: r["validation_plateau"] for r in summary["methods"][name]["runs"]}
                       for name in (m, ref)}
            gap[side] = {s: by_seed[m][s] - by_seed[ref][s] for s in by_seed[ref]}
        out[f"{m}-{ref}"] = paired_difference(gap["pre"], gap["ctrl"]).as_dict()
    return out


def run_sft_then_rl_zoo(cfg: SFTThenRLZooConfig, out: str | Path) -> dict:
    out = Path(out)
    _check(cfg)
    claim_folder(out, "experiment-sft-then-rl-zoo")
    seeds = [cfg.seed + k for k in range(cfg.seeds)]
    summary: dict = {"seeds": seeds, "organisms": {}}
    for side in SIDES:
        sub = replace(getattr(cfg, side), seeds=cfg.seeds, seed=cfg.seed)
        summary["organisms"][side] = organism_name(sub)
        summary[side] = run_sft_then_rl(sub, out / side)
        plot(curves_of(summary[side]), out / f"accuracy_vs_flops_{side}", organism_name(sub), formats=("png",))
    summary["contrast"] = {"plateau_difference": plateau_contrast(summary["precondition"], summary["control"]),
                           "of": "precondition - control, paired by seed"}
    summary["config"] = asdict(cfg)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "table.md").write_text(zoo_table(summary))
    return summary


def zoo_table(summary: dict) -> str:
    parts = []
    for side in SIDES:
        parts.append(f"## {side}: {summary['organisms'][side]}\n\n{markdown_table(summary[side])}")
    lines = [f"{key.removesuffix('-' + COMPARED[0])} plateau minus {COMPARED[0]}'s, {summary['contrast']['of']}: "
             f"{_ci(iv)} points" for key, iv in summary["contrast"]["plateau_difference"].items()]
    return "\n".join(parts) + "\n" + "\n".join(lines) + "\n"

