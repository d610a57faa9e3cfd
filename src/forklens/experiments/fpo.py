"""`forklens experiment fpo`: alignment collapse in iterative RLHF and FPO (E025, arXiv 2605.04266).

On the `steer` organism (:mod:`forklens.organisms.steer`: 8-token strings, a true utility U that counts
signal tokens and ignores a hack token, a bag-of-tokens reward model that starts with half the signal
weight and a slight preference for the hack token), from one cached base, for each seed and arm:
iterative RLHF (:mod:`forklens.train.rlhf`: a GRPO step on the reward model's score minus the arm's
penalty, then a Bradley-Terry refit labelled by U), ``rl.train.max_steps`` iterations.

======================= ============ ===============================================================
arm                     refit on     penalty
======================= ============ ===============================================================
``baseline``            policy       none (standard iterative RLHF)
``practical``           policy       FPO practical: gamma <g_y, g_y - g_ref>
``relaxed``             policy       FPO relaxed: the practical term times the overconfidence vs U
``l2``                  policy       gamma ||g_y - g_ref||^2 (a generic penalty of the same size)
``baseline-fixed``      reference    none
``practical-fixed``     reference    FPO practical
``relaxed-fixed``       reference    FPO relaxed
======================= ============ ===============================================================

Arms with ``refit=reference`` refit on fixed reference pairs: the refit data do not depend on the
policy, so there is no steering channel (the control). Within a seed every arm starts from the same base,
the same reward model and the same reference responses (paired comparisons).

Each final policy is evaluated on ``eval_samples`` fresh samples at temperature 1: mean true utility U
(signal tokens out of 8) and hack mass (fraction of tokens that are the hack token); the final reward
model's hack weight (relative to the neutral tokens) is read off its head. ``summary``::

    {"arms": {ARM: {"form", "refit", "per_seed": {seed: {...}}, "utility", "hack_mass", "rm_hack_weight"}},
     "diffs": {NAME: {"utility", "hack_mass", "rm_hack_weight"}},   # paired by seed, 95% bootstrap
     "curves": {ARM: [{"step", "rlhf/utility", "rlhf/hack_mass", ...}]},   # means over seeds
     "base": {"utility", "hack_mass"}, "seeds", "config"}
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from rich.console import Console

from forklens.analysis.curves import bootstrap_ci, paired_arm_diffs
from forklens.config import field
from forklens.experiments.arm_runs import begin, mean_curve, publish
from forklens.objectives.fpo import FPOConfig
from forklens.organisms.steer import (SteerOrganismConfig, build_steer_organism, initial_reward_model,
                                      reward_model_weights)
from forklens.policy import Policy
from forklens.runfolder import owned_rmtree
from forklens.tasks.steer import SteerTask
from forklens.train.loop import TrainConfig
from forklens.train.rlhf import IterativeRLHF, RLHFConfig
from forklens.train.run import RLConfig, grpo_loss, train
from forklens.train.sources import GRPOSource, SamplingConfig

console = Console(stderr=True)

ARMS: dict[str, tuple[str, str]] = {  # name -> (FPO form, refit)
    "baseline": ("none", "policy"),
    "practical": ("practical", "policy"),
    "relaxed": ("relaxed", "policy"),
    "l2": ("l2", "policy"),
    "baseline-fixed": ("none", "reference"),
    "practical-fixed": ("practical", "reference"),
    "relaxed-fixed": ("relaxed", "reference"),
}
#: paired differences reported (a - b), named a_vs_b with dashes as underscores
DIFFS: tuple[tuple[str, str], ...] = (
    ("baseline", "baseline-fixed"), ("practical", "baseline"), ("relaxed", "baseline"), ("l2", "baseline"),
    ("relaxed", "l2"), ("practical", "l2"), ("practical-fixed", "baseline-fixed"), ("relaxed-fixed", "baseline-fixed"),
)
CURVE_KEYS = ("rlhf/utility", "rlhf/hack_mass", "rlhf/rm_hack_weight", "rlhf/rm_signal_weight", "rlhf/penalty")
OUTCOMES = ("utility", "hack_mass", "rm_hack_weight")


def _rl_default() -> RLConfig:
    """40 iterations of one GRPO step (8 prompts x 8 samples) each; fixed before any measured run."""
    return RLConfig(train=TrainConfig(max_steps=40, learning_rate=1e-3, micro_batch_size=64, save_every=0),
                    sampling=SamplingConfig(prompts_per_step=8, group_size=8, max_new_tokens=10))


@dataclass
class FPOExperimentConfig:
    organism: SteerOrganismConfig = field(default_factory=SteerOrganismConfig,
                                          help="The steer organism (base, task, initial reward model).")
    rl: RLConfig = field(default_factory=_rl_default, help="GRPO settings of the policy steps (max_steps = "
                         "iterations x rlhf.policy_steps).")
    rlhf: RLHFConfig = field(default_factory=RLHFConfig, help="Iterative RLHF: refit settings and the FPO weight "
                             "(rlhf.fpo.gamma; form and refit are set per arm).")
    arms: list[str] = field(default_factory=lambda: list(ARMS), help="Arms (names of ARMS).")
    eval_samples: int = field(200, ge=1, help="Samples of each final policy (temperature 1) for U and hack mass.")
    seeds: int = field(5, ge=1, help="Seeds (overridden by --seeds).")
    seed: int = field(0, help="First seed; seeds are seed, seed+1, ...")
    artifact: str = field("", help="Also write a stamped artifact folder here (e.g. results/fpo).")


def evaluate_policy(policy: Policy, task: SteerTask, n: int, max_new_tokens: int, seed: int) -> dict[str, float]:
    """Mean true utility and hack mass of ``n`` samples at temperature 1."""
    s = policy.sample([task.config.prompt], n=n, temperature=1.0, max_new_tokens=max_new_tokens, seed=seed)
    return {"utility": statistics.fmean(task.utility(t) for t in s.texts),
            "hack_mass": statistics.fmean(task.hack_mass(t) for t in s.texts)}


def run_arm(arm: str, base_dir: Path, cfg: FPOExperimentConfig, seed: int, work: Path, progress: bool) -> dict:
    form, refit = ARMS[arm]
    org = cfg.organism
    task = SteerTask(replace(org.task, seed=seed))
    policy = Policy.load(base_dir)
    rm = initial_reward_model(policy, org, seed)
    problems = task.problems("train")
    rlhf = replace(cfg.rlhf, refit=refit, fpo=FPOConfig(form=form, gamma=cfg.rlhf.fpo.gamma))

    def probe(model, texts):
        return {"hack_mass": statistics.fmean(task.hack_mass(t) for t in texts), **reward_model_weights(model, org)}

    loop = IterativeRLHF(rm, rlhf, task.utility, [(p.prompt, p.meta["reference"]) for p in problems], seed=seed,
                         probe=probe)
    source = GRPOSource(task, problems, cfg.rl.sampling, reward_fns=[loop], seed=seed)
    res = train(policy, "grpo", grpo_loss(cfg.rl), source, replace(cfg.rl.train, seed=seed), work,
                name=f"RLHF {arm} seed {seed}", progress=progress, callbacks=[loop.callback()])
    ev = evaluate_policy(policy, task, cfg.eval_samples, cfg.rl.sampling.max_new_tokens, 10_000 + seed)
    return {**ev, **reward_model_weights(rm, org), "iterations": loop.iterations, "flops": res.flops,
            "wall_s": res.wall_s, "metrics": str(res.metrics_file)}


def summarise(per: dict[str, dict[int, dict]], seeds: list[int]) -> tuple[dict, dict]:
    arms = {}
    for arm, rows in per.items():
        if rows:
            form, refit = ARMS[arm]
            arms[arm] = {"form": form, "refit": refit,
                         "per_seed": {str(s): {k: v for k, v in r.items() if k != "metrics"} for s, r in rows.items()},
                         **{k: bootstrap_ci([r[k] for r in rows.values()]).as_dict() for k in OUTCOMES}}
    return arms, paired_arm_diffs(per, DIFFS, OUTCOMES)


def run_fpo(cfg: FPOExperimentConfig, out: str | Path, use_cache: bool = True, progress: bool = False) -> dict:
    out, seeds, stamp = begin(cfg, ARMS, out, "fpo")
    t0 = time.perf_counter()
    org = replace(cfg.organism, seed=0)  # one base for every seed and arm
    console.rule("[bold]steer base organism")
    base_info = build_steer_organism(org, out / "base", use_cache=use_cache, progress=progress)
    task = SteerTask(org.task)
    base_eval = evaluate_policy(Policy.load(out / "base"), task, cfg.eval_samples, cfg.rl.sampling.max_new_tokens,
                                10_000)
    per: dict[str, dict[int, dict]] = {a: {} for a in cfg.arms}
    summary: dict = {}

    def write() -> None:
        arms, diffs = summarise(per, seeds)
        curves = {a: mean_curve([Path(r["metrics"]) for r in rows.values()], CURVE_KEYS)
                  for a, rows in per.items() if rows}
        summary.clear()
        summary.update({"organism": "steer", "seeds": seeds, "base": {**base_eval, "cache_hit": base_info["cache_hit"]},
                        "arms": arms, "diffs": diffs, "curves": curves, "eval_samples": cfg.eval_samples,
                        "total_wall_s": time.perf_counter() - t0, "config": asdict(cfg)})
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        (out / "report.md").write_text(markdown_table(summary))

    for s in seeds:
        for arm in cfg.arms:
            console.rule(f"[bold]seed {s}: {arm}")
            work = out / "train" / f"{arm}-seed{s}"
            owned_rmtree(work)
            per[arm][s] = run_arm(arm, out / "base", cfg, s, work, progress)
            owned_rmtree(work / "checkpoints")
            write()
    write()
    publish(summary, out, "fpo_curves", CURVE_KEYS[:3], f"steer organism: iterative RLHF, means over {len(seeds)} seeds",
            cfg.artifact, seeds, stamp)
    return summary


def _ci(x: dict) -> str:
    return f"{x['mean']:.2f} [{x['low']:.2f}, {x['high']:.2f}]"


def markdown_table(summary: dict) -> str:
    lines = [f"steer organism, iterative RLHF, seeds {summary['seeds']}; {summary['eval_samples']} samples per final "
             f"policy (base: U {summary['base']['utility']:.2f}, hack mass {summary['base']['hack_mass']:.3f}). "
             "Means with 95% bootstrap intervals over seeds.", "",
             "| arm | refit on | penalty | true utility U (of 8) | hack mass | reward-model hack weight |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, a in summary["arms"].items():
        lines.append(f"| {name} | {a['refit']} | {a['form']} | {_ci(a['utility'])} | {_ci(a['hack_mass'])} "
                     f"| {_ci(a['rm_hack_weight'])} |")
    if summary["diffs"]:
        lines += ["", "| paired difference | U | hack mass | hack weight |", "| --- | --- | --- | --- |"]
        for name, d in summary["diffs"].items():
            lines.append(f"| {name} | {_ci(d['utility'])} | {_ci(d['hack_mass'])} | {_ci(d['rm_hack_weight'])} |")
    return "\n".join(lines) + "\n"
