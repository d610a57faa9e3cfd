"""`forklens experiment levers`: plain GRPO vs each training-loop lever on the organisms.

From the cached base organisms (the demo's arith organism and the agent organism, both seed 0), every
run below is trained with the one trainer and evaluated greedily on the held-out split, over
``--seeds`` RL seeds (the base organisms stay fixed; the seed changes sampling and data order):

* ``arith/grpo``, ``agent/grpo``: plain GRPO (the demo's and the boundary experiment's recipes);
* ``*/snr``: reward-variance filtering of prompt groups (``snr_filter_rho``, RAGEN-2);
* ``*/top_entropy``: policy gradient on the top 20% entropy tokens (``top_entropy_quantile``);
* ``agent/echo``: environment-token loss (``env_loss_coef``, ECHO);
* ``agent/explore``: exploration episodes rewarded by coverage, 5 task : 1 exploration step (the same
  number of task steps as plain GRPO, so the exploration steps are extra cost);
* ``agent/staged_replay``: stage 1 verifier only, stage 2 (from ``stage2_start``) adds the milestone
  process reward, with replay of questions solved by exactly 1 of G (SU-01);
* ``agent_sft/{shuffle,reverse_perplexity,perplexity}``: SFT on the gold trajectories of the training
  questions in three orders (SU-01's reverse-perplexity curriculum).

Every lever run logs the MI proxy (``mi_proxy_every``). Agent runs report two coverages of the
knowledge base (:func:`forklens.tasks.agent.coverage`): ``coverage`` on greedy *exploration* episodes
of the test questions, ``coverage_task`` on the greedy task episodes. Settings are fixed in
:class:`LeversConfig` before any measurement.

Outputs in ``--out``: ``summary.json`` (``{"runs": {NAME: {"accuracy_mean", "accuracy_std", "flops",
"coverage", ...}}}``), ``report.md`` (the table) and one ``metrics.jsonl`` per run and seed.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args

from rich.console import Console

from forklens.analysis.evaluate import EvalConfig, evaluate
from forklens.config import field
from forklens.experiments.boundary import AgentRLConfig, AgentSFTConfig
from forklens.objectives.grpo import GRPOLossConfig
from forklens.organisms.agent import AgentOrganismConfig, build_agent_organism
from forklens.organisms.arith import OrganismConfig, build_base_organism
from forklens.policy import Policy
from forklens.rewards.milestones import milestone_reward
from forklens.tasks import get_task
from forklens.tasks.agent import AgentTask, coverage, exploration_problem
from forklens.tasks.base import Sampling
from forklens.train.episode_source import EpisodeSFTSource
from forklens.train.exploration import ExplorationConfig, ExplorationInterleavedSource
from forklens.train.loop import read_metrics
from forklens.train.run import RLConfig, grpo_loss, train
from forklens.train.schedule import ReplayBuffer, RewardSchedule
from forklens.train.sources import GRPOSource, verifier_reward
from forklens.runfolder import claim_folder, owned_rmtree
from forklens.train.sources import SFTOrder

console = Console(stderr=True)

ArithRun = Literal["grpo", "snr", "top_entropy"]
AgentRun = Literal["grpo", "snr", "top_entropy", "echo", "explore", "staged_replay"]
ARITH_RUNS = list(get_args(ArithRun))
AGENT_RUNS = list(get_args(AgentRun))
SFT_ORDERS = list(get_args(SFTOrder))


def _arith_rl() -> RLConfig:
    cfg = RLConfig()
    cfg.train.save_every = 0
    return cfg


@dataclass
class LeverSettings:
    snr_filter_rho: float = field(0.9, ge=0, le=1, help="SNR filter rho (RAGEN-2's value).")
    top_entropy_quantile: float = field(0.2, gt=0, le=1, help="Top-entropy token fraction (the paper's and TRL's 0.2).")
    env_loss_coef: float = field(0.05, ge=0, help="ECHO lambda (the paper's value).")
    explore: ExplorationConfig = field(default_factory=ExplorationConfig, help="Exploration interleaving.")
    stage2_start: int = field(30, ge=0, help="Step at which the staged run adds the milestone process reward.")
    process_weight: float = field(0.5, ge=0, help="Weight of the milestone reward in stage 2.")
    replay_frac: float = field(0.25, ge=0, le=1, help="Fraction of each step's questions taken from the replay queue.")
    mi_proxy_every: int = field(10, ge=0, help="Log the MI proxy every N steps in every RL run.")


@dataclass
class LeversConfig:
    arith: OrganismConfig = field(default_factory=OrganismConfig, help="The arith base organism (the demo's).")
    arith_rl: RLConfig = field(default_factory=_arith_rl, help="GRPO on arith (the demo's recipe).")
    agent: AgentOrganismConfig = field(default_factory=AgentOrganismConfig, help="The agent base organism.")
    agent_rl: AgentRLConfig = field(default_factory=AgentRLConfig, help="GRPO on agent episodes (the boundary "
                                    "experiment's recipe, T = 5).")
    agent_sft: AgentSFTConfig = field(default_factory=AgentSFTConfig, help="SFT on gold agent trajectories.")
    levers: LeverSettings = field(default_factory=LeverSettings, help="The levers' settings.")
    arith_runs: list[ArithRun] = field(default_factory=lambda: list(ARITH_RUNS), help="Arith runs.")
    agent_runs: list[AgentRun] = field(default_factory=lambda: list(AGENT_RUNS), help="Agent RL runs.")
    sft_orders: list[SFTOrder] = field(default_factory=lambda: list(SFT_ORDERS), help="Agent SFT curriculum runs.")
    eval_arith_problems: int = field(0, ge=0, help="Held-out arith problems (0 = the whole test split).")
    eval_agent_problems: int = field(0, ge=0, help="Held-out agent questions (0 = the whole test split).")
    eval_T: int = field(5, help="Tool-call cap of the agent evaluation episodes.")
    seeds: int = field(3, ge=1, help="RL seeds per run.")


# ------------------------------------------------------------------------------------ evaluation


def eval_agent(policy, task, limit: int, T: int) -> dict[str, float]:
    """Greedy task episodes (accuracy, coverage_task) and greedy exploration episodes (coverage)."""
    ev = evaluate(policy, task, EvalConfig(temperature=0.0, limit=limit, T=T, turn_tokens=12))
    problems = task.problems("test")[: limit or None]
    explore = [exploration_problem(p) for p in problems]
    xs = task.rollout(policy, explore, 1, Sampling(temperature=0.0, T=T, turn_tokens=12))
    cov = sum(coverage(explore[g], e.calls) for g, e in zip(xs.group, xs.episodes)) / len(problems)
    return {"accuracy": ev["accuracy"], "coverage": cov, "coverage_task": ev["coverage"]}


def eval_arith(policy, task, limit: int, max_new_tokens: int) -> dict[str, float]:
    return {"accuracy": evaluate(policy, task, EvalConfig(max_new_tokens=max_new_tokens, limit=limit))["accuracy"]}


# ------------------------------------------------------------------------------------ runs


def _train(policy, objective: str, loss_cfg, source, train_cfg, work: Path, seed: int, progress: bool) -> dict:
    owned_rmtree(work)
    res = train(policy, objective, loss_cfg, source, replace(train_cfg, seed=seed, save_every=0), work,
                name=str(work.name), progress=progress)
    owned_rmtree(work / "checkpoints")
    return {"flops": res.flops, "wall_s": res.wall_s, "metrics": read_metrics(res.metrics_file)}


def train_summary(metrics: list[dict]) -> dict[str, float]:
    """Means over the run of the diagnostics the levers log."""
    out = {}
    for key in ("mi_proxy_acc", "mi_proxy_chance", "snr_kept_groups_frac", "entropy_kept_frac", "env_ce",
                "coverage_task", "coverage_explore", "replayed", "reward_mean"):
        vals = [m[key] for m in metrics if key in m and m[key] == m[key]]
        if vals:
            out[f"train_{key}"] = sum(vals) / len(vals)
    return out


def run_arith(cfg: LeversConfig, name: str, base: Path, task, seed: int, work: Path, progress: bool) -> dict:
    rl, lv = cfg.arith_rl, cfg.levers
    sampling = replace(rl.sampling, mi_proxy_every=lv.mi_proxy_every)
    loss: GRPOLossConfig = grpo_loss(rl)
    if name == "snr":
        sampling = replace(sampling, snr_filter_rho=lv.snr_filter_rho)
    elif name == "top_entropy":
        loss = replace(loss, top_entropy_quantile=lv.top_entropy_quantile)
    elif name != "grpo":
        raise ValueError(f"unknown arith run {name!r}; known: {', '.join(ARITH_RUNS)}")
    policy = Policy.load(base)
    source = GRPOSource(task, task.problems("train"), sampling, seed=seed)
    res = _train(policy, "grpo", loss, source, rl.train, work, seed, progress)
    ev = eval_arith(policy, task, cfg.eval_arith_problems, rl.sampling.max_new_tokens)
    return {**ev, "flops": res["flops"], "wall_s": res["wall_s"], **train_summary(res["metrics"])}


def run_agent(cfg: LeversConfig, name: str, base: Path, task: AgentTask, seed: int, work: Path,
              progress: bool) -> dict:
    rl, lv = cfg.agent_rl, cfg.levers
    sampling = replace(rl.sampling, T=cfg.eval_T, mi_proxy_every=lv.mi_proxy_every)
    loss: GRPOLossConfig = grpo_loss(rl)
    train = rl.train
    problems = task.problems("train")
    kwargs: dict[str, Any] = {}
    if name == "top_entropy":
        loss = replace(loss, top_entropy_quantile=lv.top_entropy_quantile)
    elif name == "echo":
        loss = replace(loss, env_loss_coef=lv.env_loss_coef)
    elif name == "staged_replay":
        kwargs["reward_schedule"] = RewardSchedule.two_stage(verifier_reward(task), milestone_reward(task),
                                                             start=lv.stage2_start, process_weight=lv.process_weight)
        kwargs["replay"] = ReplayBuffer(problems, frac=lv.replay_frac)
    elif name not in ("grpo", "explore", "snr"):
        raise ValueError(f"unknown agent run {name!r}; known: {', '.join(AGENT_RUNS)}")
    if name == "snr":
        sampling = replace(sampling, snr_filter_rho=lv.snr_filter_rho)
    policy = Policy.load(base)
    source = GRPOSource(task, problems, sampling, seed=seed, **kwargs)
    if name == "explore":
        k = lv.explore.task_steps
        source = ExplorationInterleavedSource(source, lv.explore)
        # the same number of task steps as plain GRPO, plus one exploration step per k task steps
        train = replace(train, max_steps=train.max_steps + (train.max_steps // k if k else 0))
    res = _train(policy, "grpo", loss, source, train, work, seed, progress)
    ev = eval_agent(policy, task, cfg.eval_agent_problems, cfg.eval_T)
    return {**ev, "flops": res["flops"], "wall_s": res["wall_s"], **train_summary(res["metrics"])}


def run_agent_sft(cfg: LeversConfig, order: str, base: Path, task: AgentTask, seed: int, work: Path,
                  progress: bool) -> dict:
    policy = Policy.load(base)
    examples = [(p.prompt, task.gold_trajectory(p)) for p in task.problems("train")]
    source = EpisodeSFTSource(examples, cfg.agent_sft.batch_size, seed=seed, order=order, policy=policy)
    res = _train(policy, "sft", None, source, cfg.agent_sft.train, work, seed, progress)
    ev = eval_agent(policy, task, cfg.eval_agent_problems, cfg.eval_T)
    scoring = 2 * policy.num_params() * source.scoring_tokens  # the one scoring pass of the curriculum
    return {**ev, "flops": res["flops"] + scoring, "wall_s": res["wall_s"]}


# ------------------------------------------------------------------------------------ aggregation


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _std(xs: list[float]) -> float:
    if len(xs) < 2:
        return 0.0
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def aggregate(per_seed: dict[str, list[dict]]) -> dict[str, dict]:
    """Per run: accuracy mean and std over seeds, mean FLOPs, coverage, the paired accuracy difference
    to the same organism's plain-GRPO run (same seeds), and the means of every other number."""
    runs: dict[str, dict] = {}
    for name, results in per_seed.items():
        acc = [r["accuracy"] for r in results]
        entry = {"accuracy_mean": _mean(acc), "accuracy_std": _std(acc), "flops": _mean([r["flops"] for r in results]),
                 "coverage": _mean([r["coverage"] for r in results]) if "coverage" in results[0] else None,
                 "seeds": len(results), "accuracy_per_seed": acc}
        for key in results[0]:
            if key not in ("accuracy", "flops", "coverage") and all(key in r for r in results):
                entry[key] = _mean([r[key] for r in results])
        runs[name] = entry
    for name, entry in runs.items():
        org, _, lever = name.partition("/")
        ref = f"{org}/grpo" if org in ("arith", "agent") else f"{org}/shuffle"
        if name != ref and lever != "base" and ref in runs and runs[ref]["seeds"] == entry["seeds"]:
            diffs = [a - b for a, b in zip(entry["accuracy_per_seed"], runs[ref]["accuracy_per_seed"])]
            entry["delta_vs"] = ref
            entry["delta_mean"] = _mean(diffs)
            entry["delta_std"] = _std(diffs)
            entry["flops_ratio"] = entry["flops"] / runs[ref]["flops"] if runs[ref]["flops"] else None
    return runs


def markdown_table(summary: dict) -> str:
    lines = ["| run | accuracy (mean ± std) | Δ vs reference (paired) | FLOPs | FLOPs ratio | coverage (explore) | "
             "coverage (task) | MI proxy (train) |",
             "|---|---|---|---|---|---|---|---|"]
    pct = lambda x: "—" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    for name, r in summary["runs"].items():
        delta = "—" if "delta_mean" not in r else f"{100 * r['delta_mean']:+.1f} ± {100 * r['delta_std']:.1f}"
        mi = r.get("train_mi_proxy_acc")
        ratio = "—" if r.get("flops_ratio") is None else f"{r['flops_ratio']:.2f}"
        lines.append(f"| {name} | {100 * r['accuracy_mean']:.1f} ± {100 * r['accuracy_std']:.1f}% | {delta} | "
                     f"{r['flops']:.3g} | {ratio} | "
                     f"{pct(r.get('coverage'))} | {pct(r.get('coverage_task'))} | {pct(mi)} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ driver


def run_levers(cfg: LeversConfig, out: str | Path, use_cache: bool = True, progress: bool = False) -> dict:
    out = Path(out)
    claim_folder(out, "experiment-levers")
    t0 = time.perf_counter()
    per_seed: dict[str, list[dict]] = {}
    summary: dict[str, Any] = {"config": asdict(cfg), "seeds": list(range(cfg.seeds))}

    def write() -> None:
        summary["runs"] = aggregate(per_seed)
        summary["total_wall_s"] = time.perf_counter() - t0
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        (out / "report.md").write_text("# Training-loop levers\n\n" + markdown_table(summary) + "\n")

    if cfg.arith_runs:
        task = get_task(cfg.arith.task, cfg.arith.arith)
        build_base_organism(cfg.arith, out / "arith_base", use_cache=use_cache, progress=progress)
        per_seed["arith/base"] = [{**eval_arith(Policy.load(out / "arith_base"), task, cfg.eval_arith_problems,
                                                cfg.arith_rl.sampling.max_new_tokens), "flops": 0.0}]
        for seed in range(cfg.seeds):
            for name in cfg.arith_runs:
                console.print(f"arith/{name} seed {seed}")
                r = run_arith(cfg, name, out / "arith_base", task, seed, out / f"seed{seed}" / f"arith-{name}", progress)
                per_seed.setdefault(f"arith/{name}", []).append(r)
                write()
    if cfg.agent_runs or cfg.sft_orders:
        atask = AgentTask(cfg.agent.agent)
        build_agent_organism(cfg.agent, out / "agent_base", use_cache=use_cache, progress=progress)
        per_seed["agent/base"] = [{**eval_agent(Policy.load(out / "agent_base"), atask, cfg.eval_agent_problems,
                                                cfg.eval_T), "flops": 0.0}]
        for seed in range(cfg.seeds):
            for name in cfg.agent_runs:
                console.print(f"agent/{name} seed {seed}")
                r = run_agent(cfg, name, out / "agent_base", atask, seed, out / f"seed{seed}" / f"agent-{name}", progress)
                per_seed.setdefault(f"agent/{name}", []).append(r)
                write()
            for order in cfg.sft_orders:
                console.print(f"agent_sft/{order} seed {seed}")
                r = run_agent_sft(cfg, order, out / "agent_base", atask, seed,
                                  out / f"seed{seed}" / f"agent-sft-{order}", progress)
                per_seed.setdefault(f"agent_sft/{order}", []).append(r)
                write()
    write()
    return summary
