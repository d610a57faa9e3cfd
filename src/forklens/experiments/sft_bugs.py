"""`forklens experiment sft-bugs`: do the two silent SFT bugs (arXiv:2604.23747) cost accuracy where their
mechanism can act, and not where it cannot?

For each variant of an organism family (default ``lengths``: ``varied``, 1-11 addition steps, the precondition,
and ``equal``, 6 steps, the control), from that variant's base organism and ONE pool of expert (gold)
traces, every seed trains three SFT arms that differ only in ``simulate_bug``
(:class:`~forklens.train.loop.TrainConfig`): ``none`` (the global token mean), ``offload-accum``
(the optimizer sees the sum of micro-batch 0's and the last micro-batch's gradients, as DeepSpeed's
CPU-offloaded ZeRO-1/2 accumulation buffer did) and ``mean-of-means`` (each micro-batch's token mean,
averaged over the K micro-batches, as OpenRLHF's loss aggregation did). Within a seed the arms see
the same batches in the same order and start from the same weights, so their differences are paired.

Every final model is evaluated greedily on a validation slice held out from the END of the training
split (disjoint from the pool). ``summary.variants.<v>.bug_cost.<bug>`` is the paired difference
(bug - none) of validation accuracy over seeds; ``summary.contrast.<bug>`` is the paired difference of
those costs between the first two variants (precondition - control). Accuracy by step count and
the expert traces' trained-token counts are reported for reading, not for a verdict.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from rich.console import Console

from forklens.analysis.curves import bootstrap_ci, paired_difference
from forklens.analysis.evaluate import EvalConfig, evaluate
from forklens.config import field
from forklens.errors import ConfigError
from forklens.experiments.sft_then_rl import split_problems
from forklens.organisms import get_family
from forklens.policy import Policy
from forklens.runfolder import claim_folder, owned_rmtree
from forklens.train.loop import TrainConfig
from forklens.train.run import train
from forklens.train.sources import SFTSource
from forklens.train.validation import ValidationCallback

console = Console(stderr=True)

BUGS = ("none", "offload-accum", "mean-of-means")
ORDERS = ("reverse_perplexity", "perplexity")


def _sft_default() -> TrainConfig:
    # three epochs over 528 expert traces (48 of each step count 1-11), 8 per optimizer step, one trace
    # per micro-batch (K = 8 micro-steps, the sft-then-rl experiment's K); cosine decay after 10 warm-up
    # steps. Set from the correct arm's learning curve on seed 100 (not a measured seed): mid-way up it.
    return TrainConfig(max_steps=198, learning_rate=1e-3, lr_schedule="cosine", warmup_steps=10, micro_batch_size=1)


def _eval_default() -> EvalConfig:
    return EvalConfig(max_new_tokens=128)


@dataclass
class SFTBugsConfig:
    family: str = field("lengths", help="Organism family (`forklens organism list`).")
    variants: list[str] = field(default_factory=lambda: ["varied", "equal"],
                                help="Variants to run; summary.contrast compares the first two (precondition first).")
    organism: list[str] = field(default_factory=list, help="Dotted overrides of every variant's family config "
                                "(e.g. model.hidden_size=64).")
    sft: TrainConfig = field(default_factory=_sft_default,
                             help="SFT on expert traces. micro_batch_size < sft_batch_size makes gradient "
                             "accumulation (K = sft_batch_size / micro_batch_size micro-steps), where the bugs act.")
    sft_batch_size: int = field(8, ge=1, help="Expert traces per SFT optimizer step.")
    pool_size: int = field(528, ge=1, help="Expert traces (the first training problems) SFT draws from.")
    n_validation: int = field(200, ge=1, help="Validation problems, held out from the end of the training split.")
    bugs: list[str] = field(default_factory=lambda: list(BUGS), help="SFT arms; 'none' is always run (the reference).")
    orders: list[str] = field(default_factory=list, help="Extra correct-SFT arms in a curriculum order "
                              "(reverse_perplexity, perplexity; SFTSource, arXiv:2605.13301), compared with the "
                              "shuffled 'none' arm in summary.variants.<v>.order_gain.")
    eval: EvalConfig = field(default_factory=_eval_default, help="Greedy evaluation of each final model.")
    seeds: int = field(5, ge=1, help="Seeds per arm.")
    seed: int = field(0, help="First seed; seeds are seed, seed+1, ...")


def _check(cfg: SFTBugsConfig) -> list[str]:
    unknown = set(cfg.bugs) - set(BUGS)
    if unknown:
        raise ConfigError(f"bugs: unknown {sorted(unknown)}; known: {', '.join(BUGS)}")
    bad = set(cfg.orders) - set(ORDERS)
    if bad:
        raise ConfigError(f"orders: unknown {sorted(bad)}; known: {', '.join(ORDERS)}")
    if not cfg.variants:
        raise ConfigError("variants: name at least one variant")
    family = get_family(cfg.family)
    for v in cfg.variants:
        family.variant(v)  # a ConfigError naming the variants if unknown
    if cfg.sft_batch_size % cfg.sft.micro_batch_size:
        raise ConfigError(f"sft_batch_size ({cfg.sft_batch_size}) must be a multiple of sft.micro_batch_size "
                          f"({cfg.sft.micro_batch_size}): unequal micro-batches would change what the bugs do")
    return [b for b in BUGS if b == "none" or b in cfg.bugs]


def accuracy_by(problems: list, correct: list[int], key: str) -> dict[str, float]:
    """Mean correctness per value of ``problem.meta[key]`` (e.g. per step count)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for p, c in zip(problems, correct):
        groups[str(p.meta.get(key))].append(c)
    return {k: sum(v) / len(v) for k, v in sorted(groups.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0)}


def _evaluate(policy, val: ValidationCallback, validation: list) -> dict:
    res = evaluate(policy, val.task, val.config)
    correct = [r["correct"] for r in res["per_problem"]]
    return {"validation_accuracy": res["accuracy"], "by_steps": accuracy_by(validation, correct, "steps")}


def run_variant(cfg: SFTBugsConfig, variant: str, bugs: list[str], seeds: list[int], out: Path) -> dict:
    """Every arm (each bug, then each curriculum order with the correct loss) for every seed on one variant."""
    family = get_family(cfg.family)
    fam_cfg = family.variant_config(variant, overrides=cfg.organism)
    task = family.task(fam_cfg)
    pool, validation = split_problems(task, cfg)
    base_dir = out / "base"
    info = family.build_variant(variant, base_dir, overrides=cfg.organism)
    val = ValidationCallback(task, validation, cfg.sft.max_steps, config=replace(cfg.eval, temperature=0.0))
    pairs = [(p.prompt, task.expert_response(p)) for p in pool]
    tok = Policy.load(base_dir).tokenizer
    n_tokens = [len(tok(r, add_special_tokens=False)["input_ids"]) + 1 for _, r in pairs]  # + EOS
    result = {"role": family.variant(variant).role, "base": {**_evaluate(Policy.load(base_dir), val, validation),
                                                             "pretrain_flops": info.get("flops")},
              "response_tokens": {"mean": sum(n_tokens) / len(n_tokens), "min": min(n_tokens), "max": max(n_tokens)},
              "sft": {}, "bug_cost": {}}
    arms = [(b, b, "shuffle") for b in bugs] + [(o, "none", o) for o in cfg.orders]
    per_seed: dict[str, dict[int, dict]] = {name: {} for name, _, _ in arms}
    for seed in seeds:
        for name, bug, order in arms:
            console.rule(f"{cfg.family}/{variant} seed {seed}: SFT (bug: {bug}, order: {order})")
            policy = Policy.load(base_dir)
            run_dir = out / f"seed{seed}" / f"sft-{name}"
            source = SFTSource(pairs, cfg.sft_batch_size, seed, order=order, policy=policy if order != "shuffle" else None)
            res = train(policy, "sft", None, source, replace(cfg.sft, seed=seed, simulate_bug=bug, save_every=0),
                        run_dir, name=f"SFT[{name}]", progress=False)
            per_seed[name][seed] = {**_evaluate(policy, val, validation), "final_loss": res.last.get("loss"),
                                    "flops": res.flops, "steps": res.steps, "wall_s": res.wall_s,
                                    "metrics": str(run_dir.relative_to(out.parent) / "metrics.jsonl")}
            owned_rmtree(run_dir / "checkpoints")
            console.print(f"validation accuracy {100 * per_seed[name][seed]['validation_accuracy']:.1f}%",
                          highlight=False)
    for bug, by_seed in per_seed.items():
        counts = sorted({w for r in by_seed.values() for w in r["by_steps"]}, key=int)
        result["sft"][bug] = {
            "validation_accuracy": bootstrap_ci([r["validation_accuracy"] for r in by_seed.values()]).as_dict(),
            "by_steps": {w: sum(r["by_steps"][w] for r in by_seed.values()) / len(by_seed) for w in counts},
            "per_seed": {str(s): r for s, r in sorted(by_seed.items())}}
    acc = {b: {s: r["validation_accuracy"] for s, r in by_seed.items()} for b, by_seed in per_seed.items()}
    for bug in bugs[1:]:
        result["bug_cost"][bug] = paired_difference(acc[bug], acc["none"]).as_dict()
    if cfg.orders:
        result["order_gain"] = {o: paired_difference(acc[o], acc["none"]).as_dict() for o in cfg.orders}
    result["_acc"] = acc
    return result


def run_sft_bugs(cfg: SFTBugsConfig, out: str | Path) -> dict:
    out = Path(out)
    bugs = _check(cfg)
    claim_folder(out, "experiment-sft-bugs")
    seeds = [cfg.seed + k for k in range(cfg.seeds)]
    variants = {v: run_variant(cfg, v, bugs, seeds, out / v) for v in cfg.variants}
    summary: dict = {"family": cfg.family, "seeds": seeds, "bugs": bugs, "orders": list(cfg.orders),
                     "variants": variants, "contrast": {}}
    if len(cfg.variants) >= 2:
        pre, ctrl = (variants[v]["_acc"] for v in cfg.variants[:2])
        for arm in [*bugs[1:], *cfg.orders]:
            cost = {v: {s: a[arm][s] - a["none"][s] for s in seeds} for v, a in zip(cfg.variants[:2], (pre, ctrl))}
            summary["contrast"][arm] = paired_difference(*cost.values()).as_dict()
        summary["contrast_of"] = f"{cfg.variants[0]} - {cfg.variants[1]}"
    for v in variants.values():
        v.pop("_acc")
    summary["config"] = asdict(cfg)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "table.md").write_text(markdown_table(summary))
    summary["plot"] = [str(p.name) for p in plot_by_steps(summary, out / "accuracy_by_steps")]
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def plot_by_steps(summary: dict, stem: Path) -> list[Path]:
    """Validation accuracy by step count: one line per (variant, bug), mean over seeds."""
    from forklens.report.plots import new_figure, save_figure  # matplotlib: loaded only when plotting

    fig, ax = new_figure()
    styles = {"none": "-", "offload-accum": "--", "mean-of-means": ":"}
    for i, (name, v) in enumerate(summary["variants"].items()):
        for bug, arm in v["sft"].items():
            xs = [int(w) for w in arm["by_steps"]]
            ax.plot(xs, [100 * a for a in arm["by_steps"].values()], styles.get(bug, "-"), marker="os^D"[i % 4],
                    color=f"C{i}", label=f"{name}: SFT bug={bug}")
    ax.set_xlabel("additions in the chain (steps)")
    ax.set_ylabel("validation accuracy % (greedy, mean over seeds)")
    ax.set_title(f"sft-bugs on {summary['family']}: accuracy by steps ({len(summary['seeds'])} seeds)")
    ax.legend(fontsize=8)
    return save_figure(fig, stem, formats=("png",))


def _ci(iv: dict | None) -> str:
    if iv is None:
        return "n/a"
    return f"{100 * iv['mean']:.1f} [{100 * iv['low']:.1f}, {100 * iv['high']:.1f}]"


def markdown_table(summary: dict) -> str:
    arms = [*summary["bugs"], *summary.get("orders", [])]
    lines = ["| variant (role) | trained tokens per trace (min-max, mean) | base % | "
             + " | ".join(f"SFT {a} %" for a in arms) + " | " + " | ".join(f"{a} - none (points)" for a in arms[1:])
             + " |", "| --- " * (3 + 2 * len(arms) - 1) + "|"]
    for name, v in summary["variants"].items():
        t = v["response_tokens"]
        diffs = {**v["bug_cost"], **v.get("order_gain", {})}
        lines.append(f"| {name} ({v['role']}) | {t['min']}-{t['max']}, {t['mean']:.1f} | "
                     f"{100 * v['base']['validation_accuracy']:.1f} | "
                     + " | ".join(_ci(v["sft"][a]["validation_accuracy"]) for a in arms) + " | "
                     + " | ".join(_ci(diffs[a]) for a in arms[1:]) + " |")
    for arm, iv in summary["contrast"].items():
        lines.append(f"\n{arm} - none, {summary['contrast_of']} (paired by seed): {_ci(iv)} points")
    lines.append(f"\nseeds {summary['seeds']}; intervals: 95% bootstrap over seeds; validation accuracy is greedy")
    return "\n".join(lines) + "\n"
