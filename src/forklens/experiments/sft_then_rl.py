"""`forklens experiment sft-then-rl`: corrected SFT-then-RL vs buggy SFT and mixed-policy methods,
compared at matched compute.

On the arithmetic organism (default), or on a zoo family's variant (``family`` / ``variant``, built
through :mod:`forklens.organisms`; ``experiment sft-then-rl-zoo`` runs a precondition and a control
variant), from the same base model, the same expert (gold) traces and ONE problem
pool (the first ``pool_size`` training problems, for SFT and for every RL arm alike):

* ``sft-then-rl``: SFT on expert traces with the correct global token normalisation, then GRPO;
* ``sft-then-rl-short``: the same SFT, then GRPO capped at ``rl_short_steps``;
* ``sft[offload-accum]-then-rl`` and ``sft[mean-of-means]-then-rl``: SFT with a simulated bug, then GRPO;
* ``luffy``: GRPO from the base with expert traces in every group, off-policy tokens trained with
  policy shaping (``mixed_policy`` objective; LUFFY, arXiv:2504.14945);
* ``relift``: GRPO from the base, interleaved with SFT steps on the expert traces of the problems
  whose whole group failed (ReLIFT, arXiv:2506.07527).

Every arm is evaluated greedily on a validation slice held out from the END of the training split
(never the test split) every ``eval_every`` steps; each RL phase stops by the validation-plateau rule
(:class:`~forklens.analysis.curves.PlateauStopper`, ``patience`` evaluations without a gain of
``min_delta``), capped at ``rl.train.max_steps``. Each curve starts at its starting model's validation
accuracy and cost: SFT FLOPs for the SFT-then-RL arms, 0 for arms from the base. ``summary.comparison``
is :func:`~forklens.analysis.curves.compare_methods` over sft-then-rl, luffy and relift (reference
sft-then-rl); ``summary.sft_only`` holds each SFT variant's validation accuracy over seeds and the
offload-accum bug's paired difference; test accuracy of each final model is reported, never used.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from forklens.analysis.curves import Curve, PlateauStopper, bootstrap_ci, compare_methods, paired_difference
from forklens.analysis.evaluate import EvalConfig, evaluate
from forklens.config import field
from forklens.errors import ConfigError
from forklens.objectives.mixed_policy import MixedPolicyLossConfig
from forklens.organisms import get_family
from forklens.organisms.arith import OrganismConfig, build_base_organism
from forklens.policy import Policy
from forklens.runfolder import claim_folder, owned_rmtree
from forklens.tasks import get_task
from forklens.train.loop import TrainConfig
from forklens.train.run import RLConfig, grpo_loss, train
from forklens.train.sources import GRPOSource, InterleavedSFTSource, SFTSource
from forklens.train.validation import ValidationCallback

console = Console(stderr=True)

METHODS = ["sft-then-rl", "sft-then-rl-short", "sft[offload-accum]-then-rl", "sft[mean-of-means]-then-rl",
           "luffy", "relift"]
COMPARED = ("sft-then-rl", "luffy", "relift")  # summary.comparison (reference first)
SFT_ONLY_BUGS = ("none", "offload-accum")  # trained by default: summary.sft_only.offload_bug_difference
BUGS = ("none", "offload-accum", "mean-of-means")


def _sft_default() -> TrainConfig:
    # one epoch over the expert set (256 problems / 64 per step) with K = 64 / 8 = 8 micro-steps
    return TrainConfig(max_steps=4, learning_rate=3e-4, micro_batch_size=8)


@dataclass
class SFTThenRLConfig:
    organism: OrganismConfig = field(default_factory=OrganismConfig, help="The base organism (as in the demo) when "
                                     "`family` is empty.")
    family: str = field("", help="Organism family of the zoo (`forklens organism list`); empty: the arith organism "
                        "of `organism`.")
    variant: str = field("", help="The family's variant (with `family`).")
    overrides: list[str] = field(default_factory=list, help="Dotted overrides of the variant's family config "
                                 "(with `family`, e.g. model.hidden_size=64).")
    sft: TrainConfig = field(default_factory=_sft_default,
                             help="SFT on expert traces. micro_batch_size < sft_batch_size makes gradient "
                             "accumulation (K = sft_batch_size / micro_batch_size micro-steps), where the bugs act.")
    sft_batch_size: int = field(64, ge=1, help="Expert traces per SFT optimizer step.")
    pool_size: int = field(256, ge=1, help="Training problems EVERY arm draws from: the SFT expert traces and the "
                           "GRPO, LUFFY and ReLIFT prompts (one pool for all).")
    n_validation: int = field(128, ge=1, help="Validation problems, held out from the end of the training split "
                              "(disjoint from the pool and from the test split).")
    eval_every: int = field(2, ge=1, help="Validation evaluation every N training steps (and after the last).")
    sft_eval_every: int = field(0, ge=0, help="Validation every N SFT steps (and after the last); 0: eval_every.")
    patience: int = field(3, ge=1, help="Plateau rule: stop after this many evaluations without a gain.")
    min_delta: float = field(0.005, ge=0, help="Plateau rule: the smallest validation-accuracy gain that counts.")
    within: float = field(0.01, gt=0, lt=1, help="FLOPs-to-target: target = best plateau over all runs - within.")
    target: float = field(0.0, ge=0, le=1, help="FLOPs-to-target: a fixed validation accuracy instead (0: the "
                          "`within` rule).")
    sft_only_bugs: list[str] = field(default_factory=lambda: list(SFT_ONLY_BUGS), help="SFT variants trained (and "
                                     "reported before RL) on every seed, whether or not a method starts from them; "
                                     "must include none.")
    rl: RLConfig = field(default_factory=RLConfig, help="GRPO settings shared by every method (max_steps: the cap).")
    rl_short_steps: int = field(20, ge=1, help="Step cap of the short SFT-then-RL variant.")
    luffy_n_expert: int = field(1, ge=0, help="Expert traces per GRPO group (LUFFY).")
    luffy_shaping_gamma: float = field(0.1, gt=0, help="LUFFY policy-shaping gamma.")
    relift_sft_every: int = field(5, ge=1, help="ReLIFT: every N-th step is an SFT step on buffered hard problems.")
    relift_min_buffer: int = field(4, ge=1, help="ReLIFT: minimum buffered problems for an SFT step.")
    methods: list[str] = field(default_factory=lambda: list(METHODS), help="Methods to run (--methods overrides).")
    eval: EvalConfig = field(default_factory=EvalConfig, help="Evaluation (greedy); test accuracy is reported only.")
    seeds: int = field(3, ge=1, help="Seeds per method.")
    seed: int = field(0, help="First seed; seeds are seed, seed+1, ...")


def organism_task(cfg: SFTThenRLConfig):
    """The task of the run's organism: the zoo variant's (``family`` set) or the arith organism's. A
    ConfigError names the families or variants when either is unknown."""
    if not cfg.family:
        if cfg.variant or cfg.overrides:
            raise ConfigError("variant and overrides need a family (e.g. family=lengths variant=varied)")
        return get_task(cfg.organism.task, cfg.organism.arith)
    family = get_family(cfg.family)
    if not cfg.variant:
        raise ConfigError(f"family {cfg.family!r} needs a variant; variants: {', '.join(family.variants)}")
    return family.task(family.variant_config(cfg.variant, overrides=cfg.overrides))


def build_organism(cfg: SFTThenRLConfig, out: Path) -> dict:
    """Build (or fetch from the cache) the run's base organism into ``out``."""
    if not cfg.family:
        return build_base_organism(cfg.organism, out)
    return get_family(cfg.family).build_variant(cfg.variant, out, overrides=cfg.overrides)


def organism_name(cfg: SFTThenRLConfig) -> str:
    return f"{cfg.family}/{cfg.variant}" if cfg.family else f"arith ({cfg.organism.task})"


def split_problems(task, cfg) -> tuple[list, list]:
    """(pool, validation): the first ``cfg.pool_size`` training problems and the last ``cfg.n_validation``."""
    train_problems = task.problems("train")
    if cfg.pool_size + cfg.n_validation > len(train_problems):
        raise ConfigError(f"pool_size ({cfg.pool_size}) + n_validation ({cfg.n_validation}) exceeds the "
                          f"{len(train_problems)} training problems of task {task.name!r}")
    return train_problems[: cfg.pool_size], train_problems[len(train_problems) - cfg.n_validation:]


def _eval_config(cfg: SFTThenRLConfig, seed: int) -> EvalConfig:
    return replace(cfg.eval, max_new_tokens=cfg.rl.sampling.max_new_tokens, seed=seed)


def _test_accuracy(model_dir: Path, task, cfg: SFTThenRLConfig, seed: int) -> float:
    return evaluate(Policy.load(model_dir), task, replace(_eval_config(cfg, seed), split="test"))["accuracy"]


def _validator(task, validation: list, cfg: SFTThenRLConfig, seed: int, stop: bool, every: int = 0
               ) -> ValidationCallback:
    stopper = PlateauStopper(cfg.patience, cfg.min_delta) if stop else None
    return ValidationCallback(task, validation, every or cfg.eval_every, stopper, _eval_config(cfg, seed))


def run_sft(start: Path, out: Path, task, pool: list, validation: list, cfg: SFTThenRLConfig, seed: int,
            bug: str) -> dict:
    """SFT on the pool's expert traces; the validation curve is logged, nothing stops it."""
    pairs = [(p.prompt, task.expert_response(p)) for p in pool]
    val = _validator(task, validation, cfg, seed, stop=False, every=cfg.sft_eval_every)
    res = train(Policy.load(start), "sft", None, SFTSource(pairs, cfg.sft_batch_size, seed),
                replace(cfg.sft, seed=seed, simulate_bug=bug), out, name=f"SFT[{bug}]" if bug != "none" else "SFT",
                model_dir=out / "model", callbacks=[val])
    return {"flops": res.flops, "wall_s": res.wall_s, "model": out / "model", "steps": res.steps,
            "validation_accuracy": val.history[-1][2], "history": val.history}


def run_rl(start: Path, out: Path, task, pool: list, validation: list, cfg: SFTThenRLConfig, seed: int,
           steps: int, mode: str, start_accuracy: float) -> dict:
    """GRPO (``mode="grpo"``), LUFFY-style (``"luffy"``) or ReLIFT-style (``"relift"``) from ``start`` on
    the shared pool, stopped by the validation plateau rule (seeded with ``start_accuracy``) or at ``steps``."""
    rl = cfg.rl
    if mode == "luffy":
        source = GRPOSource(task, pool, rl.sampling, seed=seed, expert_fn=task.expert_response,
                            n_expert=cfg.luffy_n_expert)
    elif mode == "relift":
        source = InterleavedSFTSource(GRPOSource(task, pool, rl.sampling, seed=seed), task.expert_response,
                                      cfg.relift_sft_every, cfg.relift_min_buffer)
    else:
        source = GRPOSource(task, pool, rl.sampling, seed=seed)
    loss = grpo_loss(rl)
    if mode != "grpo":
        loss = MixedPolicyLossConfig(**asdict(loss), shaping_gamma=cfg.luffy_shaping_gamma)
    val = _validator(task, validation, cfg, seed, stop=True)
    val.stopper.update(start_accuracy)  # the starting model is the curve's first evaluation
    res = train(Policy.load(start), "grpo" if mode == "grpo" else "mixed_policy", loss, source,
                replace(rl.train, seed=seed, max_steps=steps, save_every=0), out,
                name={"grpo": "GRPO", "luffy": "LUFFY", "relift": "ReLIFT"}[mode], model_dir=out / "model",
                callbacks=[val])
    return {"flops": res.flops, "wall_s": res.wall_s, "model": out / "model", "steps": res.steps,
            "stopped": res.steps < steps, "history": val.history}


def check_sft_only(bugs: list[str]) -> None:
    unknown = set(bugs) - set(BUGS)
    if unknown or "none" not in bugs:
        raise ConfigError(f"sft_only_bugs must include none and only name {', '.join(BUGS)}; got {bugs}")


def _check_methods(methods: list[str]) -> list[str]:
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ConfigError(f"unknown method(s) {sorted(unknown)}; known: {', '.join(METHODS)}")
    if not methods:
        raise ConfigError(f"no method to run; choose from {', '.join(METHODS)}")
    return [m for m in METHODS if m in methods]


def run_sft_then_rl(cfg: SFTThenRLConfig, out: str | Path, methods: list[str] | None = None) -> dict:
    out = Path(out)
    methods = _check_methods(list(methods) if methods is not None else list(cfg.methods))
    check_sft_only(cfg.sft_only_bugs)
    task = organism_task(cfg)
    pool, validation = split_problems(task, cfg)
    claim_folder(out, "experiment-sft-then-rl")
    base = out / "base"
    build_organism(cfg, base)
    seeds = [cfg.seed + k for k in range(cfg.seeds)]
    probe = _validator(task, validation, cfg, cfg.seed, stop=False)  # its problem list and eval settings
    base_val = evaluate(Policy.load(base), probe.task, probe.config)["accuracy"]
    base_test = _test_accuracy(base, task, cfg, cfg.seed)
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    curves: dict[str, dict[int, Curve]] = {m: {} for m in methods}
    sft_only: dict[str, dict[int, dict]] = {}
    for seed in seeds:
        work = out / f"seed{seed}"
        sft_models = {}
        bugs = [b for b in BUGS if b in cfg.sft_only_bugs or f"sft[{b}]-then-rl" in methods]
        for bug in bugs:
            console.rule(f"seed {seed}: SFT (bug: {bug})")
            sft = run_sft(base, work / f"sft-{bug}", task, pool, validation, cfg, seed, bug)
            sft_models[bug] = sft
            sft_only.setdefault(bug, {})[seed] = {"validation_accuracy": sft["validation_accuracy"],
                                                  "test_accuracy": _test_accuracy(sft["model"], task, cfg, seed),
                                                  "flops": sft["flops"], "steps": sft["steps"]}
        plan = []
        for name in methods:
            if name in ("luffy", "relift"):
                plan.append((name, None, cfg.rl.train.max_steps, name))
            elif name == "sft-then-rl-short":
                plan.append((name, sft_models["none"], cfg.rl_short_steps, "grpo"))
            else:
                bug = "none" if name == "sft-then-rl" else name[len("sft["):-len("]-then-rl")]
                plan.append((name, sft_models[bug], cfg.rl.train.max_steps, "grpo"))
        for name, sft, steps, mode in plan:
            console.rule(f"seed {seed}: {escape(name)}")
            start, start_flops = (sft["model"], sft["flops"]) if sft else (base, 0.0)
            start_acc = sft["validation_accuracy"] if sft else base_val
            rl_dir = work / name.replace("[", "-").replace("]", "")
            rl = run_rl(start, rl_dir, task, pool, validation, cfg, seed, steps, mode, start_acc)
            curve = Curve((start_flops, *(start_flops + f for _, f, _ in rl["history"])),
                          (start_acc, *(a for _, _, a in rl["history"])))
            curves[name][seed] = curve
            runs[name].append({"seed": seed, "test_accuracy": _test_accuracy(rl["model"], task, cfg, seed),
                               "validation_plateau": max(curve.accuracy), "flops": curve.flops[-1],
                               "rl_flops": rl["flops"], "rl_steps": rl["steps"], "stopped_by_rule": rl["stopped"],
                               "wall_s": rl["wall_s"] + (sft["wall_s"] if sft else 0.0),
                               "metrics": str(rl_dir.relative_to(out) / "metrics.jsonl")})
            owned_rmtree(rl_dir / "checkpoints")
    summary = build_summary(cfg, seeds, methods, runs, curves, sft_only, base_val, base_test)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "table.md").write_text(markdown_table(summary))
    plot(curves, out / "accuracy_vs_flops", organism_name(cfg))
    return summary


def build_summary(cfg: SFTThenRLConfig, seeds: list[int], methods: list[str], runs: dict, curves: dict,
                  sft_only: dict, base_val: float, base_test: float) -> dict:
    """The experiment's summary: comparison, per-method runs and intervals, SFT-only accuracies and the
    offload bug's paired difference, every curve, and the config."""
    summary: dict = {"task": cfg.organism.task if not cfg.family else cfg.family, "organism": organism_name(cfg),
                     "seeds": seeds, "pool_size": cfg.pool_size,
                     "n_validation": cfg.n_validation,
                     "stopping_rule": {"patience": cfg.patience, "min_delta": cfg.min_delta,
                                       "eval_every": cfg.eval_every, "cap_steps": cfg.rl.train.max_steps},
                     "base": {"validation_accuracy": base_val, "test_accuracy": base_test},
                     "methods": {}, "sft_only": {}, "comparison": None, "search_flops": {}}
    for name in methods:
        rs = runs[name]
        summary["methods"][name] = {
            "test_accuracy": bootstrap_ci([r["test_accuracy"] for r in rs]).as_dict(),
            "validation_plateau": bootstrap_ci([r["validation_plateau"] for r in rs]).as_dict(),
            "flops": bootstrap_ci([r["flops"] for r in rs]).as_dict(),
            "rl_steps": bootstrap_ci([r["rl_steps"] for r in rs]).as_dict(), "runs": rs}
    for bug, by_seed in sft_only.items():
        summary["sft_only"][bug] = {
            "validation_accuracy": bootstrap_ci([v["validation_accuracy"] for v in by_seed.values()]).as_dict(),
            "test_accuracy": bootstrap_ci([v["test_accuracy"] for v in by_seed.values()]).as_dict(),
            "per_seed": {str(s): v for s, v in sorted(by_seed.items())}}
    if all(b in sft_only for b in SFT_ONLY_BUGS):
        acc = {b: {s: v["validation_accuracy"] for s, v in sft_only[b].items()} for b in SFT_ONLY_BUGS}
        summary["sft_only"]["offload_bug_difference"] = paired_difference(acc["offload-accum"], acc["none"]).as_dict()
    compared = {m: curves[m] for m in COMPARED if m in curves}
    if COMPARED[0] in compared and len(compared) > 1:
        summary["comparison"] = compare_methods(compared, reference=COMPARED[0], within=cfg.within,
                                                target=cfg.target or None, search_flops={m: 0.0 for m in compared})
    summary["curves"] = {m: {str(s): {"flops": list(c.flops), "accuracy": list(c.accuracy)}
                             for s, c in sorted(by_seed.items())} for m, by_seed in curves.items()}
    summary["config"] = asdict(cfg)
    return summary


def curves_of(summary: dict) -> dict[str, dict[int, Curve]]:
    """The validation curves of a summary (``summary.curves``) as :class:`Curve` objects by method and seed."""
    return {m: {int(s): Curve(tuple(c["flops"]), tuple(c["accuracy"])) for s, c in by_seed.items()}
            for m, by_seed in summary["curves"].items()}


def plot(curves: dict[str, dict[int, Curve]], stem: Path, organism: str = "", formats: tuple[str, ...] | None = None
         ) -> list[Path]:
    from forklens.report.plots import plot_curves_vs_flops  # matplotlib: loaded only when plotting

    series = {m: {s: (list(c.flops), list(c.accuracy)) for s, c in by_seed.items()}
              for m, by_seed in curves.items() if by_seed}
    where = f" on {organism}" if organism else ""
    return plot_curves_vs_flops(series, stem, ylabel="validation accuracy (greedy)",
                                title=f"sft-then-rl{where}: validation accuracy vs FLOPs (thin: seeds, bold: mean)",
                                **({"formats": formats} if formats else {}))


def _ci(iv: dict | None, scale: float = 100.0, fmt: str = ".1f") -> str:
    if iv is None:
        return "n/a"
    return f"{scale * iv['mean']:{fmt}} [{scale * iv['low']:{fmt}}, {scale * iv['high']:{fmt}}]"


def markdown_table(summary: dict) -> str:
    comp = summary.get("comparison") or {"methods": {}}
    lines = ["| method | validation plateau % | FLOPs to target | unreached | total FLOPs at stop | RL steps "
             "| test accuracy % (reporting only) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, m in summary["methods"].items():
        rep = comp["methods"].get(name)
        ftt = _ci(rep["flops_to_target"], 1.0, ".3g") if rep else "-"
        unreached = str(rep["n_unreached"]) if rep else "-"
        lines.append(f"| {name} | {_ci(m['validation_plateau'])} | {ftt} | {unreached} | "
                     f"{_ci(m['flops'], 1.0, '.3g')} | {_ci(m['rl_steps'], 1.0, '.1f')} | {_ci(m['test_accuracy'])} |")
    lines += ["", "| SFT only (before RL) | validation accuracy % | test accuracy % |", "| --- | --- | --- |"]
    for bug, m in summary["sft_only"].items():
        if bug != "offload_bug_difference":
            lines.append(f"| SFT, bug = {bug} | {_ci(m['validation_accuracy'])} | {_ci(m['test_accuracy'])} |")
    if "offload_bug_difference" in summary["sft_only"]:
        lines.append(f"\noffload-accum bug - correct (SFT-only validation, paired by seed): "
                     f"{_ci(summary['sft_only']['offload_bug_difference'])} points")
    if summary.get("comparison"):
        lines.append(f"target: {100 * comp['target']:.1f}% ({comp['target_rule']})")
        for key, r in comp["ratios"].items():
            lines.append(f"FLOPs-to-target ratio {key}: {_ci(r['with_search'], 1.0, '.3g')}")
        for key, r in comp.get("flops_to_target_ratio_lb", {}).items():
            lb = r["with_search"]
            censored = f" ({lb['n_censored']} censored seed(s), {lb['n_reference_unreached']} without a value)" if lb else ""
            lines.append(f"FLOPs-to-target ratio {key}, censored lower bound: {_ci(lb, 1.0, '.3g')}{censored}")
    lines.append(f"\nbase organism: validation {100 * summary['base']['validation_accuracy']:.1f}%, test "
                 f"{100 * summary['base']['test_accuracy']:.1f}%  (seeds {summary['seeds']}, intervals: 95% bootstrap)")
    return "\n".join(lines) + "\n"
