"""`forklens experiment rewards`: which reward? GRPO from one base with outcome and process rewards.

On the agent organism (multi-hop lookups through a tool; see :mod:`forklens.tasks.agent`), from the
cached agent base organism, for each seed, GRPO with the same sampling, loss and step budget and a
different reward (each component logged as ``reward/NAME`` in the run's metrics):

==================== ===========================================================================
``outcome``          the exact verifier (1 if the final answer is right) = MaR's CR alone
``outcome+mar``      outcome + KMR + RMR (MaR's ``R = KMR + RMR + CR``, :class:`AgentGrader`)
``outcome+confidence`` outcome - P (premature-confidence shaping, ``m`` forced answers per cut)
``outcome+milestones`` outcome + milestone shaping (``gamma^T Phi(s_T)``, fraction of hops reached)
``all``              outcome + KMR + RMR - P + milestones
``mar-no-cr``        KMR + RMR (MaR without its correctness term)
``process-only``     KMR + RMR - P + milestones (every process reward, no correctness term)
==================== ===========================================================================

Each model is evaluated on the held-out test questions at the training cap ``T``: pass@1 as the mean
of ``eval_samples`` episodes per question at temperature 1 (one fixed sampling seed).
FLOPs: the trainer's count (2N per sampled token, 6N per trained token) plus 2N per token the
confidence reward's probe ran through the policy. ``summary.json``::

    {"runs": {NAME: {"accuracy_mean", "accuracy_std", "flops", "wall_s", "reward_fns", "per_seed"}},
     "base": {"accuracy"}, "seeds": [...], "config": {...}}

``accuracy_std`` is the sample standard deviation over seeds (0 with one seed); ``flops`` and
``wall_s`` are means over seeds. The seed-0 model of each run is kept in ``OUT/models/NAME``.

``family`` other than ``agent`` (``--set family=shortcut``) runs on a zoo family whose task is a
repeated-addition chain, precondition and control variants, with exact chain grading
(:mod:`forklens.experiments.rewards_zoo`, its own summary and an optional stamped artifact).
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from rich.console import Console

from forklens.analysis.evaluate import EvalConfig, evaluate
from forklens.config import field
from forklens.errors import ConfigError
from forklens.experiments.boundary import AgentRLConfig
from forklens.experiments.rewards_zoo import markdown_table as zoo_markdown_table
from forklens.experiments.rewards_zoo import make_rewards, run_rewards_zoo
from forklens.organisms.agent import AgentOrganismConfig, build_agent_organism
from forklens.policy import Policy
from forklens.rewards.metacognition import AgentGrader
from forklens.rewards.milestones import milestone_reward
from forklens.tasks import get_task
from forklens.train.loop import TrainConfig
from forklens.train.run import RLConfig, grpo_loss, train
from forklens.train.sources import GRPOSource, SamplingConfig
from forklens.runfolder import claim_folder, owned_rmtree

console = Console(stderr=True)

RUNS: dict[str, list[str]] = {
    "outcome": ["outcome"],
    "outcome+mar": ["outcome", "kmr", "rmr"],
    "outcome+confidence": ["outcome", "confidence"],
    "outcome+milestones": ["outcome", "milestones"],
    "all": ["outcome", "kmr", "rmr", "confidence", "milestones"],
    "mar-no-cr": ["kmr", "rmr"],
    "process-only": ["kmr", "rmr", "confidence", "milestones"],
}


def _rl_default() -> AgentRLConfig:
    """The boundary experiment's agent GRPO at half its steps (30 x 16 questions x 8 episodes at T=5):
    the seven runs x three seeds, with the probe inside three of them, then fit in about 20 minutes
    on one CPU core. Fixed before any run was measured."""
    rl = AgentRLConfig()
    rl.train.max_steps = 30
    rl.train.save_every = 0
    return rl


def _zoo_rl_default() -> RLConfig:
    """GRPO of the zoo path: the forks experiment's recipe (8 prompts x 8 samples, learning rate 1e-4) for
    30 steps; max_new_tokens is set per variant (longest gold test trace + token_margin). Fixed before
    any run on the shortcut family was measured."""
    return RLConfig(train=TrainConfig(max_steps=30, learning_rate=1e-4, micro_batch_size=64, save_every=0),
                    sampling=SamplingConfig(prompts_per_step=8, group_size=8))


@dataclass
class RewardsExperimentConfig:
    family: str = field("agent", help="Organism: agent (the agent base organism, the runs of this module) or a zoo "
                        "family whose task is a repeated-addition chain (shortcut, lengths; experiments/rewards_zoo.py).")
    variants: list[str] = field(default_factory=list, help="Zoo path: variants of the family, in order (empty = all).")
    organism: list[str] = field(default_factory=list, help="Zoo path: dotted overrides of every variant's family "
                                "config (e.g. model.hidden_size=64).")
    zoo_rl: RLConfig = field(default_factory=_zoo_rl_default, help="Zoo path: GRPO settings shared by every run.")
    token_margin: int = field(8, ge=0, help="Zoo path: max new tokens = longest gold test trace + this.")
    zoo_samples: int = field(0, ge=0, help="Zoo path: responses per held-out problem at temperature 1 (sampling seed "
                             "0) for the sampled_* measures beside the greedy ones (0 = greedy only).")
    artifact: str = field("", help="Zoo path: also write a stamped artifact folder here (e.g. results/shortcut-rewards).")
    agent: AgentOrganismConfig = field(default_factory=AgentOrganismConfig,
                                       help="The agent base organism (the boundary experiment's, cached).")
    rl: AgentRLConfig = field(default_factory=_rl_default,
                              help="GRPO settings shared by every run (the boundary experiment's agent GRPO, "
                              "30 steps).")
    confidence_m: int = field(4, ge=1, help="Forced answers per truncation point in the confidence reward during "
                              "training (the paper's probe uses 10; 4 keeps the run cheap).")
    milestone_gamma: float = field(1.0, gt=0, le=1, help="Discount of the milestone shaping.")
    runs: list[str] = field(default_factory=lambda: list(RUNS), help="Runs (comma-separated names of RUNS).")
    eval_problems: int = field(0, ge=0, help="Held-out test questions (0 = the whole test split).")
    eval_samples: int = field(8, ge=1, help="Episodes per test question (temperature 1); accuracy = their mean (pass@1).")
    seeds: int = field(3, ge=1, help="Training seeds (overridden by --seeds).")
    seed: int = field(0, help="First seed; seeds are seed, seed+1, ...")


def reward_functions(names: list[str], task, policy, cfg: RewardsExperimentConfig, seed: int) -> list:
    return make_rewards(names, task, policy, AgentGrader(task), cfg.confidence_m, seed,
                        {"milestones": lambda: milestone_reward(task, cfg.milestone_gamma)})


def evaluate_agent(policy, task, limit: int, T: int, turn_tokens: int, n: int = 8, seed: int = 0) -> dict:
    """Held-out accuracy (mean over ``n`` episodes per question at temperature 1, i.e. pass@1) and tool
    calls per episode at cap ``T``, on the first ``limit`` test questions (0 = all). Sampled rather
    than greedy: the base organism continues a chain with probability about 0.5, so a greedy decision
    flips with any nudge and hides differences."""
    ev = evaluate(policy, task, EvalConfig(n=n, temperature=1.0, T=T, turn_tokens=turn_tokens, seed=seed, limit=limit))
    return {"accuracy": ev["accuracy"], "problems": ev["n_problems"] * n, "tool_calls_mean": ev["tool_calls_mean"]}


def run_one(name: str, base_dir: Path, task, cfg: RewardsExperimentConfig, seed: int, work: Path,
            progress: bool = True) -> dict:
    """GRPO with run ``name``'s rewards from ``base_dir``; the model is saved to ``work / 'model'``."""
    policy = Policy.load(base_dir)
    fns = reward_functions(RUNS[name], task, policy, cfg, seed)  # the confidence reward probes this policy
    source = GRPOSource(task, task.problems("train"), cfg.rl.sampling, reward_fns=fns, seed=seed)
    res = train(policy, "grpo", grpo_loss(cfg.rl), source, replace(cfg.rl.train, seed=seed), work,
                name=f"GRPO {name} seed {seed}", progress=progress, model_dir=work / "model")
    probe_tokens = sum(getattr(f, "tokens_processed", 0) for f in fns)
    ev = evaluate_agent(policy, task, cfg.eval_problems, cfg.rl.sampling.T, cfg.rl.sampling.turn_tokens,
                        cfg.eval_samples)
    return {"seed": seed, **ev, "flops": res.flops + 2 * res.n_params * probe_tokens,
            "probe_tokens": probe_tokens, "wall_s": res.wall_s, "steps": res.steps,
            "final": {k: v for k, v in res.last.items() if k == "reward_mean" or k.startswith("reward/")},
            "metrics": str(res.metrics_file)}


def _std(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def run_rewards(cfg: RewardsExperimentConfig, out: str | Path, progress: bool = True) -> dict:
    if cfg.family != "agent":
        return run_rewards_zoo(cfg, out, RUNS, progress)
    unknown = [r for r in cfg.runs if r not in RUNS]
    if unknown or not cfg.runs:
        raise ConfigError(f"unknown runs {unknown}; choose from {list(RUNS)}")
    if cfg.seeds < 1:
        raise ConfigError(f"seeds must be >= 1, got {cfg.seeds}")
    out = Path(out)
    claim_folder(out, "experiment-rewards")
    t0 = time.perf_counter()
    org = replace(cfg.agent, seed=0)  # one base for every seed and run
    task = get_task("agent", org.agent)
    console.rule("[bold]agent base organism")
    base_info = build_agent_organism(org, out / "base", use_cache=True, progress=progress)
    problems = task.problems("test")[: cfg.eval_problems or None]
    base_eval = evaluate_agent(Policy.load(out / "base"), task, cfg.eval_problems, cfg.rl.sampling.T,
                               cfg.rl.sampling.turn_tokens, cfg.eval_samples)
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    per: dict[str, list[dict]] = {r: [] for r in cfg.runs}
    summary: dict = {}

    def write() -> None:
        runs = {}
        for r, rows in per.items():
            if rows:
                accs = [x["accuracy"] for x in rows]
                runs[r] = {"accuracy_mean": statistics.mean(accs), "accuracy_std": _std(accs),
                           "flops": statistics.mean(x["flops"] for x in rows),
                           "wall_s": statistics.mean(x["wall_s"] for x in rows),
                           "tool_calls_mean": statistics.mean(x["tool_calls_mean"] for x in rows),
                           "reward_fns": RUNS[r], "per_seed": rows}
        summary.clear()
        summary.update({"task": "agent", "seeds": seeds, "base": {**base_eval, "cache_hit": base_info["cache_hit"]},
                        "runs": runs, "eval": {"T": cfg.rl.sampling.T, "temperature": 1.0, "samples": cfg.eval_samples,
                                               "problems": len(problems)},
                        "total_wall_s": time.perf_counter() - t0, "config": asdict(cfg)})
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        (out / "report.md").write_text(markdown_table(summary))

    for s in seeds:
        for r in cfg.runs:
            console.rule(f"[bold]seed {s}: {r}")
            work = out / "train" / f"{r}-seed{s}"
            owned_rmtree(work)
            row = run_one(r, out / "base", task, cfg, s, work, progress)
            if s == seeds[0]:
                dst = out / "models" / r
                owned_rmtree(dst)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(work / "model"), dst)
            owned_rmtree(work / "model")
            owned_rmtree(work / "checkpoints")
            per[r].append(row)
            write()
    return summary


def markdown_table(summary: dict) -> str:
    if summary.get("family", "agent") != "agent":
        return zoo_markdown_table(summary)
    lines = [f"Agent organism, GRPO from one base, held-out pass@1 at T={summary['eval']['T']} "
             f"({summary['eval']['samples']} episodes at temperature 1 per question, {summary['eval']['problems']} "
             f"questions), seeds {summary['seeds']} (base: "
             f"{summary['base']['accuracy']:.3f}).", "",
             "| run | rewards | accuracy (mean ± std) | tool calls / episode | FLOPs | train wall s |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, r in summary["runs"].items():
        lines.append(f"| {name} | {' + '.join(r['reward_fns'])} | {r['accuracy_mean']:.3f} ± {r['accuracy_std']:.3f} "
                     f"| {r['tool_calls_mean']:.2f} | {r['flops']:.3g} | {r['wall_s']:.0f} |")
    return "\n".join(lines) + "\n"
