"""`forklens demo`: organism -> GRPO -> held-out evaluation -> token diff, in one command."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from rich.console import Console

from forklens.analysis.diff import run_diff
from forklens.analysis.evaluate import EvalConfig, evaluate
from forklens.config import field
from forklens.organisms.arith import OrganismConfig, build_base_organism
from forklens.policy import Policy
from forklens.tasks import get_task
from forklens.train.run import RLConfig, run_grpo
from forklens.runfolder import claim_folder, owned_rmtree

console = Console(stderr=True)


@dataclass
class DemoConfig:
    organism: OrganismConfig = field(default_factory=OrganismConfig, help="The base organism.")
    rl: RLConfig = field(default_factory=RLConfig, help="GRPO from the base organism.")
    eval: EvalConfig = field(default_factory=EvalConfig, help="Held-out evaluation (greedy by default).")
    diff: bool = field(True, help="End with the token-level diff of base vs RL.")
    diff_prompts: int = field(100, ge=1, help="Held-out prompts the diff uses.")
    seed: int = field(0, help="Seed of the organism, the rollouts and the evaluation.")


def run_demo(cfg: DemoConfig, out: str | Path, use_cache: bool = True, progress: bool = True) -> dict:
    out = claim_folder(out, "demo")
    t_start = time.perf_counter()
    org = replace(cfg.organism, seed=cfg.seed)
    task = get_task(org.task, org.arith)

    console.rule("[bold]1/4 base organism")
    base_info = build_base_organism(org, out / "base", use_cache=use_cache, progress=progress)
    console.print(f"base organism: {'reused from cache ' + base_info['cache_dir'] if base_info['cache_hit'] else 'pretrained'}"
                  f" ({base_info['steps']} SFT steps, final loss {base_info['final_loss']:.4f})")

    console.rule("[bold]2/4 GRPO")
    rl_work = out / "rl_train"
    rl_dir = out / "rl"
    owned_rmtree(rl_work)
    owned_rmtree(rl_dir)
    rl_info = run_grpo(out / "base", task, cfg.rl, rl_work, seed=cfg.seed, progress=progress, model_dir=rl_dir)

    console.rule("[bold]3/4 held-out evaluation")
    ev = replace(cfg.eval, max_new_tokens=cfg.rl.sampling.max_new_tokens, seed=cfg.seed)
    base_policy, rl_policy = Policy.load(out / "base"), Policy.load(rl_dir)
    base_eval, rl_eval = evaluate(base_policy, task, ev), evaluate(rl_policy, task, ev)

    summary = {
        "task": org.task,
        "seed": cfg.seed,
        "base": {"accuracy": base_eval["accuracy"], "path": str(out / "base"),
                 "pretrain_steps": base_info["steps"], "pretrain_flops": base_info["flops"],
                 "pretrain_wall_s": base_info["wall_s"], "cache_hit": base_info["cache_hit"]},
        "rl": {"accuracy": rl_eval["accuracy"], "path": str(rl_dir)},
        "eval": {k: base_eval[k] for k in ("split", "n_problems", "n_per_problem", "temperature")},
        "train": {"steps": rl_info["steps"], "flops": rl_info["flops"], "wall_s": rl_info["wall_s"],
                  "final_reward_mean": rl_info["last"].get("reward_mean"),
                  "metrics": str(rl_work / "metrics.jsonl")},
        "config": asdict(cfg),
    }
    (out / "eval_base.json").write_text(json.dumps(base_eval, indent=2))
    (out / "eval_rl.json").write_text(json.dumps(rl_eval, indent=2))

    console.rule("[bold]4/4 token diff")
    summary["diff"] = run_demo_diff(cfg, base_policy, rl_policy, task, out) if cfg.diff else None

    summary["total_wall_s"] = time.perf_counter() - t_start
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def run_demo_diff(cfg: DemoConfig, base_policy, rl_policy, task, out: Path) -> dict:
    """The token-level diff of the demo's base and RL models on held-out prompts (see `forklens diff`)."""
    problems = task.problems("test")[: cfg.diff_prompts]
    prompts = [{"id": p.id, "prompt": p.prompt, "answer": p.answer} for p in problems]
    by_id = {p.id: p for p in problems}
    summary = run_diff(base_policy, rl_policy, prompts, responses="rl-greedy",
                       max_new_tokens=cfg.rl.sampling.max_new_tokens, top_k=5, seed=cfg.seed,
                       verifier=lambda rec, text: task.verify(by_id[rec["id"]], text) > 0, out_dir=out / "diff")
    keys = ("n_tokens", "n_responses", "unshifted_frac", "reranked_frac", "shifted_frac",
            "mean_rank_at_disagreement", "entropy_ratio")
    return {**{k: summary.get(k) for k in keys}, "report": str(out / "diff" / "report.html")}
