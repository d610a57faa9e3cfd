"""`forklens experiment fork-vs-rl`: GRPO vs RL-free fork-contrast (and its ablations), compute-matched.

On the arithmetic organism (the demo's organism config), or on any organism-zoo variant
(``variant=FAMILY/VARIANT``, built and cached through :mod:`forklens.organisms`; max new tokens are
then the longest gold test trace plus ``token_margin``), from one base organism:

* a validation slice: the last ``val_problems`` distinct prompts of the training split, removed from
  what every method trains on (arith's train and test splits are disjoint operand pairs; the run
  checks that no validation prompt is a test prompt);
* every run (GRPO and each fork-contrast variant, per seed) evaluates greedily on that slice every
  ``val_every`` steps, logs ``val/accuracy`` and cumulative FLOPs, and stops by the same plateau rule
  (:class:`forklens.analysis.curves.PlateauStopper`, ``patience`` / ``min_delta``); ``max_steps`` are
  caps, not budgets;
* fork-contrast's learning rate is searched over ``fork_lr_grid`` on the first seed's validation
  curve (highest best validation accuracy); the FLOPs of every grid run are ``search_flops
  ["fork-contrast"]`` (GRPO keeps the demo's recipe: 0). The first seed's fork-contrast run *is* the
  search run at the chosen rate (same config and seed);
* ``grpo``: :func:`forklens.train.run.run_grpo` with the demo's RLConfig; ``fork-contrast``:
  :func:`forklens.train.fork_source.run_fork_contrast` with the organism recipe (entropy gate, tau
  0.5); ablations ``fork-contrast-gate-none``, ``-gate-random``, ``-positive-only`` at the chosen rate;
* each final model (the one at the stop) is also evaluated on the test split, for reporting only;
  with ``keep_best`` the reported test accuracy is that of the best-validation weights (early stopping
  that selects on validation and reports on test) and the one at the stop is kept beside it;
* a fork-contrast run whose base rollouts hold no problem with mixed outcomes (nothing to contrast)
  leaves the model as the base: its curve is the base's validation accuracy at the sampling's FLOPs;
* optional ``intervention``: :func:`forklens.analysis.intervene.run_intervention` of the seed's GRPO
  model vs the base.

FLOPs: 2N per generated or scored token and 6N per trained token, as the trainer counts them; for
fork-contrast this includes the one-off rollout sampling (reported by its data source at step 0).
Validation evaluation is not counted for any method.

``summary.json`` (and, with ``artifact``, the stamped ``artifact.json``) holds ``curves``
(method -> seed -> steps, FLOPs, validation accuracy, test accuracy), ``comparison`` =
:func:`forklens.analysis.curves.compare_methods` with the target ``within`` below the best plateau,
``comparison_fixed`` with the target ``fixed_target``, ``search_flops``, ``search`` (the grid),
``methods`` (test accuracy mean/std over seeds, FLOPs at the stop), ``validation``, ``gains`` (per
method, intervals over seeds of test accuracy - base test accuracy and best validation accuracy - base
validation accuracy; ``fork-contrast-grpo``: the paired test difference) and, with ``base_margin``,
``comparison_base`` (the target ``base_margin`` above the base's validation accuracy).
``accuracy_vs_flops.png/.svg``: validation accuracy vs FLOPs, a thin line per seed, the mean bold.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from rich.console import Console

from forklens.analysis.curves import bootstrap_ci, compare_methods, paired_difference
from forklens.analysis.evaluate import EvalConfig, evaluate
from forklens.analysis.intervene import parse_gate, run_intervention
from forklens.config import field
from forklens.errors import ConfigError
from forklens.organisms import get_family
from forklens.organisms.arith import OrganismConfig, build_base_organism
from forklens.policy import Policy
from forklens.tasks import get_task
from forklens.train.fork_source import (ForkContrastConfig, ForkDataConfig, LoraSettings, NoContrastError,
                                       run_fork_contrast)
from forklens.experiments.compute_matched import (as_curves, comparisons, curve_record, plot_curves,
                                                  validation_callback, validation_split)
from forklens.report.artifacts import make_stamp, plots_dir, write_artifact
from forklens.train.loop import TrainConfig, read_metrics
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
    val_problems: int = field(128, ge=1, help="Validation problems: the last N distinct prompts of the training "
                              "split, removed from what every method trains on (never the test split).")
    val_every: int = field(1, ge=1, help="Evaluate on the validation problems every N training steps.")
    patience: int = field(3, ge=1, help="Plateau rule: stop after this many evaluations without improvement.")
    min_delta: float = field(0.005, ge=0, help="Plateau rule: the smallest accuracy gain that counts.")
    fork_lr_grid: list[float] = field(default_factory=lambda: [3e-5, 1e-4, 3e-4, 1e-3],
                                      help="Fork-contrast learning rates searched on the first seed's validation "
                                      "split (FLOPs counted as search cost; empty: no search, fork.train's lr).")
    within: float = field(0.01, gt=0, lt=1, help="summary.comparison target: the best plateau minus this.")
    fixed_target: float = field(0.80, gt=0, le=1, help="summary.comparison_fixed target (validation accuracy).")
    artifact: str = field("", help="Also write a stamped artifact folder here (e.g. results/fork-vs-rl).")
    variant: str = field("", help="FAMILY/VARIANT of the organism zoo to start from (empty: the arith organism "
                         "of `organism`).")
    variant_overrides: list[str] = field(default_factory=list, help="Dotted KEY=VALUE overrides of the variant's "
                                         "family config, applied after the variant's own.")
    token_margin: int = field(8, ge=0, help="With `variant`: max new tokens = longest gold test trace + this.")
    keep_best: bool = field(False, help="Report the test accuracy of each run's best-validation weights (the one "
                            "at the stop is kept beside it).")
    base_margin: float = field(0.0, ge=0, lt=1, help="> 0: also summary.comparison_base, the target this far "
                               "above the base's validation accuracy.")


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


def _lr_tag(lr: float) -> str:
    return f"lr-{lr:g}"


def organism(cfg: ForkVsRLConfig, base_dir: Path, use_cache: bool, progress: bool):
    """``(task, base info, RLConfig, label)`` of the run's base organism, built (or fetched) into ``base_dir``."""
    if not cfg.variant:
        if cfg.variant_overrides:
            raise ConfigError("variant_overrides: set `variant` (FAMILY/VARIANT) too")
        task = get_task(cfg.organism.task, cfg.organism.arith)
        info = build_base_organism(cfg.organism, base_dir, use_cache=use_cache, progress=progress)
        return task, {**info, "variant": None, "role": None}, cfg.rl, "arith organism"
    if cfg.variant.count("/") != 1:
        raise ConfigError(f"variant: {cfg.variant!r} is not FAMILY/VARIANT")
    fname, vname = cfg.variant.split("/")
    family = get_family(fname)
    vcfg = family.variant_config(vname, overrides=cfg.variant_overrides)
    task = family.task(vcfg)
    if not hasattr(task, "expert_response"):
        raise ConfigError(f"variant: the task of {cfg.variant} has no gold traces (expert_response) to size "
                          "max_new_tokens from")
    mnt = max(len(task.expert_response(p)) for p in task.problems("test")) + cfg.token_margin
    info = family.build_variant(vname, base_dir, overrides=cfg.variant_overrides, use_cache=use_cache,
                                progress=progress)
    rl = replace(cfg.rl, sampling=replace(cfg.rl.sampling, max_new_tokens=mnt))
    return task, {**info, "variant": cfg.variant}, rl, f"{cfg.variant} ({info['role']})"


def gains(per_seed: dict[str, list[dict]], base_acc: float, base_val: float) -> dict:
    """Intervals over seeds of each method's gain over the base (test; best validation), and the
    paired fork-contrast - GRPO test difference."""
    out: dict = {}
    for m, rows in per_seed.items():
        if rows:
            out[m] = {"test": bootstrap_ci([r["accuracy"] - base_acc for r in rows]).as_dict(),
                      "val": bootstrap_ci([r["best_val_accuracy"] - base_val for r in rows]).as_dict()}
    if per_seed.get("grpo") and per_seed.get("fork-contrast"):
        test = {m: {r["seed"]: r["accuracy"] for r in per_seed[m]} for m in ("fork-contrast", "grpo")}
        out["fork-contrast-grpo"] = {"test": paired_difference(test["fork-contrast"], test["grpo"]).as_dict()}
    return out


def run_fork_vs_rl(cfg: ForkVsRLConfig, out: str | Path, use_cache: bool = True, progress: bool = True) -> dict:
    out = Path(out)
    claim_folder(out, "experiment-fork-vs-rl")
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    # stamped when the run starts: the commit that ran, not the one current when it ended
    stamp = make_stamp(Path(cfg.artifact).name, seeds) if cfg.artifact else None
    run = fork_vs_rl_runs(cfg, out, use_cache, progress)
    summary = run["summary"]
    if cfg.artifact:
        folder = write_artifact(Path(cfg.artifact).parent, Path(cfg.artifact).name,
                                {**summary, "plot": ["plots/accuracy_vs_flops.png", "plots/accuracy_vs_flops.svg"]},
                                seeds=seeds, stamp=stamp,
                                metrics={k: read_metrics(p) for k, p in run["metrics"].items() if p.is_file()})
        plot_curves(summary["curves"], plots_dir(folder) / "accuracy_vs_flops", run["title"], run["hlines"])
        console.print(f"wrote the stamped artifact {folder}", highlight=False)
    return summary


def fork_vs_rl_runs(cfg: ForkVsRLConfig, out: Path, use_cache: bool = True, progress: bool = True) -> dict:
    """Every run of one organism into ``out`` (no artifact): ``{"summary", "metrics" (name -> metrics.jsonl),
    "title", "hlines"}`` for the caller's artifact and plot."""
    t_start = time.perf_counter()
    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"methods: unknown method {unknown[0]!r}; known: {', '.join(METHODS)}")
    if "grpo" not in cfg.methods:
        raise ConfigError("methods: the comparison's reference is 'grpo'; include it")
    if cfg.keep_best and (cfg.rl.lora.enabled or cfg.fork.lora.enabled):
        raise ConfigError("keep_best restores full weights; it does not work with LoRA (rl.lora / fork.lora)")
    gates = [parse_gate(g) for g in cfg.intervene_gates]  # bad gates fail before the organism is built
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    console.rule("[bold]base organism")
    base_dir = out / "base"
    task, base_info, rl, label = organism(cfg, base_dir, use_cache, progress)
    base = Policy.load(base_dir)
    ev = replace(cfg.eval, max_new_tokens=rl.sampling.max_new_tokens)
    base_acc = evaluate(base, task, ev)["accuracy"]
    console.print(f"base: greedy held-out accuracy {100 * base_acc:.1f}%"
                  f" ({'cached' if base_info['cache_hit'] else 'pretrained'})", highlight=False)
    test = task.problems(ev.split)
    if ev.limit:
        test = test[: ev.limit]
    val, fit = validation_split(task.problems("train"), task.problems("test"), cfg.val_problems)
    base_val = validation_callback(task, val, 1, cfg.patience, cfg.min_delta, ev).accuracy(base)
    by_id = {p.id: p for p in test}
    records = [{"id": p.id, "prompt": p.prompt, "answer": p.answer} for p in test]
    per_seed: dict[str, list[dict]] = {m: [] for m in cfg.methods}
    curves: dict[str, dict[str, dict]] = {m: {} for m in cfg.methods}
    metrics_files: dict[str, Path] = {}
    interventions: list[dict] = []
    search: dict = {}
    search_flops = {"grpo": 0.0}
    summary: dict = {}

    def write() -> None:
        methods = aggregate(per_seed)
        inter = aggregate_interventions(interventions)
        summary.clear()
        summary.update({
            "methods": methods,
            "curves": curves,
            **comparisons({m: {int(s): r for s, r in c.items()} for m, c in curves.items()}, "grpo",
                          search_flops, cfg.within, cfg.fixed_target),
            "search_flops": search_flops,
            "search": search,
            "intervention": inter,
            "targets": targets(methods, inter),
            "gains": gains(per_seed, base_acc, base_val),
            "base": {"accuracy": base_acc, "val_accuracy": base_val, "path": str(base_dir),
                     "cache_hit": base_info["cache_hit"], "pretrain_flops": base_info["flops"],
                     "variant": base_info["variant"], "role": base_info["role"],
                     "max_new_tokens": ev.max_new_tokens},
            "eval": {"split": ev.split, "n_problems": len(test), "temperature": ev.temperature,
                     "max_new_tokens": ev.max_new_tokens,
                     "test_model": "best-validation weights" if cfg.keep_best else "the model at the stop"},
            "validation": {"n_problems": len(val), "train_problems_left": len(fit),
                           "rule": "the last val_problems distinct prompts of the training split; every training "
                                   "problem with one of those prompts is removed from what the methods train on",
                           "test_prompt_overlap": len({p.prompt for p in val} & {p.prompt for p in test}),
                           "every": cfg.val_every, "patience": cfg.patience, "min_delta": cfg.min_delta},
            "seeds": seeds, "seeds_done": len(per_seed["grpo"]),
            "config": asdict(cfg),
            "total_wall_s": time.perf_counter() - t_start,
        })
        if cfg.base_margin > 0 and curves["grpo"]:
            summary["comparison_base"] = compare_methods(
                as_curves({m: {int(s): r for s, r in c.items()} for m, c in curves.items()}), "grpo",
                target=base_val + cfg.base_margin, search_flops={m: f for m, f in search_flops.items() if curves.get(m)})
            summary["comparison_base"]["target_rule"] = f"base validation accuracy + {cfg.base_margin}"
        (out / "summary.json").write_text(json.dumps(summary, indent=2))

    def no_contrast(s: int, fcfg: ForkContrastConfig, exc: NoContrastError, wall_s: float) -> tuple[dict, dict]:
        """Nothing to contrast: the model stays the base; the sampling's FLOPs are spent."""
        flops = 2.0 * base.num_params() * exc.sampled_tokens
        console.print(f"seed {s}: {exc}; the model stays the base", highlight=False)
        row = {"seed": s, "flops": flops, "wall_s": wall_s, "steps": 0, "learning_rate": fcfg.train.learning_rate,
               "no_contrast": True, "accuracy": base_acc, "best_val_accuracy": base_val}
        record = {"steps": [0], "flops": [flops], "accuracy": [base_val], "best_accuracy": base_val,
                  "stopped_early": True, "stopper": None, "no_contrast": True, "test_accuracy": base_acc}
        return row, record

    def run_one(m: str, s: int, fcfg: ForkContrastConfig | None, run_dir: Path) -> tuple[dict, dict]:
        cb = validation_callback(task, val, cfg.val_every, cfg.patience, cfg.min_delta, ev, keep_best=cfg.keep_best)
        metrics_files[f"seed-{s}_{m}"] = run_dir / "metrics.jsonl"
        if m == "grpo":
            info = run_grpo(base_dir, task, rl, run_dir, seed=s, progress=progress, problems=fit, callbacks=[cb])
            policy = Policy.load(info["model_dir"])
            row = {"seed": s, "flops": info["flops"], "wall_s": info["wall_s"], "steps": info["steps"]}
            cap = rl.train.max_steps
        else:
            fcfg = replace(fcfg, data=replace(fcfg.data, max_new_tokens=rl.sampling.max_new_tokens))
            t0 = time.perf_counter()
            try:
                info = run_fork_contrast(base_dir, fit, task.verify, fcfg, run_dir, seed=s, progress=progress,
                                         log=lambda msg: console.print(msg, highlight=False), callbacks=[cb])
            except NoContrastError as exc:
                return no_contrast(s, fcfg, exc, time.perf_counter() - t0)
            policy = info["policy"]
            row = {"seed": s, "flops": info["flops"], "wall_s": info["wall_s"], "steps": info["steps"],
                   "learning_rate": fcfg.train.learning_rate,
                   "prepare_wall_s": info["prepare_wall_s"], "train_wall_s": info["train_wall_s"],
                   **{k: info["data"][k] for k in ("rollouts_sampled", "rollouts_kept", "problems_kept",
                                                  "decision_tokens", "decision_frac")}}
            cap = fcfg.train.max_steps
        row["accuracy"] = evaluate(policy, task, ev)["accuracy"]
        record = {**curve_record(cb, cap), "test_accuracy": row["accuracy"]}
        if cfg.keep_best and cb.best_state is not None:
            row["accuracy_at_stop"] = record["test_accuracy_at_stop"] = row["accuracy"]
            policy.model.load_state_dict(cb.best_state)
            row["accuracy"] = record["test_accuracy"] = evaluate(policy, task, ev)["accuracy"]
            row["best_step"] = record["best_step"] = cb.best_step
        row["best_val_accuracy"] = record["best_accuracy"]
        console.print(f"seed {s} {m}: {record['steps'][-1]} steps, best validation {100 * record['best_accuracy']:.1f}%, "
                      f"test {100 * row['accuracy']:.1f}%, {row['flops']:.3g} FLOPs, {row['wall_s']:.0f} s",
                      highlight=False)
        return row, record

    fork = cfg.fork
    reuse: tuple[dict, dict] | None = None
    if "fork-contrast" in cfg.methods and cfg.fork_lr_grid:
        console.rule(f"[bold]fork-contrast learning-rate search (seed {cfg.seed}, validation split)")
        runs = []
        for lr in cfg.fork_lr_grid:
            fl = replace(fork, train=replace(fork.train, learning_rate=lr))
            row, record = run_one("fork-contrast", cfg.seed, fl, out / "search" / _lr_tag(lr))
            metrics_files[f"search_{_lr_tag(lr)}"] = metrics_files.pop(f"seed-{cfg.seed}_fork-contrast")
            runs.append({"learning_rate": lr, "best_val_accuracy": record["best_accuracy"], "flops": row["flops"],
                         "steps": row["steps"], "row": row, "record": record})
        chosen = max(runs, key=lambda r: r["best_val_accuracy"])  # first of equals: the grid's order
        fork = replace(fork, train=replace(fork.train, learning_rate=chosen["learning_rate"]))
        reuse = (chosen["row"], chosen["record"])
        search_flops["fork-contrast"] = sum(r["flops"] for r in runs)
        search["fork-contrast"] = {
            "seed": cfg.seed, "grid": list(cfg.fork_lr_grid), "chosen_learning_rate": chosen["learning_rate"],
            "rule": "highest best validation accuracy (first in grid order on ties)",
            "runs": [{k: v for k, v in r.items() if k not in ("row", "record")} for r in runs],
            "total_flops": search_flops["fork-contrast"],
            "note": f"seed {cfg.seed}'s fork-contrast run is the search run at the chosen learning rate "
                    "(same config and seed), so its FLOPs are in the search cost and in its curve"}
        write()

    for s in seeds:
        sd = out / f"seed-{s}"
        grpo_dir = None
        for m in cfg.methods:
            console.rule(f"[bold]seed {s}: {m}")
            if m == "fork-contrast" and s == cfg.seed and reuse is not None:
                row, record = reuse
                metrics_files[f"seed-{s}_{m}"] = metrics_files[f"search_{_lr_tag(row['learning_rate'])}"]
            else:
                row, record = run_one(m, s, None if m == "grpo" else variant(fork, m), sd / m)
            if m == "grpo":
                grpo_dir = sd / m / "model"
            per_seed[m].append(row)
            curves[m][str(s)] = record
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
    title = f"{label}: validation accuracy vs FLOPs ({len(seeds)} seeds, stopped at the plateau)"
    hlines = {"base (validation)": base_val}
    summary["plot"] = plot_curves(curves, out / "accuracy_vs_flops", title, hlines)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return {"summary": summary, "metrics": metrics_files, "title": title, "hlines": hlines}


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
