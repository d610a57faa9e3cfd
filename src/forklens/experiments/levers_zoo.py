"""`forklens experiment levers-zoo`: plain GRPO vs one training-loop lever on the zoo's agent variants.

The levers experiment (:mod:`forklens.experiments.levers`) asks whether a lever beats plain GRPO on
the agent organism, where no lever's precondition holds. This one asks it on organism variants built
so that each lever's mechanism can act (precondition) or cannot (control), issue 15:

============ ================================ ================================================
lever        claim                            precondition / control variant
============ ================================ ================================================
milestones   E008 (MiRA, arXiv 2603.19685)    agent-horizon/sparse-hops (sparse outcome success) /
                                              agent-horizon/dense-hops (not sparse, same base)
snr          E010 (RAGEN-2, arXiv 2604.06268) agent-horizon/noisy-hops (training reward flipped
                                              with probability 0.2) / sparse-hops (clean reward)
echo         E084 (ECHO, arXiv 2605.24517)    agent-tools/predictable (a computable tool) /
                                              agent-tools/random (unpredictable observations)
============ ================================ ================================================

The defaults are the first registered design (agent-horizon/long, short, noisy-reward and the two
agent-tools variants at GRPO lr 1e-3); at the laptop size of ``overrides`` its `long` base came out
degenerate and lr 1e-3 wrecked the bases, so the measured follow-ups name their variants and
``rl.train.learning_rate=3e-4`` on the command line (docs/results.md, docs/levers.md).

Arms, each GRPO with the same sampling, loss and step budget from the variant's one cached base:

* ``grpo``: outcome reward (the exact verifier);
* ``milestones``: outcome + milestone shaping (:func:`forklens.rewards.milestones.milestone_reward`,
  ``gamma^T Phi(s_T)``), weights 1 and 1;
* ``snr``: prompt groups filtered by reward variance (``snr_filter_rho``, RAGEN-2's 0.9);
* ``echo``: next-token loss on the observation tokens of the rollouts (``env_loss_coef``, ECHO's 0.05).

A variant whose config has ``reward_flip > 0`` (agent-horizon/noisy-reward) trains every arm on
:func:`forklens.rewards.noise.flipped` of the verifier (the flip stream seeded by the RL seed, so the
arms of one seed see the same flips for the same reward sequence) and is evaluated with the true
verifier. Every model is evaluated on the variant's held-out test questions at the tool-call cap ``T``
(default: the deepest question of the variant): pass@1 = mean success of ``eval_samples`` episodes
per question at temperature 1, sampling seed = the RL seed (so arms are paired by seed).

Per variant the summary has ``arms.ARM`` (mean [CI] over seeds and per-seed values),
``paired.[ARM-grpo]`` (the bootstrap interval of the per-seed difference to plain GRPO) and the base's
pass@1 (the precondition: sparse success where it should be sparse); ``contrast.[LEVER-grpo]`` is
precondition minus control of that difference, paired by seed, for each ``contrasts`` entry. The base
is also evaluated with every RL seed's sampling seed (``base.per_seed``), so ``vs_base.ARM`` is the
interval of each arm's gain over its own starting point, paired by seed: whether training moved
held-out success at all. With ``curve_every = N > 0`` every run is also evaluated on the first
``curve_problems`` test questions before training and after every N steps (and the last), and
``curves.ARM`` has the mean [CI] over seeds at each of those steps (held-out success during training;
the evaluation draws from its own seeded generator, so it does not change the training run). With
``train_eval_problems = N > 0`` the base (per seed) and every trained model are also evaluated on the
first N *training* questions (``train_accuracy``, ``base.train_per_seed``), ``vs_base_train.ARM`` is
the gain there and ``gap.ARM`` the training-question gain minus the held-out gain, paired by seed:
whether what training raised transfers to new questions.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from forklens.analysis.curves import bootstrap_ci, paired_difference
from forklens.analysis.evaluate import EvalConfig, evaluate
from forklens.config import field
from forklens.errors import ConfigError
from forklens.experiments.boundary import AgentRLConfig
from forklens.experiments.levers import train_summary
from forklens.experiments.rewards import evaluate_agent
from forklens.organisms import get_family
from forklens.policy import Policy
from forklens.report.artifacts import finish_run, make_stamp
from forklens.rewards.milestones import milestone_reward
from forklens.rewards.noise import flipped
from forklens.runfolder import claim_folder, owned_rmtree
from forklens.train.loop import TrainConfig, read_metrics
from forklens.train.run import grpo_loss, train
from forklens.train.sources import GRPOSource, verifier_reward
from forklens.train.validation import ValidationCallback

console = Console(stderr=True)
ARMS = ("grpo", "milestones", "snr", "echo")
REFERENCE = "grpo"


def _zoo_rl() -> AgentRLConfig:
    """Short GRPO (20 steps x 8 questions x 8 episodes, learning rate 1e-3) so that 5 seeds of every arm
    fit in about half an hour per family on a 2-core CPU shared with other jobs (a depth-10 GRPO step of
    64 episodes took 3-7 s there); fixed before any measured run."""
    rl = AgentRLConfig(train=TrainConfig(max_steps=20, learning_rate=1e-3, micro_batch_size=128, save_every=0))
    rl.sampling.prompts_per_step = 8
    rl.sampling.mi_proxy_every = 0
    return rl


def _size_overrides() -> list[str]:
    """Every variant's base at laptop size: 2 layers of width 64, 300 pretraining steps."""
    return ["model.hidden_size=64", "model.intermediate_size=256", "model.num_hidden_layers=2", "pretrain.max_steps=300"]


@dataclass
class LeversZooConfig:
    variants: list[str] = field(default_factory=lambda: ["agent-horizon/long", "agent-horizon/short",
                                                         "agent-horizon/noisy-reward", "agent-tools/predictable",
                                                         "agent-tools/random"],
                                help="FAMILY/VARIANT of the zoo; variant names must be unique across families.")
    arms: list[str] = field(default_factory=lambda: ["long:milestones", "short:milestones", "noisy-reward:snr",
                                                     "predictable:echo", "random:echo"],
                            help="VARIANT:LEVER pairs; every variant also gets plain GRPO (the reference).")
    contrasts: list[str] = field(default_factory=lambda: ["milestones:long/short", "echo:predictable/random"],
                                 help="LEVER:PRE/CTL: the lever's gain over GRPO on PRE minus that on CTL, by seed.")
    overrides: list[str] = field(default_factory=_size_overrides, help="Dotted KEY=VALUE overrides of every "
                                 "variant's organism config (after the variant's own).")
    base_seed: int = field(0, help="Seed of each variant's base organism (one cached base per variant).")
    seed: int = field(0, help="First RL seed; seeds are seed, seed+1, ...")
    seeds: int = field(5, ge=1, help="RL seeds per arm (overridden by --seeds).")
    rl: AgentRLConfig = field(default_factory=_zoo_rl, help="GRPO settings shared by every arm (T set per variant).")
    T: int = field(0, ge=0, help="Tool-call cap of training and evaluation (0 = the deepest question of the variant).")
    snr_filter_rho: float = field(0.9, gt=0, le=1, help="SNR filter rho of the snr arm (RAGEN-2's value).")
    env_loss_coef: float = field(0.05, gt=0, help="ECHO lambda of the echo arm (the paper's value).")
    milestone_gamma: float = field(1.0, gt=0, le=1, help="Discount of the milestone shaping.")
    eval_samples: int = field(4, ge=1, help="Episodes per test question at temperature 1 (pass@1 = their mean).")
    eval_problems: int = field(50, ge=0, help="Held-out test questions: the first N (0 = the whole test split).")
    curve_every: int = field(0, ge=0, help="Also evaluate held-out pass@1 before training and every N steps "
                             "(0 = no curve).")
    curve_problems: int = field(25, ge=1, help="Test questions of each curve point (the first N; eval_samples "
                                "episodes each).")
    train_eval_problems: int = field(0, ge=0, help="Also evaluate the base and every trained model on the first N "
                                     "training questions (0 = not).")
    level: float = field(0.95, gt=0, lt=1, help="Bootstrap interval level over seeds.")
    artifact: str = field("", help="Also write a stamped artifact folder here (e.g. results/levers-agent-zoo).")


# ------------------------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class Plan:
    variants: dict[str, tuple[str, str]]  # variant -> (family, variant)
    arms: dict[str, list[str]]  # variant -> arms, plain GRPO first
    contrasts: dict[str, tuple[str, str]]  # lever -> (precondition variant, control variant)


def _split(text: str, sep: str, what: str, example: str) -> tuple[str, str]:
    left, mid, right = text.partition(sep)
    if not mid or not left or not right:
        raise ConfigError(f"{what} {text!r}: expected {example}")
    return left.strip(), right.strip()


def make_plan(cfg: LeversZooConfig) -> Plan:
    """Parse and check ``variants``, ``arms`` and ``contrasts`` before anything is built."""
    if not cfg.variants:
        raise ConfigError("variants: name at least one FAMILY/VARIANT")
    variants: dict[str, tuple[str, str]] = {}
    for item in cfg.variants:
        fam, var = _split(item, "/", "variants entry", "FAMILY/VARIANT, e.g. agent-horizon/long")
        get_family(fam).variant(var)  # unknown names fail here
        if var in variants:
            raise ConfigError(f"variants: {var!r} appears twice (variant names must be unique in one run)")
        variants[var] = (fam, var)
    arms: dict[str, list[str]] = {v: [REFERENCE] for v in variants}
    for item in cfg.arms:
        var, lever = _split(item, ":", "arms entry", "VARIANT:LEVER, e.g. long:milestones")
        if var not in variants:
            raise ConfigError(f"arms entry {item!r}: variant {var!r} is not in variants ({', '.join(variants)})")
        if lever not in ARMS or lever == REFERENCE:
            raise ConfigError(f"arms entry {item!r}: unknown lever {lever!r}; levers: {', '.join(ARMS[1:])}")
        if lever not in arms[var]:
            arms[var].append(lever)
    contrasts: dict[str, tuple[str, str]] = {}
    for item in cfg.contrasts:
        lever, pair = _split(item, ":", "contrasts entry", "LEVER:PRE/CTL, e.g. milestones:long/short")
        pre, ctl = _split(pair, "/", "contrasts entry", "LEVER:PRE/CTL, e.g. milestones:long/short")
        for v in (pre, ctl):
            if lever not in arms.get(v, []):
                raise ConfigError(f"contrasts entry {item!r}: variant {v!r} has no {lever!r} arm")
        if lever in contrasts:
            raise ConfigError(f"contrasts: lever {lever!r} is contrasted twice")
        contrasts[lever] = (pre, ctl)
    return Plan(variants, arms, contrasts)


# ------------------------------------------------------------------------------------ one run


def arm_source(arm: str, task, cfg: LeversZooConfig, T: int, reward_flip: float, seed: int):
    """The arm's loss settings and GRPO source (the reward flipped when ``reward_flip > 0``)."""
    sampling = replace(cfg.rl.sampling, T=T)
    loss = grpo_loss(cfg.rl)
    outcome = verifier_reward(task)
    if reward_flip > 0:
        outcome = flipped(outcome, reward_flip, seed=seed)
    fns = [outcome]
    if arm == "milestones":
        fns.append(milestone_reward(task, cfg.milestone_gamma))
    elif arm == "snr":
        sampling = replace(sampling, snr_filter_rho=cfg.snr_filter_rho)
    elif arm == "echo":
        loss = replace(loss, env_loss_coef=cfg.env_loss_coef)
    elif arm != REFERENCE:
        raise ConfigError(f"unknown arm {arm!r}; arms: {', '.join(ARMS)}")
    return loss, GRPOSource(task, task.problems("train"), sampling, reward_fns=fns, seed=seed)


def curve_callback(task, cfg: LeversZooConfig, T: int, seed: int) -> ValidationCallback | None:
    """Held-out pass@1 on the first ``curve_problems`` test questions every ``curve_every`` steps (sampled
    at temperature 1 with the run's seed, as the final evaluation), or None when ``curve_every`` is 0."""
    if not cfg.curve_every:
        return None
    ev = EvalConfig(n=cfg.eval_samples, temperature=1.0, T=T, turn_tokens=cfg.rl.sampling.turn_tokens, seed=seed)
    return ValidationCallback(task, task.problems("test")[: cfg.curve_problems], every=cfg.curve_every, config=ev)


def train_split_accuracy(policy, task, cfg: LeversZooConfig, T: int, seed: int) -> float:
    """pass@1 on the first ``train_eval_problems`` training questions (``eval_samples`` episodes each at
    temperature 1, sampling seed ``seed``): what training raised on the questions it saw."""
    ev = EvalConfig(split="train", n=cfg.eval_samples, temperature=1.0, T=T, turn_tokens=cfg.rl.sampling.turn_tokens,
                    seed=seed, limit=cfg.train_eval_problems)
    return evaluate(policy, task, ev)["accuracy"]


def run_arm(arm: str, base_dir: Path, task, cfg: LeversZooConfig, T: int, reward_flip: float, seed: int,
            work: Path, progress: bool) -> tuple[dict[str, Any], list[dict]]:
    """Train one arm from the base and evaluate it: (the run's numbers, its per-step metrics). With a
    curve the numbers also have ``curve``: ``[[step, pass@1], ...]`` from step 0 (the base)."""
    owned_rmtree(work)
    policy = Policy.load(base_dir)
    loss, source = arm_source(arm, task, cfg, T, reward_flip, seed)
    val = curve_callback(task, cfg, T, seed)
    start = val.accuracy(policy) if val is not None else None
    res = train(policy, "grpo", loss, source, replace(cfg.rl.train, seed=seed, save_every=0), work,
                name=f"{arm} seed {seed}", progress=progress, callbacks=[val] if val is not None else None)
    owned_rmtree(work / "checkpoints")
    metrics = read_metrics(res.metrics_file)
    ev = evaluate_agent(policy, task, cfg.eval_problems, T, cfg.rl.sampling.turn_tokens, cfg.eval_samples, seed=seed)
    row = {"accuracy": ev["accuracy"], "tool_calls_mean": ev["tool_calls_mean"], "flops": res.flops,
           "wall_s": res.wall_s, "steps": res.steps, **train_summary(metrics)}
    if val is not None:
        row["curve"] = [[0, start]] + [[step, acc] for step, _, acc in val.history]
    if cfg.train_eval_problems:
        row["train_accuracy"] = train_split_accuracy(policy, task, cfg, T, seed)
    return row, metrics


# ------------------------------------------------------------------------------------ aggregation


def variant_summary(per_seed: dict[str, dict[int, dict]], level: float, base: dict[int, float] | None = None,
                    base_train: dict[int, float] | None = None) -> dict[str, Any]:
    """Per arm: mean [CI] over seeds of every number; paired differences of accuracy to plain GRPO and,
    given the base's accuracy per seed, to the base (``vs_base``); given the base's training-question
    accuracy too, the gain on training questions (``vs_base_train``) and its excess over the held-out
    gain (``gap``); each arm's curve, when it has one."""
    arms: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    for arm, rows in per_seed.items():
        seeds = sorted(rows)
        keys = [k for k in rows[seeds[0]] if k != "curve" and all(k in rows[s] for s in seeds)]
        arms[arm] = {"per_seed": {k: [rows[s][k] for s in seeds] for k in keys},
                     **{k: bootstrap_ci([rows[s][k] for s in seeds], level, resamples=2000).as_dict() for k in keys}}
        if all("curve" in rows[s] for s in seeds):
            curves[arm] = curve_summary({s: rows[s]["curve"] for s in seeds}, level)
    paired = {}
    ref = {s: r["accuracy"] for s, r in per_seed.get(REFERENCE, {}).items()}
    for arm, rows in per_seed.items():
        if arm != REFERENCE and ref:
            paired[f"{arm}-{REFERENCE}"] = paired_difference({s: r["accuracy"] for s, r in rows.items()}, ref, level,
                                                             resamples=2000).as_dict()
    out: dict[str, Any] = {"arms": arms, "paired": paired}
    if base:
        out["vs_base"] = {arm: paired_difference({s: r["accuracy"] for s, r in rows.items()}, base, level,
                                                 resamples=2000).as_dict() for arm, rows in per_seed.items()}
    if base and base_train:
        train_gain = {arm: {s: r["train_accuracy"] - base_train[s] for s, r in rows.items()} for arm, rows in
                      per_seed.items()}
        test_gain = {arm: {s: r["accuracy"] - base[s] for s, r in rows.items()} for arm, rows in per_seed.items()}
        out["vs_base_train"] = {arm: bootstrap_ci(list(g.values()), level, resamples=2000).as_dict()
                                for arm, g in train_gain.items()}
        out["gap"] = {arm: paired_difference(g, test_gain[arm], level, resamples=2000).as_dict()
                      for arm, g in train_gain.items()}
    if curves:
        out["curves"] = curves
    return out


def curve_summary(by_seed: dict[int, list[list[float]]], level: float) -> dict[str, Any]:
    """``{"steps", "mean", "low", "high", "per_seed"}`` of held-out pass@1 at the steps every seed has."""
    steps = sorted(set.intersection(*({int(st) for st, _ in c} for c in by_seed.values())))
    at = {s: {int(st): acc for st, acc in c} for s, c in by_seed.items()}
    ivs = [bootstrap_ci([at[s][st] for s in sorted(at)], level, resamples=2000) for st in steps]
    return {"steps": steps, "mean": [iv.mean for iv in ivs], "low": [iv.low for iv in ivs],
            "high": [iv.high for iv in ivs], "per_seed": {str(s): [at[s][st] for st in steps] for s in sorted(at)}}


def gains(per_seed: dict[str, dict[int, dict]], lever: str) -> dict[int, float]:
    """Per seed: the lever arm's accuracy minus plain GRPO's."""
    return {s: r["accuracy"] - per_seed[REFERENCE][s]["accuracy"] for s, r in per_seed[lever].items()
            if s in per_seed[REFERENCE]}


def contrasts(plan: Plan, per_seed: dict[str, dict[str, dict[int, dict]]], level: float) -> tuple[dict, dict]:
    """``{LEVER-grpo: interval}`` of precondition gain minus control gain (paired by seed), and the pairs."""
    out, pairs = {}, {}
    for lever, (pre, ctl) in plan.contrasts.items():
        if lever in per_seed.get(pre, {}) and lever in per_seed.get(ctl, {}):
            out[f"{lever}-{REFERENCE}"] = paired_difference(gains(per_seed[pre], lever), gains(per_seed[ctl], lever),
                                                            level, resamples=2000).as_dict()
            pairs[f"{lever}-{REFERENCE}"] = {"precondition": pre, "control": ctl}
    return out, pairs


def plot(summary: dict, stem: Path) -> list[Path]:
    """Each lever's paired gain over plain GRPO per variant, mean and interval; with curves, a second
    panel of held-out pass@1 over training steps per variant and arm."""
    from forklens.report.plots import new_figure, save_figure  # matplotlib: loaded only when plotting

    curves = {(v, arm): c for v, s in summary["variants"].items() for arm, c in s.get("curves", {}).items()}
    fig, ax = new_figure(8.0, 7.5 if curves else 4.0)
    if curves:
        grid = fig.add_gridspec(2, 1)
        ax.set_subplotspec(grid[0])
        _plot_curves(fig.add_subplot(grid[1]), curves)
    labels, means, lows, highs = [], [], [], []
    for v, s in summary["variants"].items():
        for key, iv in s["paired"].items():
            labels.append(f"{v}\n{key}")
            means.append(100 * iv["mean"])
            lows.append(100 * (iv["mean"] - iv["low"]))
            highs.append(100 * (iv["high"] - iv["mean"]))
    ax.errorbar(range(len(labels)), means, yerr=[lows, highs], fmt="o", capsize=4)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylabel("held-out pass@1, lever - GRPO (points)")
    ax.set_title("Lever minus plain GRPO, paired by seed (mean, 95% bootstrap CI)", fontsize=9)
    return save_figure(fig, stem)


def _plot_curves(ax, curves: dict[tuple[str, str], dict]) -> None:
    for (v, arm), c in curves.items():
        line = ax.plot(c["steps"], [100 * m for m in c["mean"]], marker="o", label=f"{v} {arm}")[0]
        ax.fill_between(c["steps"], [100 * x for x in c["low"]], [100 * x for x in c["high"]], alpha=0.15,
                        color=line.get_color())
    ax.grid(True, alpha=0.3)
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("held-out pass@1 (%)")
    ax.set_title("Held-out pass@1 during training (curve questions; mean, 95% bootstrap CI over seeds)", fontsize=9)
    ax.legend(fontsize=7)


# ------------------------------------------------------------------------------------ the experiment


def run_levers_zoo(cfg: LeversZooConfig, out: str | Path, progress: bool = False) -> dict:
    plan = make_plan(cfg)
    out = Path(out)
    claim_folder(out, "experiment-levers-zoo")
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    stamp = make_stamp(Path(cfg.artifact).name, seeds) if cfg.artifact else None
    t0 = time.perf_counter()
    summary: dict[str, Any] = {"claims": "E008 (arXiv 2603.19685), E010 (arXiv 2604.06268), E084 (arXiv 2605.24517)",
                               "seeds": seeds, "config": asdict(cfg), "variants": {}}
    per_seed: dict[str, dict[str, dict[int, dict]]] = {}
    metrics: dict[str, list] = {}

    def write() -> None:
        summary["contrast"], summary["contrast_pairs"] = contrasts(plan, per_seed, cfg.level)
        summary["wall_s"] = time.perf_counter() - t0
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))

    for v, (fam_name, var_name) in plan.variants.items():
        family = get_family(fam_name)
        org = replace(family.variant_config(var_name, overrides=cfg.overrides), seed=cfg.base_seed)
        task = family.task(org)
        T = cfg.T or max(p.meta["depth"] for p in task.problems("train") + task.problems("test"))
        flip = float(getattr(org, "reward_flip", 0.0))
        console.rule(f"[bold]{fam_name}/{var_name}: base organism")
        base_info = family.build(org, out / v / "base", progress=progress)
        base_eval = evaluate_agent(Policy.load(out / v / "base"), task, cfg.eval_problems, T,
                                   cfg.rl.sampling.turn_tokens, cfg.eval_samples, seed=cfg.seed)
        var = family.variant(var_name)
        entry = {"family": fam_name, "role": var.role, "about": var.about, "overrides": list(var.overrides),
                 "claims": list(var.claims or family.claims), "T": T, "reward_flip": flip, "arms_run": plan.arms[v],
                 "base": {"accuracy": base_eval["accuracy"], "tool_calls_mean": base_eval["tool_calls_mean"],
                          "cache_hit": base_info["cache_hit"], "pretrain_steps": base_info["steps"],
                          "pretrain_flops": base_info["flops"]},
                 "test": {"questions": base_eval["problems"] // cfg.eval_samples, "samples": cfg.eval_samples}}
        summary["variants"][v] = entry
        per_seed[v] = {}
        base_acc: dict[int, float] = {}
        base_train: dict[int, float] = {}
        for s in seeds:
            base_acc[s] = base_eval["accuracy"] if s == cfg.seed else evaluate_agent(
                Policy.load(out / v / "base"), task, cfg.eval_problems, T, cfg.rl.sampling.turn_tokens,
                cfg.eval_samples, seed=s)["accuracy"]
            entry["base"]["per_seed"] = [base_acc[k] for k in sorted(base_acc)]
            entry["base"]["over_seeds"] = bootstrap_ci(list(base_acc.values()), cfg.level, resamples=2000).as_dict()
            if cfg.train_eval_problems:
                base_train[s] = train_split_accuracy(Policy.load(out / v / "base"), task, cfg, T, s)
                entry["base"]["train_per_seed"] = [base_train[k] for k in sorted(base_train)]
            for arm in plan.arms[v]:
                console.print(f"{v}/{arm} seed {s}", highlight=False)
                row, rows = run_arm(arm, out / v / "base", task, cfg, T, flip, s, out / v / f"{arm}-seed{s}", progress)
                per_seed[v].setdefault(arm, {})[s] = row
                metrics[f"{v}-{arm}-seed{s}"] = rows
                entry.update(variant_summary(per_seed[v], cfg.level, base_acc, base_train))
                write()
    write()
    folder = finish_run(summary, out, plot, "lever_gains", cfg.artifact, seeds=seeds, stamp=stamp, metrics=metrics)
    if folder is not None:
        console.print(f"wrote the stamped artifact {folder}", highlight=False)
    return summary


def markdown_table(summary: dict) -> str:
    """Per variant and arm: held-out pass@1 mean [CI] over seeds and the paired gain over plain GRPO."""
    def ci(x: dict) -> str:
        return f"{100 * x['mean']:.1f} [{100 * x['low']:.1f}, {100 * x['high']:.1f}]"
    lines = ["| variant | role | base pass@1 | arm | pass@1 (%) | arm - GRPO (points, paired) |", "|" + "---|" * 6]
    for v, s in summary["variants"].items():
        for arm, a in s.get("arms", {}).items():
            gain = s["paired"].get(f"{arm}-{REFERENCE}")
            lines.append(f"| {v} | {s['role']} | {100 * s['base']['accuracy']:.1f} | {arm} | {ci(a['accuracy'])} | "
                         f"{ci(gain) if gain else '—'} |")
    for key, iv in summary.get("contrast", {}).items():
        pair = summary["contrast_pairs"][key]
        lines.append(f"\n{key}: {pair['precondition']} minus {pair['control']}, paired by seed: {ci(iv)} points")
    return "\n".join(lines) + "\n"
