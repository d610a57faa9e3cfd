"""`forklens experiment boundary-zoo`: the agent part of the boundary experiment on a zoo family,
precondition vs control variants, over seeds (claim E011, arXiv 2604.14877; docs/boundary.md).

For every variant of ``family`` (default ``agent-deep``: ``deep`` is the precondition, ``coin`` the
control): one cached base organism (``base_seed``), then per seed ``s`` GRPO and SFT from it
(:func:`forklens.experiments.boundary.run_agent_grpo` / ``run_agent_sft``: binary exact-match reward,
group 8, trained at the cap ``T`` on the *train* split, whose depths the family sets), then ``n`` fresh
episodes per test question and model at cap ``T`` with sampling seed ``s``, and pass@k (unbiased) at
``k`` = 1, 2, 4, ..., n. Boundary sets are compared at ``k = n``: ``rl_not_base`` is the share of test
questions RL solves in ``n`` episodes and the base (resampled with the same seed) does not.

The base's own chance of the full chain is measured exactly, not sampled (:func:`gold_probabilities`):
the teacher-forced probability of each test question's gold episode, and of the right call at each hop
given a right prefix. The first says whether a question lies outside the base's reach at ``k = n``
(precondition: far below 1/256); the second whether the base can do each lookup at every test depth
(capability) or not.

Outputs in ``--out``: ``summary.json``; per variant the base and per-seed training folders; with
``artifact=results/NAME`` the stamped artifact (summary, RL/SFT metrics, ``plots/pass_at_k.png``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from forklens.analysis.curves import bootstrap_ci, paired_difference, summarize_seeds
from forklens.analysis.passk import pass_at_k
from forklens.analysis.passk_samples import generate_samples
from forklens.config import field
from forklens.errors import ConfigError
from forklens.experiments.boundary import (AgentRLConfig, AgentSFTConfig, powers_of_two, run_agent_grpo,
                                           run_agent_sft)
from forklens.organisms import get_family
from forklens.policy import Policy
from forklens.report.artifacts import make_stamp, plots_dir, write_artifact
from forklens.runfolder import claim_folder, owned_rmtree
from forklens.train.episode_source import trajectory_ids
from forklens.train.loop import TrainConfig, read_metrics

console = Console(stderr=True)
MODELS = ("base", "rl", "sft")


def _zoo_rl() -> AgentRLConfig:
    return AgentRLConfig(train=TrainConfig(max_steps=40, learning_rate=3e-4, micro_batch_size=128, save_every=0))


def _zoo_sft() -> AgentSFTConfig:
    return AgentSFTConfig(train=TrainConfig(max_steps=30, learning_rate=3e-4, micro_batch_size=64, save_every=0))


@dataclass
class ZooPassKConfig:
    n: int = field(64, ge=1, help="Fresh episodes per test question and model; k runs over powers of 2 up to n.")
    T: int = field(6, ge=1, help="Tool-call cap of the samples and of RL training (>= the deepest test question).")
    temperature: float = field(1.0, gt=0, help="Sampling temperature of the pass@k episodes.")
    turn_tokens: int = field(12, ge=1, help="Token cap of one turn.")
    problems: int = field(0, ge=0, help="Test questions (0 = the whole test split).")


@dataclass
class BoundaryZooConfig:
    family: str = field("agent-deep", help="Organism family (forklens organism list).")
    variants: list[str] = field(default_factory=lambda: ["deep", "coin"],
                                help="Variants to run; the first precondition and first control are contrasted.")
    overrides: list[str] = field(default_factory=list, help="Dotted KEY=VALUE overrides of every variant's organism "
                                 "config (e.g. pretrain.max_steps=30 for a plumbing run).")
    base_seed: int = field(0, help="Seed of each variant's base organism (one cached base per variant).")
    seed: int = field(0, help="First RL/SFT/sampling seed; seeds are seed, seed+1, ...")
    seeds: int = field(5, ge=1, help="Seeds per variant (overridden by --seeds).")
    rl: AgentRLConfig = field(default_factory=_zoo_rl, help="GRPO on the train split (trained at passk.T).")
    sft: AgentSFTConfig = field(default_factory=_zoo_sft, help="SFT on the gold trajectories of the train split.")
    passk: ZooPassKConfig = field(default_factory=ZooPassKConfig, help="The PASS@(k, T) samples.")
    level: float = field(0.95, gt=0, lt=1, help="Bootstrap interval level over seeds.")
    artifact: str = field("", help="Also write a stamped artifact folder here (e.g. results/boundary-zoo).")


# ------------------------------------------------------------------------------------ precondition


def gold_probabilities(policy: Policy, task, problems) -> dict[str, Any]:
    """The base's exact probability of each question's gold episode (teacher-forced, the model's own
    tokens only), summarised per depth, and the mean probability of the right call at each hop index
    (1-based) given a right prefix; ``threshold`` is 1/256."""
    trajs = [(p.prompt, task.gold_trajectory(p)) for p in problems]
    triples = [trajectory_ids(policy, t) for t in trajs]
    scored = policy.score([p for p, _, _ in triples], [r for _, r, _ in triples])
    per_depth: dict[str, list[float]] = {}
    per_hop: dict[str, list[float]] = {}
    for prob, (prompt, segs), (_, resp, env), sc in zip(problems, trajs, triples, scored):
        lp = sc.logprob.double()
        own = torch.tensor([1 - e for e in env], dtype=torch.bool)
        per_depth.setdefault(str(prob.meta["depth"]), []).append(math.exp(float(lp[own].sum())))
        pos, hop = 0, 0
        for text, is_env in segs:
            n_tok = len(policy.tokenizer(text, add_special_tokens=False)["input_ids"])
            if not is_env and text.startswith("?"):
                hop += 1
                per_hop.setdefault(str(hop), []).append(math.exp(float(lp[pos:pos + n_tok].sum())))
            pos += n_tok
    threshold = 1 / 256
    every = [v for vs in per_depth.values() for v in vs]
    return {"threshold": threshold,
            "gold_prob_mean": sum(every) / len(every), "gold_prob_max": max(every),
            "below_threshold_frac": sum(v < threshold for v in every) / len(every),
            "by_depth": {d: {"questions": len(vs), "gold_prob_mean": sum(vs) / len(vs), "gold_prob_max": max(vs),
                             "below_threshold_frac": sum(v < threshold for v in vs) / len(vs)}
                         for d, vs in sorted(per_depth.items())},
            "right_call_prob_by_hop": {h: sum(vs) / len(vs) for h, vs in sorted(per_hop.items(), key=lambda x: int(x[0]))},
            "right_call_prob_min": min(sum(vs) / len(vs) for vs in per_hop.values())}


# ------------------------------------------------------------------------------------ one seed


def seed_metrics(records: list[dict], problems, n: int) -> dict[str, Any]:
    """Per model: pass@k means, share solved at k = n (overall and per depth); boundary differences at
    k = n as shares of the test questions; per-question correct counts."""
    counts = {m: {p.id: 0 for p in problems} for m in MODELS}
    for r in records:
        counts[r["model"]][r["problem_id"]] += bool(r["correct"])
    ks = powers_of_two(n)
    depth = {p.id: str(p.meta["depth"]) for p in problems}
    out: dict[str, Any] = {"correct": {m: [counts[m][p.id] for p in problems] for m in MODELS}}
    solved = {m: {pid for pid, c in counts[m].items() if c > 0} for m in MODELS}
    for m in MODELS:
        out[m] = {"pass_at_k": {str(k): sum(pass_at_k(n, c, k) for c in counts[m].values()) / len(problems)
                                for k in ks},
                  "solved": len(solved[m]) / len(problems),
                  "solved_by_depth": {d: sum(pid in solved[m] for pid in depth if depth[pid] == d)
                                      / sum(1 for pid in depth if depth[pid] == d) for d in sorted(set(depth.values()))}}
    for m in ("rl", "sft"):
        out[f"{m}_not_base"] = len(solved[m] - solved["base"]) / len(problems)
        out[f"base_not_{m}"] = len(solved["base"] - solved[m]) / len(problems)
        out[f"{m}_minus_base_solved"] = out[m]["solved"] - out["base"]["solved"]
    return out


def run_seed(cfg: BoundaryZooConfig, task, base_dir: Path, out: Path, seed: int, problems) -> tuple[dict, dict]:
    rl_cfg = replace(cfg.rl, sampling=replace(cfg.rl.sampling, T=cfg.passk.T, turn_tokens=cfg.passk.turn_tokens))
    models, train = {"base": base_dir}, {}
    for name, fn, c in (("rl", run_agent_grpo, rl_cfg), ("sft", run_agent_sft, cfg.sft)):
        work = out / f"{name}_train"
        owned_rmtree(work)
        info = fn(base_dir, task, c, work, seed, False)
        owned_rmtree(work / "checkpoints")
        models[name] = Path(info["model_dir"])
        train[name] = {"steps": info["steps"], "flops": info["flops"], "wall_s": info["wall_s"],
                       "final": {k: v for k, v in info["last"].items() if k in ("loss", "reward_mean")},
                       "metrics": str(work / "metrics.jsonl")}
    g = cfg.passk
    records: list[dict] = []
    for name, path in models.items():
        records += generate_samples(Policy.load(path), task, problems, name, (g.T,), g.n, g.temperature, 1.0, seed,
                                    turn_tokens=g.turn_tokens)
    return seed_metrics(records, problems, g.n), train


# ------------------------------------------------------------------------------------ the experiment


def contrast(variants: dict[str, dict], roles: dict[str, str], level: float) -> dict[str, Any] | None:
    """Precondition minus control, paired by seed, for the boundary differences."""
    pre = next((v for v in variants if roles[v] == "precondition"), None)
    ctl = next((v for v in variants if roles[v] == "control"), None)
    if pre is None or ctl is None:
        return None
    out: dict[str, Any] = {"precondition": pre, "control": ctl}
    for key in ("rl_not_base", "sft_not_base", "rl_minus_base_solved", "sft_minus_base_solved"):
        a = dict(zip(variants[pre]["seeds"], variants[pre]["per_seed"][key]))
        b = dict(zip(variants[ctl]["seeds"], variants[ctl]["per_seed"][key]))
        out[key] = paired_difference(a, b, level, resamples=2000).as_dict()
    return out


def plot(variants: dict[str, dict], stem: Path, n: int, T: int) -> list[Path]:
    from forklens.report.plots import plot_pass_at_k  # matplotlib: loaded only when plotting

    curves = {f"{v}/{m}": {T: {int(k): s["aggregate"][f"{m}.pass_at_k.{k}"]["mean"] for k in map(str, powers_of_two(n))}}
              for v, s in variants.items() for m in MODELS}
    return plot_pass_at_k(curves, stem, title=f"PASS@(k, T={T}) on held-out deeper questions, mean over seeds")


def run_boundary_zoo(cfg: BoundaryZooConfig, out: str | Path, progress: bool = True) -> dict:
    out = Path(out)
    family = get_family(cfg.family)
    for v in cfg.variants:
        family.variant(v)  # unknown variants fail before anything is built
    if not cfg.variants:
        raise ConfigError("variants: name at least one variant")
    claim_folder(out, "experiment-boundary-zoo")
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    stamp = make_stamp(Path(cfg.artifact).name, seeds) if cfg.artifact else None
    t0 = time.perf_counter()
    summary: dict[str, Any] = {"paper": "arXiv 2604.14877 (PASS@(k,T)); see docs/boundary.md", "family": cfg.family,
                               "seeds": seeds, "config": asdict(cfg), "variants": {}}
    metrics: dict[str, list] = {}
    for v in cfg.variants:
        org = replace(family.variant_config(v, overrides=cfg.overrides), seed=cfg.base_seed)
        task = family.task(org)
        if max(p.meta["depth"] for p in task.problems("test")) > cfg.passk.T:
            raise ConfigError(f"passk.T={cfg.passk.T} is below the deepest test question of {cfg.family}/{v}")
        problems = task.problems("test")[: cfg.passk.problems or None]
        console.rule(f"[bold]{cfg.family}/{v}: base organism")
        base_info = family.build(org, out / v / "base", progress=progress)  # org has the variant and overrides
        pre = gold_probabilities(Policy.load(out / v / "base"), task, problems)
        per_seed, train = {}, {}
        for s in seeds:
            console.rule(f"[bold]{cfg.family}/{v}: seed {s} (GRPO, SFT, {cfg.passk.n} episodes per question)")
            per_seed[s], train[s] = run_seed(cfg, task, out / v / "base", out / v / f"seed{s}", s, problems)
            for m in ("rl", "sft"):
                metrics[f"{v}-{m}-seed{s}"] = read_metrics(Path(train[s][m]["metrics"]))
        agg = summarize_seeds({s: {k: x for k, x in r.items() if k != "correct"} for s, r in per_seed.items()},
                              cfg.level)
        summary["variants"][v] = {
            "role": family.variant(v).role, "about": family.variant(v).about, "overrides": family.variant(v).overrides,
            "base": {"cache_hit": base_info["cache_hit"], "pretrain_steps": base_info["steps"],
                     "pretrain_flops": base_info["flops"]},
            "test": {"questions": len(problems), "depths": sorted({p.meta["depth"] for p in problems}),
                     "per_depth": {str(d): sum(p.meta["depth"] == d for p in problems)
                                   for d in sorted({p.meta["depth"] for p in problems})}},
            "train_depths": sorted({p.meta["depth"] for p in task.problems("train")}),
            "precondition": pre, "seeds": seeds, "per_seed": agg["per_seed"], "aggregate": agg["aggregate"],
            "correct": {str(s): r["correct"] for s, r in per_seed.items()},
            "train": {str(s): t for s, t in train.items()},
            "rl_final_reward": bootstrap_ci([train[s]["rl"]["final"].get("reward_mean", 0.0) for s in seeds],
                                            cfg.level, resamples=2000).as_dict()}
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    summary["contrast"] = contrast(summary["variants"], {v: family.variant(v).role for v in cfg.variants}, cfg.level)
    summary["wall_s"] = time.perf_counter() - t0
    figs = plot(summary["variants"], out / "pass_at_k", cfg.passk.n, cfg.passk.T)
    summary["figures"] = [str(f) for f in figs]
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if cfg.artifact:
        art = {**summary, "figures": ["plots/pass_at_k.png", "plots/pass_at_k.svg"]}
        folder = write_artifact(Path(cfg.artifact).parent, Path(cfg.artifact).name, art, seeds=seeds, stamp=stamp,
                                metrics=metrics)
        plot(summary["variants"], plots_dir(folder) / "pass_at_k", cfg.passk.n, cfg.passk.T)
        console.print(f"wrote the stamped artifact {folder}", highlight=False)
    return summary


def markdown_table(summary: dict) -> str:
    """Per variant: solved at k = n (base / RL / SFT) and the boundary differences, mean [CI] over seeds."""
    def ci(agg, key):
        x = agg[key]
        return f"{x['mean']:.3f} [{x['low']:.3f}, {x['high']:.3f}]"
    lines = ["| variant | role | base gold prob (mean) | base solved | RL solved | SFT solved | RL not base | "
             "SFT not base | base not RL |", "|" + "---|" * 9]
    for v, s in summary["variants"].items():
        a = s["aggregate"]
        lines.append(f"| {v} | {s['role']} | {s['precondition']['gold_prob_mean']:.2e} | {ci(a, 'base.solved')} | "
                     f"{ci(a, 'rl.solved')} | {ci(a, 'sft.solved')} | {ci(a, 'rl_not_base')} | "
                     f"{ci(a, 'sft_not_base')} | {ci(a, 'base_not_rl')} |")
    return "\n".join(lines) + "\n"
