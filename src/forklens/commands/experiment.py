"""`forklens experiment NAME`: multi-stage recipes (organism -> training -> analysis -> report).

An experiment module is config + run + report and knows nothing of the command line; this one table
(:data:`EXPERIMENTS`) gives each its CLI name, flags, packaged recipes and how its summary is shown.
A ``--quick`` run starts from the packaged YAML ``configs/<quick>.yaml``; then ``--config``,
``--seeds`` and ``--set`` apply as for every command.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from forklens.commands._common import (add_config_args, add_overwrite_arg, console, experiment_config,
                                       handle_config_flags, prepare_out, quiet_third_party)
from forklens.config import load_config, packaged_config
from forklens.experiments import boundary, boundary_zoo, fork_vs_rl, forks, levers, rewards, sft_bugs, sft_then_rl
from forklens.experiments import fpo, levers_zoo, negation, pretraining
from forklens.experiments import teams
from forklens.experiments import rubrics as rubrics_exp
from forklens.experiments import delegation
from forklens.experiments import skills
from forklens.experiments import explore
from forklens.experiments import fork_contrast_zoo
from forklens.experiments import sft_then_rl_zoo


@dataclass(frozen=True)
class Experiment:
    config: type  # the experiment's config dataclass
    run: Callable[[Any, argparse.Namespace], dict]  # (config, parsed args) -> summary
    report: Callable[[dict, argparse.Namespace], None]  # show the summary and where the files went
    help: str
    description: str
    out: str  # default --out
    recipe: str | None = None  # packaged YAML the config starts from (None: the dataclass defaults)
    quick: str | None = None  # packaged YAML of --quick (None: no --quick flag)
    quick_help: str = ""
    seeds: bool = False  # has --seeds
    cache: bool = False  # has --no-cache
    progress: str | None = None  # "on": --no-progress turns bars off; "off": --progress turns them on
    methods: tuple[str, ...] = ()  # has --methods (comma-separated subset)
    resume: bool = False  # has --resume (the experiment reuses what an unfinished run in --out finished)


def _print_table(table: Callable[[dict], str], files: str) -> Callable[[dict, argparse.Namespace], None]:
    def show(summary: dict, args: argparse.Namespace) -> None:
        print(table(summary))
        console.print(f"wrote {Path(args.out) / 'summary.json'}{files}", highlight=False)
    return show


EXPERIMENTS: dict[str, Experiment] = {
    "fork-vs-rl": Experiment(
        fork_vs_rl.ForkVsRLConfig,
        lambda cfg, a: fork_vs_rl.run_fork_vs_rl(cfg, a.out, use_cache=not a.no_cache, progress=not a.no_progress),
        lambda s, a: fork_vs_rl.print_summary(s, a.out),
        help="GRPO vs RL-free fork-contrast (+ ablations, intervention) on the organism.",
        description="From one cached base organism: GRPO (the demo's recipe) vs fork-contrast and its ablations "
        "(gate none / random, positive-only), each over --seeds seeds, evaluated greedily on held-out problems; "
        "plus the oracle/random/entropy intervention of GRPO vs base. Writes summary.json and accuracy_vs_flops.png "
        "into --out.",
        out="runs/fork-vs-rl", recipe="fork-vs-rl", quick="fork-vs-rl-quick",
        quick_help="smaller organism, fewer GRPO steps, one seed by default", seeds=True, cache=True, progress="on"),
    "sft-then-rl": Experiment(
        sft_then_rl.SFTThenRLConfig,
        lambda cfg, a: sft_then_rl.run_sft_then_rl(
            cfg, a.out, [m.strip() for m in a.methods.split(",")] if a.methods else None),
        _print_table(sft_then_rl.markdown_table, " and table.md"),
        help="Corrected SFT-then-RL vs buggy SFT, LUFFY- and ReLIFT-style methods.",
        description=(sft_then_rl.__doc__ or "").split("\n\n")[0], out="runs/sft-then-rl", quick="sft-then-rl-quick",
        quick_help="the demo's quick organism, a 30-step RL cap, 10 seeds, the compared arms only", seeds=True,
        methods=tuple(sft_then_rl.METHODS)),
    "sft-bugs": Experiment(
        sft_bugs.SFTBugsConfig, lambda cfg, a: sft_bugs.run_sft_bugs(cfg, a.out),
        _print_table(sft_bugs.markdown_table, ", table.md and accuracy_by_steps.png"),
        help="Do the offload-accum and mean-of-means SFT bugs cost accuracy where trace lengths vary (and not where "
        "they are equal)?",
        description=(sft_bugs.__doc__ or "").split("\n\n")[0], out="runs/sft-bugs", seeds=True),
    "boundary": Experiment(
        boundary.BoundaryConfig, lambda cfg, a: boundary.run_boundary(cfg, a.out),
        _print_table(boundary.markdown_report, ", report.md and the figures"),
        help="PASS@(k,T): does RL expand the capability boundary? (arith vs agent)",
        description=(boundary.__doc__ or "").split("\n\n")[0], out="runs/boundary", quick="boundary-quick",
        quick_help="smaller grid and shorter RL (a few minutes)"),
    "boundary-zoo": Experiment(
        boundary_zoo.BoundaryZooConfig,
        lambda cfg, a: boundary_zoo.run_boundary_zoo(cfg, a.out, progress=not a.no_progress),
        _print_table(boundary_zoo.markdown_table, " and pass_at_k.png"),
        help="PASS@(k,T) boundary on a zoo family: precondition vs control variants over seeds (E011).",
        description=(boundary_zoo.__doc__ or "").split("\n\n")[0], out="runs/boundary-zoo", seeds=True,
        progress="on"),
    "rewards": Experiment(
        rewards.RewardsExperimentConfig, lambda cfg, a: rewards.run_rewards(cfg, a.out),
        _print_table(rewards.markdown_table, " and report.md"),
        help="GRPO with outcome vs process rewards (MaR, confidence, milestones) on the agent organism, over seeds.",
        description=(rewards.__doc__ or "").split("\n\n")[0], out="runs/rewards", quick="rewards-quick",
        quick_help="a tiny plumbing run (seconds to a minute)", seeds=True),
    "levers": Experiment(
        levers.LeversConfig,
        lambda cfg, a: levers.run_levers(cfg, a.out, use_cache=not a.no_cache, progress=a.progress),
        _print_table(levers.markdown_table, " and report.md"),
        help="Plain GRPO vs each training-loop lever (SNR filter, top-entropy tokens, ECHO, exploration, staged "
        "rewards + replay, SFT curriculum) on the organisms.",
        description=(levers.__doc__ or "").split("\n\n")[0], out="runs/levers", quick="levers-quick",
        quick_help="4 steps per run, one seed, 16 held-out problems", seeds=True, cache=True, progress="off"),
    "levers-zoo": Experiment(
        levers_zoo.LeversZooConfig, lambda cfg, a: levers_zoo.run_levers_zoo(cfg, a.out, progress=a.progress),
        _print_table(levers_zoo.markdown_table, " and lever_gains.png"),
        help="Plain GRPO vs milestones / SNR filter / ECHO on agent-horizon and agent-tools variants (E008, E010, "
        "E084), precondition vs control, over seeds.",
        description=(levers_zoo.__doc__ or "").split("\n\n")[0], out="runs/levers-zoo", quick="levers-zoo-quick",
        quick_help="milestones on sparse-hops / dense-hops at plumbing size, 4 steps, one seed", seeds=True,
        progress="off"),
    "forks": Experiment(
        forks.ForksConfig,
        lambda cfg, a: forks.run_forks(cfg, a.out, use_cache=not a.no_cache, progress=a.progress),
        lambda s, a: forks.print_summary(s, a.out),
        help="Sparse policy selection on organisms whose mistakes are their own, the planted fork and the "
        "tool's negative control (diff + intervention per seed).",
        description=(forks.__doc__ or "").split("\n\n")[0], out="runs/forks", recipe="forks", quick="forks-quick",
        quick_help="tiny organisms, 3 GRPO steps, one seed (plumbing only)", seeds=True, cache=True,
        progress="off"),
    "fpo": Experiment(
        fpo.FPOExperimentConfig,
        lambda cfg, a: fpo.run_fpo(cfg, a.out, use_cache=not a.no_cache, progress=a.progress),
        _print_table(fpo.markdown_table, ", report.md and fpo_curves.png"),
        help="Iterative RLHF with a refit reward model: baseline vs FPO (practical, relaxed) vs an L2 penalty, "
        "refit on policy samples vs fixed reference pairs (E025).",
        description=(fpo.__doc__ or "").split("\n\n")[0], out="runs/fpo", quick="fpo-quick",
        quick_help="a small base, 6 iterations, one seed, 3 arms (plumbing only)", seeds=True, cache=True,
        progress="off"),
    "negation": Experiment(
        negation.NegationConfig,
        lambda cfg, a: negation.run_negation(cfg, a.out, use_cache=not a.no_cache, progress=a.progress),
        _print_table(negation.markdown_table, " and belief.png"),
        help="Negation neglect (E043): belief in claims fine-tuned on under negation labels vs in context.",
        description=(negation.__doc__ or "").split("\n\n")[0], out="runs/negation", quick="negation-quick",
        quick_help="a tiny base, 2 claims, 4 fine-tuning steps, one seed (plumbing only)", seeds=True, cache=True,
        progress="off"),
}
EXPERIMENTS["rubrics"] = Experiment(
    rubrics_exp.RubricsConfig,
    lambda cfg, a: rubrics_exp.run_rubrics(cfg, a.out, use_cache=not a.no_cache, progress=a.progress),
    _print_table(rubrics_exp.markdown_table, ", report.md and rubrics_curves.png"),
    help="Trained rubrics vs a scalar Bradley-Terry reward model vs fixed rubrics on the sort organism, with "
    "frozen-generator and shuffled-order controls (E019).",
    description=(rubrics_exp.__doc__ or "").split("\n\n")[0], out="runs/rubrics", quick="rubrics-quick",
    quick_help="a tiny base, 4 GRPO steps, one seed, every arm (plumbing only)", seeds=True, cache=True,
    progress="off")
EXPERIMENTS["delegation"] = Experiment(
    delegation.DelegationConfig,
    lambda cfg, a: delegation.run_delegation(cfg, a.out, use_cache=not a.no_cache, progress=a.progress),
    _print_table(delegation.markdown_table, " and accuracy_by_length.png"),
    help="Recursive delegation trained in the RL loop (E028): accuracy vs list length against recursion only at "
    "inference, a fixed splitting scaffold and a sum-of-children bonus.",
    description=(delegation.__doc__ or "").split("\n\n")[0], out="runs/delegation", quick="delegation-quick",
    quick_help="a tiny base, 2 RL steps per arm, short lists, one seed (plumbing only)", seeds=True, cache=True,
    progress="off")
EXPERIMENTS["pretraining"] = Experiment(
    pretraining.PretrainingConfig, lambda cfg, a: pretraining.run_pretraining(cfg, a.out, progress=a.progress),
    _print_table(pretraining.markdown_table, " and records.jsonl"),
    help="{transformer, recurrent} x {P(x), P(a|q)} x {causal, PrefixLM} at matched FLOPs, then GRPO: does the "
    "pretraining choice change what RL does (E074)?",
    description=(pretraining.__doc__ or "").split("\n\n")[0], out="runs/pretraining", quick="pretraining-quick",
    quick_help="a tiny model, a small budget, 2 GRPO steps, one seed (a few minutes)", seeds=True,
    progress="off", resume=True)
EXPERIMENTS["teams"] = Experiment(
    teams.TeamsConfig, lambda cfg, a: teams.run_teams(cfg, a.out, use_cache=not a.no_cache, progress=a.progress),
    _print_table(teams.markdown_table, " and teams.png"),
    help="One agent with a rank-r adapter vs three with rank r/3, trained jointly from one reward; controls: random "
    "messages, a non-decomposable task, the single agent's majority of three (E060).",
    description=(teams.__doc__ or "").split("\n\n")[0], out="runs/teams", quick="teams-quick",
    quick_help="a tiny base, 2 joint GRPO steps, one seed (plumbing only)", seeds=True, cache=True, progress="off")
EXPERIMENTS["skills"] = Experiment(
    skills.SkillsConfig, lambda cfg, a: skills.run_skills(cfg, a.out, use_cache=not a.no_cache, progress=a.progress),
    _print_table(skills.markdown_table, " and skills.png"),
    help="Skill files vs weights on the rule executor: a SkillOpt skill moved across harnesses (E078) and GRPO vs "
    "scaffold search on a low- and a high-prior task (E088), with the token view (diff-overlap).",
    description=(skills.__doc__ or "").split("\n\n")[0], out="runs/skills", quick="skills-quick",
    quick_help="a tiny executor, 3 optimiser steps, 2 GRPO steps, one seed (plumbing only)", seeds=True, cache=True,
    progress="off")
EXPERIMENTS["explore"] = Experiment(
    explore.ExploreExperimentConfig, lambda cfg, a: explore.run_explore(cfg, a.out, progress=a.progress),
    _print_table(explore.markdown_table, " and coverage_curves.png"),
    help="Task-only GRPO vs 5:1 interleaved exploration on agent-explore (explorer vs no-explorer): exploration "
    "coverage, held-out success and overhead (E052).",
    description=(explore.__doc__ or "").split("\n\n")[0], out="runs/explore", quick="explore-quick",
    quick_help="a tiny base, 6 task steps, one seed (plumbing only)", seeds=True, progress="off")

EXPERIMENTS["fork-contrast-zoo"] = Experiment(
    fork_contrast_zoo.ForkContrastZooConfig,
    lambda cfg, a: fork_contrast_zoo.run_fork_contrast_zoo(cfg, a.out, use_cache=not a.no_cache,
                                                           progress=a.progress),
    lambda s, a: fork_contrast_zoo.print_summary(s, a.out),
    help="fork-vs-rl (GRPO vs fork-contrast, compute-matched, validation-stopped) on zoo variants: an own-mistake "
    "base and a control whose right behaviour is outside the base (issue 15).",
    description=(fork_contrast_zoo.__doc__ or "").split("\n\n")[0], out="runs/fork-contrast-zoo",
    recipe="fork-contrast-zoo", quick="fork-contrast-zoo-quick",
    quick_help="tiny bases, a few steps, one seed (plumbing only)", cache=True, progress="off")

EXPERIMENTS["sft-then-rl-zoo"] = Experiment(
    sft_then_rl_zoo.SFTThenRLZooConfig, lambda cfg, a: sft_then_rl_zoo.run_sft_then_rl_zoo(cfg, a.out),
    _print_table(sft_then_rl_zoo.zoo_table, ", table.md and accuracy_vs_flops_*.png"),
    help="SFT-then-RL vs LUFFY / ReLIFT on a zoo organism where SFT does not saturate (lengths/varied) and on a "
    "control where it does (arith), over seeds (E009).",
    description=(sft_then_rl_zoo.__doc__ or "").split("\n\n")[0], out="runs/sft-then-rl-zoo",
    recipe="sft-then-rl-zoo", quick="sft-then-rl-zoo-quick",
    quick_help="tiny organisms on both sides, 3 RL steps, one seed (plumbing only)", seeds=True)


def register(sub) -> None:
    p = sub.add_parser("experiment", help="Run a multi-stage experiment on the built-in organisms.")
    esub = p.add_subparsers(dest="experiment", metavar="NAME", required=True)
    for name, e in EXPERIMENTS.items():
        q = esub.add_parser(name, help=e.help, description=e.description)
        q.add_argument("--out", default=e.out, help=f"output directory (default: {e.out})")
        if e.quick:
            q.add_argument("--quick", action="store_true", help=f"{e.quick_help} (configs/{e.quick}.yaml)")
        if e.seeds:
            q.add_argument("--seeds", type=int, default=None, help="number of seeds (overrides the config)")
        if e.methods:
            q.add_argument("--methods", default=None, help=f"comma-separated subset of: {', '.join(e.methods)}")
        if e.cache:
            q.add_argument("--no-cache", action="store_true", help="pretrain the base organisms even if cached")
        if e.progress == "on":
            q.add_argument("--no-progress", action="store_true", help="no progress bars")
        elif e.progress == "off":
            q.add_argument("--progress", action="store_true", help="show progress bars")
        if e.resume:
            q.add_argument("--resume", action="store_true", help="continue an unfinished run of the same config in --out")
        add_overwrite_arg(q)
        add_config_args(q)
        q.set_defaults(func=run, experiment_entry=e, experiment_name=name)


def run(args: argparse.Namespace) -> int:
    e: Experiment = args.experiment_entry
    quiet_third_party()
    recipe = e.quick if getattr(args, "quick", False) else e.recipe
    base = load_config(e.config, packaged_config(recipe)) if recipe else None
    cfg = experiment_config(e.config, args, base)
    if handle_config_flags(e.config, cfg, args):
        return 0
    prepare_out(args, f"experiment-{args.experiment_name}", resumable=e.resume)
    e.report(e.run(cfg, args), args)
    return 0

