"""`forklens experiment fork-vs-rl`: GRPO vs RL-free fork-contrast (and its ablations) at equal base.

On the arithmetic organism, from one base organism (the demo's organism config, cached), for each
seed:

* ``grpo``: :func:`forklens.experiments.demo.run_grpo` with the demo's RLConfig;
* ``fork-contrast``: :func:`forklens.train.fork_source.run_fork_contrast` with the organism recipe
  (entropy gate, tau 0.5); ablations ``fork-contrast-gate-none`` (every response token is a decision
  token), ``fork-contrast-gate-random`` (same count per rollout, random positions) and
  ``fork-contrast-positive-only``;
* every model is evaluated greedily on the held-out test split;
* ``intervention``: :func:`forklens.analysis.intervene.run_intervention` of the seed's GRPO model vs
  the base (oracle / random / entropy gates, greedy).

FLOPs: 2N per generated or scored token and 6N per trained token, as the trainer counts them; for
fork-contrast this includes the one-off rollout sampling (reported by its data source at step 0).
Wall time: the trainer's loop time (GRPO: sampling + training) plus, for fork-contrast, the data
preparation; evaluation is excluded for every method.

``summary.json``::

    {"methods": {NAME: {"accuracy_mean", "accuracy_std", "flops", "wall_s", "per_seed": [...]}},
     "base": {...}, "intervention": {...}, "targets": {...}, ...}

``accuracy_std`` is the sample standard deviation over seeds (0 with one seed); ``flops`` and
``wall_s`` are means over seeds. ``accuracy_vs_flops.png/.svg`` plots accuracy (mean +- std) against
FLOPs on a log axis.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from rich.console import Console

from forklens.analysis.evaluate import EvalConfig, evaluate
from forklens.analysis.intervene import parse_gate, run_intervention
from forklens.config import field
from forklens.errors import ConfigError
from forklens.organisms.arith import OrganismConfig, build_base_organism
from forklens.policy import Policy
from forklens.tasks import get_task
from forklens.train.fork_source import ForkContrastConfig, ForkDataConfig, LoraSettings, run_fork_contrast
from forklens.train.loop import TrainConfig
from forklens.train.run import RLConfig, run_grpo
from forklens.runfolder import claim_folder

console = Console(stderr=True)

METHODS = ["grpo", "fork-contrast", "fork-contrast-gate-none", "fork-contrast-gate-random",
           "fork-contrast-positive-only"]


def organism_fork_recipe() -> ForkContrastConfig:
    """Fork-contrast on the arith organism (= configs/fork-contrast-arith.yaml); see docs/forks.md.

    Sized to stay under 1% of the demo GRPO's FLOPs: 16 problems x 8 rollouts sampled once, then 7
    steps of one whole problem (8 rollouts) each, full fine-tuning at the paper's lr 1e-4."""
    return ForkContrastConfig(
        train=TrainConfig(max_steps=7, learning_rate=1e-4, micro_batch_size=64, max_grad_norm=1.0),
        data=ForkDataConfig(problems=16, rollouts_per_problem=8, max_new_tokens=48, keep_problems=50, tau=0.5,
                            problems_per_step=1, batch_size=8),
        lora=LoraSettings(enabled=False),
        eval=EvalConfig(max_new_tokens=48),
    )


@dataclass
class ForkVsRLConfig:
    organism: OrganismConfig = field(default_factory=OrganismConfig, help="The base organism (the demo's).")
    rl: RLConfig = field(default_factory=RLConfig, help="GRPO (the demo's RLConfig).")
    fork: ForkContrastConfig = field(default_factory=organism_fork_recipe,
                                     help="Fork-contrast (the ablations change only data.gate / data.positive_only).")
    eval: EvalConfig = field(default_factory=EvalConfig, help="Held-out evaluation (greedy test split).")
    methods: list[str] = field(default_factory=lambda: list(METHODS), help="Methods to run (comma-separated).")
    intervene: bool = field(True, help="Run the oracle/random/entropy intervention of GRPO vs base per seed.")
    intervene_gates: list[str] = field(default_factory=lambda: ["oracle", "random", "entropy:0.5"],
                                       help="Intervention gates.")
    intervene_seeds: int = field(3, ge=1, help="Random-gate draws per intervention.")
    seeds: int = field(3, ge=1, help="Training seeds (overridden by --seeds).")
    seed: int = field(0, help="First seed; seeds are seed, seed+1, ...")


def variant(fork: ForkContrastConfig, name: str) -> ForkContrastConfig:
    data = replace(fork.data)
    if name == "fork-contrast":
        pass
    elif name == "fork-contrast-gate-none":
        data.gate = "none"
    elif name == "fork-contrast-gate-random":
        data.gate = "random"
    elif name == "fork-contrast-positive-only":
        data.positive_only = True
    else:
        raise ValueError(f"unknown fork-contrast variant {name!r}")
    return replace(fork, data=data)


def _std(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def aggregate(per_seed: dict[str, list[dict]]) -> dict:
    out = {}
    for name, rows in per_seed.items():
        if not rows:
            continue
        accs = [r["accuracy"] for r in rows]
        out[name] = {"accuracy_mean": sum(accs) / len(accs), "accuracy_std": _std(accs),
                     "flops": sum(r["flops"] for r in rows) / len(rows),
                     "wall_s": sum(r["wall_s"] for r in rows) / len(rows), "per_seed": rows}
    if "grpo" in out:
        for name, m in out.items():
            m["flops_frac_of_grpo"] = m["flops"] / out["grpo"]["flops"] if out["grpo"]["flops"] else None
    return out


def aggregate_interventions(runs: list[dict]) -> dict | None:
    if not runs:
        return None
    keys = list(runs[0]["accuracy"])
    acc = {k: sum(r["accuracy"][k] for r in runs) / len(runs) for k in keys}
    gap = acc["rl"] - acc["base"]
    gated = [k for k in keys if k not in ("base", "rl")]
    return {
        "accuracy": acc,
        "gain_recovered": {k: ((acc[k] - acc["base"]) / gap if gap != 0 else None) for k in gated},
        "substitutions_per_response": {k: sum(r["substitutions_per_response"][k] for r in runs) / len(runs)
                                       for k in gated},
        "changed_per_response": {k: sum(r["changed_per_response"][k] for r in runs) / len(runs) for k in gated},
        "gain_recovered_per_seed": [r["gain_recovered"] for r in runs],
        "gates": runs[0]["gates"],
        "note": "GRPO model of each seed vs the base, greedy; accuracies averaged over seeds, gain_recovered "
                "computed from the averaged accuracies",
    }


def targets(methods: dict, intervention: dict | None) -> dict:
    t: dict = {}
    g, f = methods.get("grpo"), methods.get("fork-contrast")
    if g and f:
        t["fork_minus_grpo_points"] = 100 * (f["accuracy_mean"] - g["accuracy_mean"])
        t["fork_flops_frac_of_grpo"] = f["flops"] / g["flops"] if g["flops"] else None
        t["fork_within_2_points_of_grpo_or_better"] = t["fork_minus_grpo_points"] >= -2.0
        t["fork_flops_at_most_1pct_of_grpo"] = t["fork_flops_frac_of_grpo"] is not None and \
            t["fork_flops_frac_of_grpo"] <= 0.01
    for abl in ("fork-contrast-gate-none", "fork-contrast-gate-random"):
        if f and abl in methods:
            t[f"entropy_gate_beats_{abl.rsplit('-', 1)[-1]}"] = f["accuracy_mean"] > methods[abl]["accuracy_mean"]
    if intervention:
        gr = intervention["gain_recovered"]
        if gr.get("oracle") is not None:
            t["oracle_recovers_at_least_70pct"] = gr["oracle"] >= 0.70
        if gr.get("random") is not None:
            t["random_recovers_at_most_25pct"] = gr["random"] <= 0.25
    return t


def plot(methods: dict, base_acc: float, stem: Path) -> list[str]:
    from forklens.report.plots import new_figure, save_figure

    fig, ax = new_figure(7.5, 4.8)
    placed: list[float] = []
    dodged = False
    for i, (name, m) in enumerate(methods.items()):
        x = m["flops"]
        same = sum(1 for p in placed if abs(p - x) <= 0.02 * x)  # equal FLOPs: dodge so markers stay visible
        placed.append(x)
        dodged |= same > 0
        ax.errorbar([x * 1.08 ** same], [100 * m["accuracy_mean"]], yerr=[100 * m["accuracy_std"]],
                    fmt="os^Dv"[i % 5], color=f"C{i}", capsize=4, markersize=7, label=name)
    ax.axhline(100 * base_acc, color="0.5", linestyle="--", linewidth=1, label="base")
    ax.set_xscale("log")
    ax.set_ylim(-2, 102)
    ax.set_xlabel("total FLOPs (rollouts + training; log scale)" +
                  ("; equal-FLOP points offset to the right" if dodged else ""))
    ax.set_ylabel("held-out greedy accuracy (%)")
    ax.set_title("arith organism: accuracy vs compute (mean ± std over seeds)")
    ax.legend(loc="best", fontsize="small", framealpha=0.85)
    return [str(p) for p in save_figure(fig, stem)]


def run_fork_vs_rl(cfg: ForkVsRLConfig, out: str | Path, use_cache: bool = True, progress: bool = True) -> dict:
    out = Path(out)
    claim_folder(out, "experiment-fork-vs-rl")
    t_start = time.perf_counter()
    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"methods: unknown method {unknown[0]!r}; known: {', '.join(METHODS)}")
    gates = [parse_gate(g) for g in cfg.intervene_gates]  # bad gates fail before the organism is built
    task = get_task(cfg.organism.task, cfg.organism.arith)
    console.rule("[bold]base organism")
    base_dir = out / "base"
    base_info = build_base_organism(cfg.organism, base_dir, use_cache=use_cache, progress=progress)
    base = Policy.load(base_dir)
    ev = replace(cfg.eval, max_new_tokens=cfg.rl.sampling.max_new_tokens)
    base_acc = evaluate(base, task, ev)["accuracy"]
    console.print(f"base: greedy held-out accuracy {100 * base_acc:.1f}%"
                  f" ({'cached' if base_info['cache_hit'] else 'pretrained'})", highlight=False)
    test = task.problems(ev.split)
    if ev.limit:
        test = test[: ev.limit]
    by_id = {p.id: p for p in test}
    records = [{"id": p.id, "prompt": p.prompt, "answer": p.answer} for p in test]
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    per_seed: dict[str, list[dict]] = {m: [] for m in cfg.methods}
    interventions: list[dict] = []
    summary: dict = {}

    def write() -> None:
        methods = aggregate(per_seed)
        inter = aggregate_interventions(interventions)
        summary.clear()
        summary.update({
            "methods": methods,
            "intervention": inter,
            "targets": targets(methods, inter),
            "base": {"accuracy": base_acc, "path": str(base_dir), "cache_hit": base_info["cache_hit"],
                     "pretrain_flops": base_info["flops"]},
            "eval": {"split": ev.split, "n_problems": len(test), "temperature": ev.temperature,
                     "max_new_tokens": ev.max_new_tokens},
            "seeds": seeds, "seeds_done": len(interventions) if cfg.intervene and "grpo" in cfg.methods else None,
            "config": asdict(cfg),
            "total_wall_s": time.perf_counter() - t_start,
        })
        (out / "summary.json").write_text(json.dumps(summary, indent=2))

    for s in seeds:
        sd = out / f"seed-{s}"
        grpo_dir = None
        for m in cfg.methods:
            console.rule(f"[bold]seed {s}: {m}")
            if m == "grpo":
                info = run_grpo(base_dir, task, cfg.rl, sd / "grpo", seed=s, progress=progress)
                model_dir = grpo_dir = Path(info["model_dir"])
                policy = Policy.load(model_dir)
                row = {"seed": s, "flops": info["flops"], "wall_s": info["wall_s"], "steps": info["steps"]}
            else:
                fcfg = variant(cfg.fork, m)
                fcfg = replace(fcfg, data=replace(fcfg.data, max_new_tokens=cfg.rl.sampling.max_new_tokens))
                info = run_fork_contrast(base_dir, task.problems("train"), task.verify, fcfg, sd / m, seed=s,
                                         progress=progress, log=lambda msg: console.print(msg, highlight=False))
                policy = info["policy"]
                row = {"seed": s, "flops": info["flops"], "wall_s": info["wall_s"], "steps": info["steps"],
                       "prepare_wall_s": info["prepare_wall_s"], "train_wall_s": info["train_wall_s"],
                       "rollouts_sampled": info["data"]["rollouts_sampled"],
                       "rollouts_kept": info["data"]["rollouts_kept"],
                       "problems_kept": info["data"]["problems_kept"],
                       "decision_tokens": info["data"]["decision_tokens"],
                       "decision_frac": info["data"]["decision_frac"]}
            row["accuracy"] = evaluate(policy, task, ev)["accuracy"]
            per_seed[m].append(row)
            console.print(f"seed {s} {m}: accuracy {100 * row['accuracy']:.1f}%, {row['flops']:.3g} FLOPs, "
                          f"{row['wall_s']:.0f} s", highlight=False)
            write()
        if cfg.intervene and grpo_dir is not None:
            console.rule(f"[bold]seed {s}: intervention (GRPO vs base)")
            r = run_intervention(base, Policy.load(grpo_dir), records,
                                 lambda rec, text: task.verify(by_id[rec["id"]], text) > 0, gates,
                                 temperature=0.0, seeds=cfg.intervene_seeds, seed=s,
                                 max_new_tokens=ev.max_new_tokens, out_dir=sd / "intervene")
            interventions.append(r)
            write()
    write()
    if summary["methods"]:
        summary["plot"] = plot(summary["methods"], base_acc, out / "accuracy_vs_flops")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


# --- CLI ------------------------------------------------------------------------------------------

def print_summary(s: dict, out) -> None:
    from rich.table import Table

    c = Console()
    t = Table(title=f"fork-vs-rl: held-out greedy accuracy over seeds {s['seeds']} "
                    f"(base {100 * s['base']['accuracy']:.1f}%)")
    for col in ("method", "accuracy", "FLOPs", "x GRPO FLOPs", "wall s"):
        t.add_column(col, justify="left" if col == "method" else "right")
    for name, m in s["methods"].items():
        frac = m.get("flops_frac_of_grpo")
        t.add_row(name, f"{100 * m['accuracy_mean']:.1f} ± {100 * m['accuracy_std']:.1f}%", f"{m['flops']:.3g}",
                  "—" if frac is None else f"{frac:.4f}", f"{m['wall_s']:.0f}")
    c.print(t)
    inter = s.get("intervention")
    if inter:
        parts = [f"{k} {100 * inter['accuracy'][k]:.1f}%" for k in inter["accuracy"]]
        gr = ", ".join(f"{k} {'—' if v is None else f'{100 * v:.0f}%'}" for k, v in inter["gain_recovered"].items())
        c.print(f"intervention (GRPO vs base): {'; '.join(parts)}; gain recovered: {gr}", highlight=False)
    c.print("targets: " + ", ".join(f"{k}={v if not isinstance(v, float) else round(v, 4)}"
                                    for k, v in s["targets"].items()), highlight=False)
    c.print(f"wrote {Path(out) / 'summary.json'} and {Path(out) / 'accuracy_vs_flops.png'}", highlight=False)
