"""`forklens experiment sft-then-rl`: corrected SFT-then-RL vs buggy SFT and mixed-policy methods.

On the arithmetic organism, from the same base model and the same expert (gold) traces:

* ``sft-then-rl``: SFT on expert traces with the correct global token normalisation, then GRPO;
* ``sft-then-rl-short``: the same SFT, then a short GRPO run (``rl_short_steps``);
* ``sft[offload-accum]-then-rl`` and ``sft[mean-of-means]-then-rl``: SFT with a simulated bug, then GRPO;
* ``luffy``: GRPO from the base with one expert trace in every group, off-policy tokens trained with
  policy shaping (``mixed_policy`` objective);
* ``relift``: GRPO from the base, interleaved with SFT steps on the expert traces of the problems
  whose whole group failed.

Each method's held-out greedy accuracy (mean and std over seeds) and total FLOPs (SFT + RL, 6N per
trained token, 2N per sampled or scored token) go to ``summary.json`` and a markdown table; SFT-only
accuracies show what each bug costs SFT before RL.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from forklens.analysis.evaluate import EvalConfig, evaluate
from forklens.config import field
from forklens.errors import ConfigError
from forklens.objectives.mixed_policy import MixedPolicyLossConfig
from forklens.organisms.arith import OrganismConfig, build_base_organism
from forklens.policy import Policy
from forklens.tasks import get_task
from forklens.train.loop import TrainConfig
from forklens.train.run import RLConfig, grpo_loss, train
from forklens.train.sources import GRPOSource, InterleavedSFTSource, SFTSource
from forklens.runfolder import claim_folder, owned_rmtree

console = Console(stderr=True)

METHODS = ["sft-then-rl", "sft-then-rl-short", "sft[offload-accum]-then-rl", "sft[mean-of-means]-then-rl",
           "luffy", "relift"]


def _sft_default() -> TrainConfig:
    # one epoch over the expert set (256 problems / 64 per step) with K = 64 / 8 = 8 micro-steps
    return TrainConfig(max_steps=4, learning_rate=3e-4, micro_batch_size=8)


@dataclass
class SFTThenRLConfig:
    organism: OrganismConfig = field(default_factory=OrganismConfig, help="The base organism (as in the demo).")
    sft: TrainConfig = field(default_factory=_sft_default,
                             help="SFT on expert traces. micro_batch_size < sft_batch_size makes gradient "
                             "accumulation (K = sft_batch_size / micro_batch_size micro-steps), where the bugs act.")
    sft_batch_size: int = field(64, ge=1, help="Expert traces per SFT optimizer step.")
    n_expert_problems: int = field(256, ge=1, help="Training problems with expert traces (SFT data and mixed-policy pool).")
    rl: RLConfig = field(default_factory=RLConfig, help="GRPO settings shared by every method.")
    rl_short_steps: int = field(20, ge=1, help="GRPO steps of the short SFT-then-RL variant.")
    luffy_n_expert: int = field(1, ge=0, help="Expert traces per GRPO group (LUFFY).")
    luffy_shaping_gamma: float = field(0.1, gt=0, help="LUFFY policy-shaping gamma.")
    relift_sft_every: int = field(5, ge=1, help="ReLIFT: every N-th step is an SFT step on buffered hard problems.")
    relift_min_buffer: int = field(4, ge=1, help="ReLIFT: minimum buffered problems for an SFT step.")
    eval: EvalConfig = field(default_factory=EvalConfig, help="Held-out evaluation (greedy).")
    seeds: int = field(3, ge=1, help="Seeds per method.")
    seed: int = field(0, help="First seed; seeds are seed, seed+1, ...")


def _eval(model_dir: Path, task, cfg: SFTThenRLConfig, seed: int) -> float:
    ev = replace(cfg.eval, max_new_tokens=cfg.rl.sampling.max_new_tokens, seed=seed)
    return evaluate(Policy.load(model_dir), task, ev)["accuracy"]


def run_sft(start: Path, out: Path, task, cfg: SFTThenRLConfig, seed: int, bug: str) -> dict:
    problems = task.problems("train")[: cfg.n_expert_problems]
    pairs = [(p.prompt, task.expert_response(p)) for p in problems]
    policy = Policy.load(start)
    train_cfg = replace(cfg.sft, seed=seed, simulate_bug=bug)
    res = train(policy, "sft", None, SFTSource(pairs, cfg.sft_batch_size, seed), train_cfg, out,
                name=f"SFT[{bug}]" if bug != "none" else "SFT", model_dir=out / "model")
    return {"flops": res.flops, "wall_s": res.wall_s, "model": out / "model"}


def run_rl(start: Path, out: Path, task, cfg: SFTThenRLConfig, seed: int, steps: int, mode: str = "grpo") -> dict:
    """GRPO (``mode="grpo"``), LUFFY-style (``"luffy"``) or ReLIFT-style (``"relift"``) from ``start``."""
    rl = cfg.rl
    problems = task.problems("train")
    experts = problems[: cfg.n_expert_problems]
    loss = MixedPolicyLossConfig(**asdict(grpo_loss(rl)), shaping_gamma=cfg.luffy_shaping_gamma)
    policy = Policy.load(start)
    if mode == "luffy":
        source = GRPOSource(task, experts, rl.sampling, seed=seed, expert_fn=task.expert_response,
                            n_expert=cfg.luffy_n_expert)
    elif mode == "relift":
        source = InterleavedSFTSource(GRPOSource(task, experts, rl.sampling, seed=seed),
                                      task.expert_response, cfg.relift_sft_every, cfg.relift_min_buffer)
    else:
        source = GRPOSource(task, problems, rl.sampling, seed=seed)
    train_cfg = replace(rl.train, seed=seed, max_steps=steps, save_every=0)
    res = train(policy, "mixed_policy" if mode != "grpo" else "grpo", loss if mode != "grpo" else grpo_loss(rl),
                source, train_cfg, out, name={"grpo": "GRPO", "luffy": "LUFFY", "relift": "ReLIFT"}[mode],
                model_dir=out / "model")
    return {"flops": res.flops, "wall_s": res.wall_s, "model": out / "model"}


def run_sft_then_rl(cfg: SFTThenRLConfig, out: str | Path, methods: list[str] | None = None) -> dict:
    out = Path(out)
    claim_folder(out, "experiment-sft-then-rl")
    methods = methods or METHODS
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ConfigError(f"unknown method(s) {sorted(unknown)}; known: {', '.join(METHODS)}")
    task = get_task(cfg.organism.task, cfg.organism.arith)
    base = out / "base"
    build_base_organism(cfg.organism, base)
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    sft_only: dict[str, list[float]] = {}
    base_acc = _eval(base, task, cfg, cfg.seed)
    for k in range(cfg.seeds):
        seed = cfg.seed + k
        work = out / f"seed{seed}"
        sft_models = {}
        for bug in ("none", "offload-accum", "mean-of-means"):
            name = "sft-then-rl" if bug == "none" else f"sft[{bug}]-then-rl"
            if name not in methods and not (bug == "none" and "sft-then-rl-short" in methods):
                continue
            console.rule(f"seed {seed}: SFT (bug: {bug})")
            sft = run_sft(base, work / f"sft-{bug}", task, cfg, seed, bug)
            sft_models[bug] = sft
            sft_only.setdefault(bug, []).append(_eval(sft["model"], task, cfg, seed))
        plan = []
        if "sft-then-rl" in methods:
            plan.append(("sft-then-rl", sft_models["none"], cfg.rl.train.max_steps, "grpo"))
        if "sft-then-rl-short" in methods:
            plan.append(("sft-then-rl-short", sft_models["none"], cfg.rl_short_steps, "grpo"))
        for bug in ("offload-accum", "mean-of-means"):
            if f"sft[{bug}]-then-rl" in methods:
                plan.append((f"sft[{bug}]-then-rl", sft_models[bug], cfg.rl.train.max_steps, "grpo"))
        for mode in ("luffy", "relift"):
            if mode in methods:
                plan.append((mode, None, cfg.rl.train.max_steps, mode))
        for name, sft, steps, mode in plan:
            console.rule(f"seed {seed}: {escape(name)}")
            start = sft["model"] if sft else base
            rl_dir = work / name.replace("[", "-").replace("]", "")
            rl = run_rl(start, rl_dir, task, cfg, seed, steps, mode)
            acc = _eval(rl["model"], task, cfg, seed)
            flops = rl["flops"] + (sft["flops"] if sft else 0.0)
            wall = rl["wall_s"] + (sft["wall_s"] if sft else 0.0)
            runs[name].append({"seed": seed, "accuracy": acc, "flops": flops, "wall_s": wall,
                               "rl_steps": steps})
            owned_rmtree(rl_dir / "checkpoints")

    def agg(xs: list[float]) -> tuple[float, float]:
        return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)

    summary = {"task": cfg.organism.task, "seeds": [cfg.seed + k for k in range(cfg.seeds)],
               "base_accuracy": base_acc, "methods": {}, "sft_only": {}, "config": asdict(cfg)}
    for name, rs in runs.items():
        if not rs:
            continue
        m, s = agg([r["accuracy"] for r in rs])
        summary["methods"][name] = {"accuracy_mean": m, "accuracy_std": s,
                                    "flops": statistics.mean(r["flops"] for r in rs),
                                    "wall_s": statistics.mean(r["wall_s"] for r in rs), "runs": rs}
    for bug, accs in sft_only.items():
        m, s = agg(accs)
        summary["sft_only"][bug] = {"accuracy_mean": m, "accuracy_std": s, "runs": accs}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "table.md").write_text(markdown_table(summary))
    return summary


def markdown_table(summary: dict) -> str:
    lines = ["| method | held-out accuracy (mean ± std) | total FLOPs | wall s |", "| --- | --- | --- | --- |"]
    for name, m in summary["methods"].items():
        lines.append(f"| {name} | {100 * m['accuracy_mean']:.1f} ± {100 * m['accuracy_std']:.1f} | "
                     f"{m['flops']:.3g} | {m['wall_s']:.0f} |")
    lines += ["", "| SFT only (before RL) | held-out accuracy |", "| --- | --- |"]
    for bug, m in summary["sft_only"].items():
        lines.append(f"| SFT, bug = {bug} | {100 * m['accuracy_mean']:.1f} ± {100 * m['accuracy_std']:.1f} |")
    lines.append(f"\nbase organism: {100 * summary['base_accuracy']:.1f}%  (seeds {summary['seeds']})")
    return "\n".join(lines) + "\n"
