"""`forklens experiment explore`: does task-only GRPO erode exploration, and does 5:1 interleaving keep it?
(E052, arXiv 2605.16143, issue 15.)

The paper measures exploration by Exploration Checkpoint Coverage (ECC: the fraction of an environment's
enumerated checkpoints an exploration episode reaches), reports that task-focused GRPO drives it down on
unfamiliar environments, and recovers it by interleaving exploration rollouts, rewarded by ECC, with task
rollouts at 5:1 for about 17% training overhead. Here, on the `agent-explore` family
(:mod:`forklens.organisms.agent_explore`):

* ``explorer`` (precondition): a base that learned, in pretraining, to look up an entity's checkpoints
  when given an exploration prompt (``?qwe>``); ``no-explorer`` (control): the same task stream without
  exploration episodes, so task-only GRPO has nothing to drop;
* arms, each GRPO from the variant's one cached base with the same sampling and loss:
  ``grpo`` (task-only, ``rl.train.max_steps`` steps), ``explore`` (the same number of task steps plus one
  exploration step per ``explore.task_steps`` task steps: :class:`~forklens.train.exploration.ExplorationInterleavedSource`,
  reward = coverage) and ``grpo-matched`` (task-only for as many steps as ``explore`` takes in all);
* metrics: ECC on exploration prompts of held-out questions (knowledge bases the base never saw) over
  training (every ``coverage_every`` steps and at the end; the base is step 0), held-out task pass@1,
  and the overhead of interleaving (trained tokens and FLOPs of ``explore`` over ``grpo``, paired by seed).

Every evaluation samples at temperature 1 with sampling seed = the RL seed, so arms and the base are
paired by seed. Per variant the summary has ``base`` (coverage, accuracy: mean [CI] over the seeds'
sampling seeds; ``coverage_familiar`` on exploration prompts drawn by the pretraining generator),
``arms.ARM`` (mean [CI] and per-seed values), ``drop.ARM`` (coverage after minus the base's, paired by
seed; ``relative_drop.ARM`` the same over the base's, -1 = to zero), ``paired.[ARM-grpo]`` and ``paired.[explore-grpo-matched]`` (accuracy and coverage differences, paired by
seed, and the trained-token and FLOP overhead of the first arm over the second) and
``curve.ARM`` (mean coverage at each evaluated step); ``contrast.[ARM-drop]`` is the precondition's drop
minus the control's, paired by seed.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from forklens.analysis.curves import bootstrap_ci, paired_difference
from forklens.config import field
from forklens.errors import ConfigError
from forklens.experiments.boundary import AgentRLConfig
from forklens.experiments.levers import train_summary
from forklens.experiments.rewards import evaluate_agent
from forklens.organisms import get_family
from forklens.policy import Policy
from forklens.report.artifacts import finish_run, make_stamp
from forklens.runfolder import claim_folder, owned_rmtree
from forklens.tasks.agent import coverage, exploration_problem
from forklens.tasks.base import Problem, Sampling
from forklens.train.exploration import ExplorationConfig, ExplorationInterleavedSource
from forklens.train.loop import TrainConfig, read_metrics
from forklens.train.run import grpo_loss, train
from forklens.train.sources import GRPOSource

console = Console(stderr=True)
FAMILY = "agent-explore"
ARMS = ("grpo", "explore", "grpo-matched")
REFERENCE = "grpo"


def _explore_rl() -> AgentRLConfig:
    """40 task steps x 8 questions x 8 episodes at lr 3e-4 (the rate at which plain GRPO did not wreck the
    agent bases in results/levers-agent-tools-lr3e-4); fixed before any measured run."""
    rl = AgentRLConfig(train=TrainConfig(max_steps=40, learning_rate=3e-4, micro_batch_size=128, save_every=0))
    rl.sampling.prompts_per_step = 8
    return rl


@dataclass
class ExploreExperimentConfig:
    variants: list[str] = field(default_factory=lambda: ["explorer", "no-explorer"],
                                help="Variants of the agent-explore family.")
    arms: list[str] = field(default_factory=lambda: list(ARMS), help="Arms: grpo (task-only; the reference), explore "
                            "(5:1 interleaved exploration steps), grpo-matched (task-only, as many steps as explore).")
    overrides: list[str] = field(default_factory=list, help="Dotted KEY=VALUE overrides of every variant's organism "
                                 "config (after the variant's own).")
    base_seed: int = field(0, help="Seed of each variant's base organism (one cached base per variant).")
    seed: int = field(0, help="First RL seed; seeds are seed, seed+1, ...")
    seeds: int = field(5, ge=1, help="RL seeds per arm (overridden by --seeds).")
    rl: AgentRLConfig = field(default_factory=_explore_rl, help="GRPO settings shared by every arm (T set per variant).")
    explore: ExplorationConfig = field(default_factory=lambda: ExplorationConfig(task_steps=5, T=9),
                                       help="Interleaving: task steps per exploration step, and the tool-call cap of "
                                       "exploration episodes (9 = every checkpoint of one entity).")
    T: int = field(0, ge=0, help="Tool-call cap of task episodes (0 = the deepest question of the variant).")
    coverage_every: int = field(8, ge=1, help="Evaluate held-out coverage every N optimizer steps (and at the end).")
    coverage_samples: int = field(2, ge=1, help="Exploration episodes per held-out prompt at temperature 1.")
    eval_samples: int = field(4, ge=1, help="Task episodes per held-out question at temperature 1 (pass@1).")
    eval_problems: int = field(50, ge=1, help="Held-out questions (the first N of the test split) for both evaluations.")
    level: float = field(0.95, gt=0, lt=1, help="Bootstrap interval level over seeds.")
    artifact: str = field("", help="Also write a stamped artifact folder here (e.g. results/explore).")


def check_config(cfg: ExploreExperimentConfig) -> None:
    family = get_family(FAMILY)
    if not cfg.variants:
        raise ConfigError("variants: name at least one variant of agent-explore")
    for v in cfg.variants:
        family.variant(v)  # unknown names fail here
    if len(set(cfg.variants)) != len(cfg.variants):
        raise ConfigError(f"variants: a variant appears twice in {cfg.variants}")
    bad = [a for a in cfg.arms if a not in ARMS]
    if bad or REFERENCE not in cfg.arms:
        raise ConfigError(f"arms {cfg.arms}: expected a subset of {', '.join(ARMS)} that includes {REFERENCE!r}")
    if cfg.explore.task_steps < 1:
        raise ConfigError("explore.task_steps must be >= 1 (task steps per exploration step)")


def total_steps(arm: str, task_steps: int, ratio: int) -> int:
    """Optimizer steps of an arm: ``explore`` and ``grpo-matched`` add one step per ``ratio`` task steps."""
    return task_steps + (task_steps // ratio if arm in ("explore", "grpo-matched") else 0)


# ------------------------------------------------------------------------------------ coverage


def exploration_coverage(policy, task, problems: list[Problem], T: int, turn_tokens: int, n: int, seed: int) -> float:
    """Mean ECC of ``n`` exploration episodes (temperature 1) per exploration prompt of ``problems``."""
    explore = [exploration_problem(p) for p in problems]
    was_training = policy.model.training
    policy.model.eval()
    xs = task.rollout(policy, explore, n, Sampling(temperature=1.0, T=T, turn_tokens=turn_tokens), seed=seed)
    policy.model.train(was_training)
    return sum(coverage(explore[g], e.calls) for g, e in zip(xs.group, xs.episodes)) / len(xs.episodes)


class CoverageCallback:
    """Trainer callback: held-out coverage after every ``every``-th step and after the last; adds
    ``heldout_coverage`` to that step's metrics and keeps ``history`` = [(step, coverage)]."""

    def __init__(self, measure: Callable[[Any], float], every: int):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.measure, self.every = measure, every
        self.history: list[tuple[int, float]] = []

    def __call__(self, trainer, metrics: dict) -> bool:
        if trainer.step % self.every == 0 or trainer.step >= trainer.config.max_steps:
            value = self.measure(trainer.policy)
            metrics["heldout_coverage"] = value
            self.history.append((trainer.step, value))
        return False


# ------------------------------------------------------------------------------------ one run


def run_arm(arm: str, base_dir: Path, task, cfg: ExploreExperimentConfig, T: int, seed: int, work: Path,
            progress: bool) -> tuple[dict[str, Any], list[dict]]:
    """Train one arm from the base and evaluate it: (the run's numbers, its per-step metrics)."""
    owned_rmtree(work)
    policy = Policy.load(base_dir)
    sampling = replace(cfg.rl.sampling, T=T)
    source: Any = GRPOSource(task, task.problems("train"), sampling, seed=seed)
    if arm == "explore":
        source = ExplorationInterleavedSource(source, cfg.explore)
    held_out = task.problems("test")[: cfg.eval_problems]
    turn = cfg.rl.sampling.turn_tokens
    callback = CoverageCallback(lambda p: exploration_coverage(p, task, held_out, cfg.explore.T, turn,
                                                               cfg.coverage_samples, seed), cfg.coverage_every)
    steps = total_steps(arm, cfg.rl.train.max_steps, cfg.explore.task_steps)
    res = train(policy, "grpo", grpo_loss(cfg.rl), source, replace(cfg.rl.train, seed=seed, save_every=0, max_steps=steps),
                work, name=f"{arm} seed {seed}", progress=progress, callbacks=[callback])
    owned_rmtree(work / "checkpoints")
    metrics = read_metrics(res.metrics_file)
    ev = evaluate_agent(policy, task, cfg.eval_problems, T, turn, cfg.eval_samples, seed=seed)
    return {"accuracy": ev["accuracy"], "tool_calls_mean": ev["tool_calls_mean"], "coverage": callback.history[-1][1],
            "trained_tokens": sum(m["trained_tokens"] for m in metrics), "flops": res.flops, "wall_s": res.wall_s,
            "steps": res.steps, "curve": callback.history, **train_summary(metrics)}, metrics


def base_numbers(base_dir: Path, task, cfg: ExploreExperimentConfig, T: int, seed: int, familiar: list[Problem]) -> dict:
    """The base's held-out pass@1 and coverage, and its coverage on pretraining-generator environments,
    at sampling seed ``seed``."""
    policy = Policy.load(base_dir)
    held_out = task.problems("test")[: cfg.eval_problems]
    turn = cfg.rl.sampling.turn_tokens
    ev = evaluate_agent(policy, task, cfg.eval_problems, T, turn, cfg.eval_samples, seed=seed)
    return {"accuracy": ev["accuracy"], "tool_calls_mean": ev["tool_calls_mean"],
            "coverage": exploration_coverage(policy, task, held_out, cfg.explore.T, turn, cfg.coverage_samples, seed),
            "coverage_familiar": exploration_coverage(policy, task, familiar, cfg.explore.T, turn, cfg.coverage_samples,
                                                      seed)}


def familiar_problems(task, n: int, seed: int) -> list[Problem]:
    """``n`` questions drawn by the pretraining generator (``random_problem``) from a seeded stream of
    their own: the kind of environment the base explored in pretraining (each knowledge base new)."""
    rng = random.Random(f"agent-explore-familiar-{seed}")
    return [task.random_problem(rng, f"familiar-{i:04d}") for i in range(n)]


# ------------------------------------------------------------------------------------ aggregation


def _ci(values: list[float], level: float) -> dict:
    return bootstrap_ci(values, level, resamples=2000).as_dict()


def variant_summary(base: dict[int, dict], per_seed: dict[str, dict[int, dict]], level: float) -> dict[str, Any]:
    """Base and arms (mean [CI] over seeds), coverage drops, differences to task-only GRPO and curves."""
    seeds = sorted(base)
    out: dict[str, Any] = {"base": {k: _ci([base[s][k] for s in seeds], level) for k in base[seeds[0]]}}
    out["base"]["per_seed"] = {k: [base[s][k] for s in seeds] for k in base[seeds[0]]}
    out["arms"], out["drop"], out["relative_drop"], out["paired"], out["curve"] = {}, {}, {}, {}, {}
    for arm, rows in per_seed.items():
        ss = sorted(rows)
        keys = [k for k in rows[ss[0]] if k != "curve" and all(k in rows[s] for s in ss)]
        out["arms"][arm] = {"per_seed": {k: [rows[s][k] for s in ss] for k in keys},
                            **{k: _ci([rows[s][k] for s in ss], level) for k in keys}}
        out["drop"][arm] = paired_difference({s: rows[s]["coverage"] for s in ss},
                                             {s: base[s]["coverage"] for s in seeds}, level, resamples=2000).as_dict()
        if all(base[s]["coverage"] > 0 for s in ss):  # relative drop: -1 = coverage to zero
            out["relative_drop"][arm] = _ci([rows[s]["coverage"] / base[s]["coverage"] - 1 for s in ss], level)
        steps = sorted({st for s in ss for st, _ in rows[s]["curve"]})
        out["curve"][arm] = [[0, sum(base[s]["coverage"] for s in ss) / len(ss)]] + [
            [st, sum(c for s in ss for t, c in rows[s]["curve"] if t == st) / len(ss)] for st in steps]
    pairs = [(arm, REFERENCE) for arm in per_seed if arm != REFERENCE]
    if "explore" in per_seed and "grpo-matched" in per_seed:
        pairs.append(("explore", "grpo-matched"))  # the same number of optimizer steps
    for arm, ref_arm in pairs:
        rows, ref = per_seed[arm], per_seed.get(ref_arm, {})
        if not ref:
            continue
        entry = {k: paired_difference({s: r[k] for s, r in rows.items()}, {s: r[k] for s, r in ref.items()}, level,
                                      resamples=2000).as_dict() for k in ("accuracy", "coverage")}
        for k in ("trained_tokens", "flops"):
            entry[f"{k}_overhead"] = _ci([rows[s][k] / ref[s][k] - 1 for s in sorted(rows) if s in ref], level)
        out["paired"][f"{arm}-{ref_arm}"] = entry
    return out


def drops(per_seed: dict[str, dict[int, dict]], base: dict[int, dict], arm: str) -> dict[int, float]:
    return {s: r["coverage"] - base[s]["coverage"] for s, r in per_seed.get(arm, {}).items()}


def contrast(pre: tuple[dict, dict], ctl: tuple[dict, dict], arms: list[str], level: float) -> dict[str, dict]:
    """Per arm: the precondition's coverage drop minus the control's, paired by seed."""
    out = {}
    for arm in arms:
        a, b = drops(pre[0], pre[1], arm), drops(ctl[0], ctl[1], arm)
        if a and b:
            out[f"{arm}-drop"] = paired_difference(a, b, level, resamples=2000).as_dict()
    return out


def plot(summary: dict, stem: Path) -> list[Path]:
    """Held-out exploration coverage over optimizer steps, per variant and arm (mean over seeds)."""
    from forklens.report.plots import new_figure, save_figure  # matplotlib: loaded only when plotting

    fig, ax = new_figure(7.0, 4.0)
    for v, s in summary["variants"].items():
        for arm, curve in s.get("curve", {}).items():
            ax.plot([p[0] for p in curve], [p[1] for p in curve], marker="o", ms=3,
                    ls="-" if v == summary["config"]["variants"][0] else "--", label=f"{v} / {arm}")
    ax.set_xlabel("optimizer step (0 = base)")
    ax.set_ylabel("held-out exploration coverage (ECC)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title("Exploration coverage during RL, mean over seeds", fontsize=9)
    return save_figure(fig, stem)


# ------------------------------------------------------------------------------------ the experiment


def run_explore(cfg: ExploreExperimentConfig, out: str | Path, progress: bool = False) -> dict:
    check_config(cfg)
    out = Path(out)
    claim_folder(out, "experiment-explore")
    family = get_family(FAMILY)
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    stamp = make_stamp(Path(cfg.artifact).name, seeds) if cfg.artifact else None
    t0 = time.perf_counter()
    summary: dict[str, Any] = {"claims": "E052 (arXiv 2605.16143)", "seeds": seeds, "config": asdict(cfg),
                               "variants": {}}
    raw: dict[str, tuple[dict, dict]] = {}
    metrics: dict[str, list] = {}

    def write() -> None:
        pre, ctl = cfg.variants[0], cfg.variants[-1]
        if len(cfg.variants) > 1 and pre in raw and ctl in raw:
            summary["contrast"] = contrast(raw[pre], raw[ctl], cfg.arms, cfg.level)
            summary["contrast_pair"] = {"precondition": pre, "control": ctl}
        summary["wall_s"] = time.perf_counter() - t0
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))

    for v in cfg.variants:
        org = replace(family.variant_config(v, overrides=cfg.overrides), seed=cfg.base_seed)
        task = family.task(org)
        T = cfg.T or max(p.meta["depth"] for p in task.problems("train") + task.problems("test"))
        console.rule(f"[bold]{FAMILY}/{v}: base organism")
        info = family.build(org, out / v / "base", progress=progress)
        familiar = familiar_problems(task, cfg.eval_problems, cfg.base_seed)
        base = {s: base_numbers(out / v / "base", task, cfg, T, s, familiar) for s in seeds}
        var = family.variant(v)
        entry = {"role": var.role, "about": var.about, "overrides": list(var.overrides), "T": T,
                 "explore_T": cfg.explore.T, "arms_run": cfg.arms,
                 "steps": {a: total_steps(a, cfg.rl.train.max_steps, cfg.explore.task_steps) for a in cfg.arms},
                 "pretrain": {"cache_hit": info["cache_hit"], "steps": info["steps"], "flops": info["flops"]},
                 "test": {"questions": cfg.eval_problems, "samples": cfg.eval_samples,
                          "coverage_samples": cfg.coverage_samples}}
        summary["variants"][v] = entry
        per_seed: dict[str, dict[int, dict]] = {}
        raw[v] = (per_seed, base)
        for s in seeds:
            for arm in cfg.arms:
                console.print(f"{v}/{arm} seed {s}", highlight=False)
                row, rows = run_arm(arm, out / v / "base", task, cfg, T, s, out / v / f"{arm}-seed{s}", progress)
                per_seed.setdefault(arm, {})[s] = row
                metrics[f"{v}-{arm}-seed{s}"] = rows
                entry.update(variant_summary(base, per_seed, cfg.level))
                write()
    write()
    folder = finish_run(summary, out, plot, "coverage_curves", cfg.artifact, seeds=seeds, stamp=stamp, metrics=metrics)
    if folder is not None:
        console.print(f"wrote the stamped artifact {folder}", highlight=False)
    return summary


def markdown_table(summary: dict) -> str:
    """Per variant and arm: held-out coverage and pass@1 (mean [CI]) and the coverage drop from the base."""
    def ci(x: dict, scale: float = 100) -> str:
        return f"{scale * x['mean']:.1f} [{scale * x['low']:.1f}, {scale * x['high']:.1f}]"
    lines = ["| variant | role | arm | coverage (%) | drop from base (points) | pass@1 (%) |", "|" + "---|" * 6]
    for v, s in summary["variants"].items():
        if "base" in s:
            lines.append(f"| {v} | {s['role']} | base | {ci(s['base']['coverage'])} | - | {ci(s['base']['accuracy'])} |")
        for arm, a in s.get("arms", {}).items():
            lines.append(f"| {v} | {s['role']} | {arm} | {ci(a['coverage'])} | {ci(s['drop'][arm])} | "
                         f"{ci(a['accuracy'])} |")
    for key, iv in summary.get("contrast", {}).items():
        pair = summary["contrast_pair"]
        lines.append(f"\n{key}: {pair['precondition']} minus {pair['control']}, paired by seed: {ci(iv)} points")
    return "\n".join(lines) + "\n"
