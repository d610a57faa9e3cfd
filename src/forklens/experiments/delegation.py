"""`forklens experiment delegation`: recursive delegation trained inside the RL loop (E028, RAO, arXiv 2605.06639).

From one cached base organism of the `delegation` family (sum mod 10 over lists, 8 digits in view per
node, a ``delegate`` action that hands parts of the list to fresh episodes of the same policy), per seed:

* ``rao-mean``: RL with delegation in the loop: every tree node a training row, node reward = own success
  + the mean of its children's success, leave-one-out baseline (:class:`~forklens.train.delegation_source.DelegationSource`);
* ``rao-sum`` (ablation): the same with the *sum* of the children's success (rewards spawning);
* ``flat``: RL on the same problems with every delegation call refused (depth limit 0: one node per root),
  compute-matched: it trains until its FLOPs (sampling + training, every node counted) reach ``rao-mean``'s;

then, evaluated greedily on held-out lists of every length (train lengths <= 32, test lengths 64 and 128):
the base and each trained model with recursion at inference (depth limit ``max_depth``), the flat-trained
model without recursion (``flat-norecursion``), and the fixed splitting scaffold around the flat-trained
model and around the base (``scaffold``, ``base-scaffold``: the environment halves every list longer than
``scaffold_leaf`` digits and the model only answers leaves and combines). Every number gets a
percentile-bootstrap interval over seeds; contrasts are paired by seed.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from rich.console import Console

from forklens.analysis.curves import bootstrap_ci, paired_difference
from forklens.config import field
from forklens.errors import ConfigError
from forklens.experiments.arm_runs import begin
from forklens.organisms import get_family
from forklens.organisms.delegation import DelegationOrganismConfig, build_delegation_organism
from forklens.policy import Policy
from forklens.policy.delegation import tree_stats
from forklens.report.artifacts import plots_dir, write_artifact
from forklens.runfolder import owned_rmtree
from forklens.tasks.base import Problem, Sampling
from forklens.tasks.reduce import HALVES, WIDE, ReduceTask
from forklens.train.delegation_source import DelegationSource
from forklens.train.loop import TrainConfig, read_metrics
from forklens.train.run import RLConfig, grpo_loss, train
from forklens.train.sources import SamplingConfig

console = Console(stderr=True)
TRAINED = ("rao-mean", "rao-sum", "flat")
#: evaluated policies: name -> (model, how it is run)
EVALS = {"base": ("base", "recursion"), "base-scaffold": ("base", "scaffold"), "rao-mean": ("rao-mean", "recursion"),
         "rao-sum": ("rao-sum", "recursion"), "flat": ("flat", "recursion"), "flat-norecursion": ("flat", "flat"),
         "scaffold": ("flat", "scaffold")}
#: paired contrasts on the long (test-only) lengths: name -> (a, b), meaning a - b
CONTRASTS = {"rao-mean-base": ("rao-mean", "base"), "rao-mean-flat": ("rao-mean", "flat"),
             "rao-mean-scaffold": ("rao-mean", "scaffold"), "mean-sum": ("rao-mean", "rao-sum"),
             "flat-base": ("flat", "base")}


def _rl_default() -> RLConfig:
    return RLConfig(train=TrainConfig(max_steps=30, learning_rate=5e-4, micro_batch_size=512, save_every=0,
                                      warmup_steps=0),
                    sampling=SamplingConfig(prompts_per_step=8, group_size=4, max_new_tokens=8, turn_tokens=4,
                                            advantage_estimator="loo", scale_rewards="none"))


@dataclass
class DelegationConfig:
    organism: DelegationOrganismConfig = field(default_factory=DelegationOrganismConfig,
                                               help="The delegation base organism (the variant's overrides apply on top).")
    variant: str = field("split", help="Variant of the delegation family (split, nosplit).")
    rl: RLConfig = field(default_factory=_rl_default, help="RL of the delegation arms (rao-mean, rao-sum).")
    flat_prompts_per_step: int = field(32, ge=1, help="Flat arm: prompts per step (it stops at rao-mean's FLOPs).")
    flat_group_size: int = field(8, ge=2, help="Flat arm: episodes per prompt.")
    flat_max_steps: int = field(400, ge=1, help="Flat arm: step cap if the FLOP budget is not reached first.")
    bonus: float = field(1.0, ge=0, help="Weight of the children's success in a node's reward.")
    arms: list[str] = field(default_factory=lambda: list(TRAINED), help="Trained arms (rao-mean, rao-sum, flat).")
    scaffold_leaf: int = field(0, ge=0, help="Fixed scaffold: leaves of at most this many digits (0: the window).")
    seeds: int = field(5, ge=1, help="Seeds (RL sampling and problem order; one shared base).")
    seed: int = field(0, help="First seed; seeds are seed, seed+1, ...")
    artifact: str = field("", help="Also write a stamped artifact folder here (e.g. results/delegation).")


class FlopBudget:
    """A trainer callback that stops training once its FLOPs reach ``budget``."""

    def __init__(self, budget: float):
        self.budget = budget

    def __call__(self, trainer, metrics) -> bool:
        return trainer.flops >= self.budget


def evaluate_trees(policy, task: ReduceTask, problems: list[Problem], mode: str, turn_tokens: int,
                   temperature: float = 0.0, seed: int = 0, leaf: int = 0) -> dict:
    """Accuracy by list length of ``policy`` run as ``mode``: ``recursion`` (delegation allowed up to the
    task's depth limit), ``flat`` (every call refused) or ``scaffold`` (the fixed splitting scaffold with
    leaves of at most ``leaf`` digits; 0: the window)."""
    c = task.config
    if mode == "flat":
        run = ReduceTask(replace(c, max_depth=0))
    elif mode == "scaffold":
        run = ReduceTask(c, scaffold_leaf=leaf or c.window)
    elif mode == "recursion":
        run = task
    else:
        raise ValueError(f"unknown evaluation mode {mode!r}")
    trees = run.rollout_trees(policy, problems, 1, Sampling(temperature=temperature, turn_tokens=turn_tokens), seed)
    by: dict[int, list[float]] = {}
    for r in trees.roots:
        nd = trees.nodes[r]
        by.setdefault(nd.problem.meta["length"], []).append(task.verify(nd.problem, nd.text))
    in_view = [nd for nd in trees.nodes if 2 <= nd.problem.meta["length"] <= c.window]
    out = {"accuracy": {str(n): sum(v) / len(v) for n, v in sorted(by.items())},
           "tokens": trees.tokens_processed, "tokens_per_problem": trees.tokens_processed / len(problems),
           "in_view_delegation_rate": sum(nd.delegations > 0 for nd in in_view) / max(1, len(in_view)),
           **tree_stats(trees)}
    train_lengths = set(c.train_lengths)
    short = [n for n in by if n in train_lengths]
    long = [n for n in by if n > max(train_lengths)]
    out["train_lengths"] = sum(out["accuracy"][str(n)] for n in short) / max(1, len(short))
    out["long"] = sum(out["accuracy"][str(n)] for n in long) / max(1, len(long)) if long else None
    return out


def combine_check(policy, task: ReduceTask, n: int = 200, seed: int = 0) -> dict:
    """Greedy accuracy of ``policy``'s combining turn when every child answered right, on ``n`` fresh lists
    of 2 to ``window`` digits, per call (``/``: two answers, ``#``: up to four): the step every tree needs."""
    rng = random.Random(f"combine-check-{seed}")
    lists = [task.draw(rng, rng.randint(2, task.config.window)) for _ in range(n)]
    out = {}
    for name, call in (("halves", HALVES), ("wide", WIDE)):
        s = policy.sample([task.combine_context(d, call) for d in lists], temperature=0.0, max_new_tokens=2)
        ok = [t[:1] == task.problem("c", d).answer for t, d in zip(s.texts, lists)]
        out[name] = sum(ok) / n
    return out


def train_arm(arm: str, base_dir: Path, task: ReduceTask, cfg: DelegationConfig, seed: int, work: Path,
              budget: float | None, progress: bool) -> dict:
    """Train one arm from the base; returns its run info (the model is saved to ``work / 'model'``)."""
    rl = cfg.rl
    sampling, train_cfg, callbacks = rl.sampling, replace(rl.train, seed=seed), []
    run_task, aggregate = task, "mean"
    if arm == "rao-sum":
        aggregate = "sum"
    elif arm == "flat":
        run_task = ReduceTask(replace(task.config, max_depth=0))
        sampling = replace(sampling, prompts_per_step=cfg.flat_prompts_per_step, group_size=cfg.flat_group_size)
        train_cfg = replace(train_cfg, max_steps=cfg.flat_max_steps)
        if budget is not None:
            callbacks.append(FlopBudget(budget))
    elif arm != "rao-mean":
        raise ConfigError(f"unknown arm {arm!r}; choose from {list(TRAINED)}")
    source = DelegationSource(run_task, run_task.problems("train"), sampling, seed=seed, bonus=cfg.bonus,
                              aggregate=aggregate)
    policy = Policy.load(base_dir)
    res = train(policy, "grpo", grpo_loss(replace(rl, sampling=sampling)), source, train_cfg, work,
                name=f"{arm} seed {seed}", progress=progress, model_dir=work / "model", callbacks=callbacks)
    return {"steps": res.steps, "flops": res.flops, "wall_s": res.wall_s,
            "root_accuracy_last": res.last.get("root_accuracy"), "nodes_per_tree_last": res.last.get("nodes_per_tree")}


def run_delegation(cfg: DelegationConfig, out: str | Path, use_cache: bool = True, progress: bool = False) -> dict:
    if "rao-mean" not in cfg.arms:
        raise ConfigError(f"arms must include rao-mean, the arm every contrast is taken against (got {cfg.arms})")
    out, seeds, stamp = begin(cfg, TRAINED, out, "delegation")
    t0 = time.perf_counter()
    org = get_family("delegation").variant_config(cfg.variant, base=cfg.organism)
    task = ReduceTask(org.task)
    console.rule(f"[bold]delegation/{cfg.variant} base organism")
    base_info = build_delegation_organism(org, out / "base", use_cache=use_cache, progress=progress)
    base = Policy.load(out / "base")
    test = task.problems("test")
    turn = cfg.rl.sampling.turn_tokens
    evals_base = {name: evaluate_trees(base, task, test, mode, turn, leaf=cfg.scaffold_leaf)
                  for name, (model, mode) in EVALS.items() if model == "base"}
    base_sampled = evaluate_trees(base, task, test, "recursion", turn, temperature=1.0, seed=cfg.seed)
    base_combine = combine_check(base, task)
    console.print(f"base combine accuracy (children right): {base_combine}", highlight=False)
    rows: list[dict] = []
    metrics: dict[str, list] = {}
    summary: dict = {}
    for s in seeds:
        row: dict = {"seed": s, "train": {}, "eval": dict(evals_base)}
        models = {"base": base}
        for arm in [a for a in TRAINED if a in cfg.arms]:
            console.rule(f"[bold]seed {s}: {arm}")
            work = out / "train" / f"{arm}-seed{s}"
            owned_rmtree(work)
            budget = row["train"]["rao-mean"]["flops"] if arm == "flat" else None
            row["train"][arm] = train_arm(arm, out / "base", task, cfg, s, work, budget, progress)
            metrics[f"{arm}_seed-{s}"] = read_metrics(work / "metrics.jsonl")
            models[arm] = Policy.load(work / "model")
        for name, (model, mode) in EVALS.items():
            if model != "base" and model in models:
                row["eval"][name] = evaluate_trees(models[model], task, test, mode, turn,
                                                  leaf=cfg.scaffold_leaf)
        for arm in models:
            if arm != "base":
                owned_rmtree(out / "train" / f"{arm}-seed{s}" / "checkpoints")
        console.print(f"seed {s}: long-list accuracy " + ", ".join(
            f"{k} {v['long']:.2f}" for k, v in row["eval"].items()), highlight=False)
        rows.append(row)
        summary = _summary(cfg, rows, base_info, base_sampled, evals_base, seeds[:len(rows)], t0)
        summary["base"]["combine_accuracy"] = base_combine
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _plot(summary, out / "accuracy_by_length")
    summary["plot"] = ["plots/accuracy_by_length.png"]
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if cfg.artifact:
        folder = write_artifact(Path(cfg.artifact).parent, Path(cfg.artifact).name, summary, seeds=seeds, stamp=stamp,
                                metrics=metrics)
        _plot(summary, plots_dir(folder) / "accuracy_by_length")
        console.print(f"wrote the stamped artifact {folder}", highlight=False)
    return summary


def _ci(vals: list[float]) -> dict:
    return bootstrap_ci(vals).as_dict()


def _summary(cfg: DelegationConfig, rows: list[dict], base_info: dict, base_sampled: dict, evals_base: dict,
             seeds: list[int], t0: float) -> dict:
    names = [n for n in EVALS if all(n in r["eval"] for r in rows)]
    lengths = list(rows[0]["eval"]["base"]["accuracy"])
    arms = {}
    for n in names:
        ev = [r["eval"][n] for r in rows]
        arms[n] = {"accuracy": {k: _ci([e["accuracy"][k] for e in ev]) for k in lengths},
                   "train_lengths": _ci([e["train_lengths"] for e in ev]), "long": _ci([e["long"] for e in ev]),
                   "long_minus_train": _ci([e["long"] - e["train_lengths"] for e in ev]),
                   "tokens_per_problem": _ci([e["tokens_per_problem"] for e in ev]),
                   "nodes_per_tree": _ci([e["nodes_per_tree"] for e in ev]),
                   "in_view_delegation_rate": _ci([e["in_view_delegation_rate"] for e in ev])}
    contrasts = {}
    for name, (a, b) in CONTRASTS.items():
        if a in names and b in names:
            contrasts[name] = {part: paired_difference({r["seed"]: r["eval"][a][part] for r in rows},
                                                       {r["seed"]: r["eval"][b][part] for r in rows}).as_dict()
                               for part in ("long", "train_lengths")}
    train = {a: {"flops": _ci([r["train"][a]["flops"] for r in rows]), "steps": _ci([r["train"][a]["steps"] for r in rows]),
                 "wall_s": _ci([r["train"][a]["wall_s"] for r in rows])}
             for a in TRAINED if all(a in r["train"] for r in rows)}
    if "flat" in train:
        train["flat_over_rao_mean_flops"] = _ci([r["train"]["flat"]["flops"] / r["train"]["rao-mean"]["flops"]
                                                 for r in rows])
    return {
        "variant": cfg.variant, "seeds": seeds, "n_seeds": len(rows), "lengths": lengths,
        "base": {"cache_hit": base_info["cache_hit"], "pretrain_steps": base_info["steps"],
                 "pretrain_flops": base_info["flops"], "greedy": evals_base["base"],
                 "sampled": base_sampled},
        "arms": arms, "contrasts": contrasts, "train": train,
        "per_seed": rows, "total_wall_s": time.perf_counter() - t0, "config": asdict(cfg),
    }


def _plot(summary: dict, stem: Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    from forklens.report.plots import new_figure, save_figure

    fig, ax = new_figure(7.5, 4.6)
    lengths = summary["lengths"]
    xs = [int(n) for n in lengths]
    for i, (name, arm) in enumerate(summary["arms"].items()):
        mean = [100 * arm["accuracy"][n]["mean"] for n in lengths]
        lo = [100 * arm["accuracy"][n]["low"] for n in lengths]
        hi = [100 * arm["accuracy"][n]["high"] for n in lengths]
        ax.plot(xs, mean, marker="o", color=f"C{i}", label=name)
        ax.fill_between(xs, lo, hi, color=f"C{i}", alpha=0.12)
    train_max = max(summary["config"]["organism"]["task"]["train_lengths"])
    ax.axvline(train_max, color="0.5", linestyle="--", linewidth=1, label="longest training list")
    ax.set_xscale("log", base=2)
    ax.set_ylim(-2, 102)
    ax.set_xlabel("list length (digits)")
    ax.set_ylabel("greedy accuracy (%)")
    ax.set_title(f"delegation/{summary['variant']}: accuracy vs length ({summary['n_seeds']} seeds, 95% CI)")
    ax.legend(loc="best", fontsize="small", framealpha=0.85)
    return save_figure(fig, stem, formats=formats)


def markdown_table(summary: dict) -> str:
    lengths = summary["lengths"]
    lines = ["| policy | " + " | ".join(f"L={n}" for n in lengths) + " | long (test only) |",
             "|---" * (len(lengths) + 2) + "|"]
    for name, arm in summary["arms"].items():
        cells = [f"{100 * arm['accuracy'][n]['mean']:.0f}%" for n in lengths]
        lg = arm["long"]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {100 * lg['mean']:.0f}% [{100 * lg['low']:.0f}, "
                     f"{100 * lg['high']:.0f}] |")
    return "\n".join(lines)
