"""`forklens experiment rewards --set family=shortcut`: outcome vs process rewards on a zoo family whose
task is a repeated-addition chain (``shortcut``: E081 premature confidence, arXiv 2605.24396; E079 MaR,
arXiv 2605.23384), precondition vs control variant, over seeds.

For each variant (default: every variant of the family, in order), ONE cached base organism; per seed
and per run (``outcome``, ``outcome+confidence``, ``outcome+mar`` by default) GRPO from that base with
the same sampling, loss and step budget and only the reward changed (:func:`chain_rewards`): the exact
verifier, ``- P`` of the premature-confidence probe (:class:`~forklens.rewards.confidence.ConfidenceReward`
with the chain cut before ``A=``), and MaR's KMR + RMR from :class:`~forklens.rewards.chain.ChainGrader`
(knowledge units = the chain's steps). Every model (the base once, each tuned model) answers the first
``eval_problems`` held-out problems greedily; :func:`~forklens.rewards.chain.chain_behaviour` reads
accuracy, the guess rate (answer = the cue but not the chain's own result) and the share of right
answers with wrong steps; :func:`cue_probability` adds ``guess_prob``, the probability of answering
with the cue after the model's own chain (continuous, so it can move where the greedy rate is 0), and
with ``zoo_samples > 0`` the ``sampled_*`` measures over that many responses per problem at temperature
1 (guess rate, premature rate = answers before any step, accuracy, right answers with wrong steps).
With one precondition and one control variant, ``summary.contrast`` holds each effect's size where the
mechanism can act minus its size in the control, paired by seed (:func:`variant_contrast`).

``summary.variants.<v>``::

    {"role", "about", "base": {accuracy, guess_rate, wrong_fact_rate_when_right, ...},
     "runs": {RUN: {"accuracy", "guess_rate", "wrong_fact_rate_when_right", "right_with_wrong_facts",
                    "guess_rate_gain", "accuracy_gain", ...: interval over seeds, "per_seed": [...]}},
     "differences": {"RUN-outcome": {metric: paired interval over seeds}}}

Intervals are 95% percentile bootstrap intervals over seeds (:func:`bootstrap_ci`); differences are paired
by seed (:func:`paired_difference`), over the seeds where both runs define the metric
(``wrong_fact_rate_when_right`` is undefined for a model with no right answer).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, replace
from pathlib import Path

from rich.console import Console

from forklens.analysis.curves import bootstrap_ci, paired_difference
from forklens.errors import ConfigError
from forklens.organisms import get_family
from forklens.policy import Policy
from forklens.report.artifacts import make_stamp, plots_dir, write_artifact
from forklens.rewards.chain import ChainGrader, chain_behaviour, read_chain
from forklens.rewards.confidence import ConfidenceReward
from forklens.rewards.metacognition import mar_component
from forklens.runfolder import claim_folder, owned_rmtree
from forklens.train.loop import read_metrics
from forklens.train.run import grpo_loss, train
from forklens.train.sources import GRPOSource, verifier_reward

console = Console(stderr=True)

CHAIN_TASKS = ("lengths", "shortcut")  # tasks ChainGrader reads
REWARDS = ("outcome", "kmr", "rmr", "confidence")  # the reward functions a chain task has
SAMPLED = ("accuracy", "guess_rate", "premature_rate", "wrong_fact_rate_when_right", "right_with_wrong_facts")
METRICS = ("accuracy", "guess_rate", "wrong_fact_rate_when_right", "right_with_wrong_facts", "kmr_mean", "rmr_mean",
           "guess_prob", "premature_rate", *(f"sampled_{m}" for m in SAMPLED))
GAINS = ("guess_rate", "guess_prob", "accuracy", "sampled_guess_rate", "sampled_premature_rate", "sampled_accuracy")
REFERENCE = "outcome"


def check(cfg, runs: dict[str, list[str]]) -> tuple:
    """(family, variants) after validating the config; errors name what is wrong."""
    family = get_family(cfg.family)
    variants = list(cfg.variants) or list(family.variants)
    for v in variants:
        family.variant(v)  # a ConfigError naming the variants if unknown
    task = family.task(family.variant_config(variants[0], overrides=cfg.organism))
    if getattr(task, "name", None) not in CHAIN_TASKS:
        raise ConfigError(f"experiment rewards: family {cfg.family!r} has task {getattr(task, 'name', None)!r}; "
                          f"the zoo path grades chains of the {', '.join(CHAIN_TASKS)} tasks (family=agent: the agent "
                          "organism)")
    unknown = [r for r in cfg.runs if r not in runs]
    if unknown or not cfg.runs:
        raise ConfigError(f"unknown runs {unknown}; choose from {list(runs)}")
    missing = sorted({f for r in cfg.runs for f in runs[r] if f not in REWARDS})
    if missing:
        raise ConfigError(f"runs {cfg.runs} need reward(s) {missing}, which a chain task does not have "
                          f"(it has {', '.join(REWARDS)})")
    if REFERENCE not in cfg.runs:
        raise ConfigError(f"runs must include {REFERENCE!r}: differences are taken against it")
    return family, variants


def make_rewards(names: list[str], task, policy, grader, confidence_m: int, seed: int, extra: dict | None = None) -> list:
    """The reward functions ``names`` of one run: the verifier, MaR's terms from ``grader``, the
    confidence penalty probing ``policy``, and ``extra`` (name -> factory) for task-specific ones."""
    make = {
        "outcome": lambda: verifier_reward(task),
        "kmr": lambda: mar_component(grader, "kmr"),
        "rmr": lambda: mar_component(grader, "rmr"),
        "confidence": lambda: ConfidenceReward(policy, task, m=confidence_m, seed=seed),
        **(extra or {}),
    }
    return [make[n]() for n in names]


def chain_rewards(names: list[str], task, policy, confidence_m: int, seed: int) -> list:
    return make_rewards(names, task, policy, ChainGrader(task), confidence_m, seed)


def cue_probability(policy, problems: list, texts: list[str]) -> float | None:
    """Mean probability that ``policy`` answers with the prompt's cue right after its own chain
    (``prompt + chain + "A="``, teacher-forced), over the problems whose cue differs from that chain's
    result: the pull towards guessing that a greedy reader sees only once it passes one half. None
    when no problem qualifies."""
    prompts, targets = [], []
    for p, t in zip(problems, texts):
        r = read_chain(p.prompt, t)
        if r.cue is None or r.cue == r.result:
            continue
        at = t.find("A=")
        prompts.append(policy.encode_prompt(p.prompt + (t if at < 0 else t[:at]) + "A="))
        targets.append(policy.tokenizer(f"{r.cue:02d}", add_special_tokens=False)["input_ids"])
    if not prompts:
        return None
    return sum(math.exp(float(sum(x.logprob))) for x in policy.score(prompts, targets)) / len(prompts)


def greedy_behaviour(policy, task, problems: list, max_new_tokens: int, samples: int = 0, seed: int = 0) -> dict:
    """:func:`chain_behaviour` of ``policy``'s greedy responses to ``problems``, and the cue's probability
    after each chain (:func:`cue_probability`, ``guess_prob``); with ``samples > 0`` also ``sampled_*``,
    the :data:`SAMPLED` measures over ``samples`` responses per problem at temperature 1 (sampling seed
    ``seed``), which see a behaviour the greedy reading hides until it is the argmax."""
    s = policy.sample([p.prompt for p in problems], n=1, temperature=0.0, max_new_tokens=max_new_tokens)
    texts = list(s.texts)
    out = {**chain_behaviour(problems, texts, task), "guess_prob": cue_probability(policy, problems, texts)}
    if samples:
        t = policy.sample([p.prompt for p in problems], n=samples, temperature=1.0, max_new_tokens=max_new_tokens,
                          seed=seed)
        sampled = chain_behaviour([problems[g] for g in t.group], list(t.texts), task)
        out.update({f"sampled_{m}": sampled[m] for m in SAMPLED})
    return out


def _interval(values: list) -> dict | None:
    vals = [v for v in values if v is not None]
    return bootstrap_ci(vals).as_dict() if vals else None


def _paired(rows_a: list[dict], rows_b: list[dict], metric: str) -> dict | None:
    a = {r["seed"]: r[metric] for r in rows_a if r.get(metric) is not None}
    b = {r["seed"]: r[metric] for r in rows_b if r.get(metric) is not None}
    return paired_difference(a, b).as_dict() if set(a) & set(b) else None


def summarise_variant(base: dict, per_run: dict[str, list[dict]]) -> dict:
    """Intervals over seeds per run, gains over the base and paired differences against ``outcome``."""
    runs = {}
    for name, rows in per_run.items():
        if not rows:
            continue
        runs[name] = {m: _interval([r.get(m) for r in rows]) for m in METRICS}
        for m in GAINS:
            runs[name][f"{m}_gain"] = _interval([None if r.get(m) is None or base.get(m) is None else r[m] - base[m]
                                                 for r in rows])
        runs[name]["per_seed"] = rows
    diffs = {f"{name}-{REFERENCE}": {m: _paired(per_run[name], per_run[REFERENCE], m) for m in METRICS}
             for name in per_run if name != REFERENCE and per_run[name] and per_run.get(REFERENCE)}
    return {"runs": runs, "differences": diffs}


def _by_seed(rows: list[dict], metric: str) -> dict[int, float]:
    return {r["seed"]: r[metric] for r in rows if r.get(metric) is not None}


def variant_contrast(summary: dict) -> dict | None:
    """With exactly one precondition and one control variant: how much larger each effect is where the
    mechanism can act than in the control, per metric, paired by seed (both variants' runs share the
    seeds): ``"outcome-base"`` = (outcome - base)_pre - (outcome - base)_ctl, and ``"RUN-outcome"`` =
    (RUN - outcome)_pre - (RUN - outcome)_ctl. None otherwise."""
    roles = {e["role"]: v for v, e in summary["variants"].items()}
    if sorted(roles) != ["control", "precondition"] or len(summary["variants"]) != 2:
        return None
    pre, ctl = (summary["variants"][roles[r]] for r in ("precondition", "control"))

    def effect(e: dict, run: str, m: str) -> dict[int, float]:
        ref = _by_seed(e["runs"].get(REFERENCE, {}).get("per_seed", []), m)
        if run == "base":
            b = e["base"].get(m)
            return {} if b is None else {s: v - b for s, v in ref.items()}
        a = _by_seed(e["runs"].get(run, {}).get("per_seed", []), m)
        return {s: a[s] - ref[s] for s in set(a) & set(ref)}

    out = {"precondition": roles["precondition"], "control": roles["control"]}
    for run in ["base", *summary["runs"]]:
        if run == REFERENCE:
            continue
        name = f"{REFERENCE}-base" if run == "base" else f"{run}-{REFERENCE}"
        diffs = {}
        for m in METRICS:
            a, b = effect(pre, run, m), effect(ctl, run, m)
            diffs[m] = paired_difference(a, b).as_dict() if set(a) & set(b) else None
        out[name] = diffs
    return out


def run_rewards_zoo(cfg, out: str | Path, runs: dict[str, list[str]], progress: bool = True) -> dict:
    """The zoo path of ``forklens experiment rewards`` (module docstring); ``runs`` maps run names to
    reward names."""
    family, variants = check(cfg, runs)
    out = Path(out)
    claim_folder(out, "experiment-rewards")
    t0 = time.perf_counter()
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    stamp = make_stamp(Path(cfg.artifact).name, seeds) if cfg.artifact else None
    summary: dict = {"family": family.name, "seeds": seeds, "runs": {r: runs[r] for r in cfg.runs}, "variants": {}}
    metrics_files: dict[str, Path] = {}
    for v in variants:
        vdir = out / v
        vcfg = family.variant_config(v, overrides=cfg.organism)
        task = family.task(vcfg)
        test = task.problems("test")
        mnt = max(len(task.expert_response(p)) for p in test) + cfg.token_margin
        problems = test[: cfg.eval_problems or None]
        console.rule(f"[bold]{family.name}/{v}: base organism")
        info = family.build(vcfg, vdir / "base", use_cache=True, progress=progress)
        base = greedy_behaviour(Policy.load(vdir / "base"), task, problems, mnt, cfg.zoo_samples)
        console.print(f"{family.name}/{v} base: {base}", highlight=False)
        rl = replace(cfg.zoo_rl, sampling=replace(cfg.zoo_rl.sampling, max_new_tokens=mnt))
        per_run: dict[str, list[dict]] = {r: [] for r in cfg.runs}
        entry = {"role": family.variant(v).role, "about": family.variant(v).about, "max_new_tokens": mnt,
                 "eval_problems": len(problems),
                 "base": {**base, "cache_hit": info["cache_hit"], "pretrain_flops": info.get("flops")}}
        for s in seeds:
            for r in cfg.runs:
                console.rule(f"[bold]{family.name}/{v} seed {s}: {r}")
                work = vdir / "train" / f"{r}-seed{s}"
                owned_rmtree(work)
                policy = Policy.load(vdir / "base")
                fns = chain_rewards(runs[r], task, policy, cfg.confidence_m, s)  # the probe follows this policy
                source = GRPOSource(task, task.problems("train"), rl.sampling, reward_fns=fns, seed=s)
                res = train(policy, "grpo", grpo_loss(rl), source, replace(rl.train, seed=s), work,
                            name=f"GRPO {r} seed {s}", progress=progress)
                probe_tokens = sum(getattr(f, "tokens_processed", 0) for f in fns)
                row = {"seed": s, **greedy_behaviour(policy, task, problems, mnt, cfg.zoo_samples),
                       "flops": res.flops + 2 * res.n_params * probe_tokens, "probe_tokens": probe_tokens,
                       "wall_s": res.wall_s, "steps": res.steps,
                       "final": {k: x for k, x in res.last.items() if k == "reward_mean" or k.startswith("reward/")}}
                per_run[r].append(row)
                metrics_files[f"{v}_{r.replace('+', '_')}_seed-{s}"] = res.metrics_file
                owned_rmtree(work / "checkpoints")
                console.print(f"{v} {r} seed {s}: accuracy {row['accuracy']:.3f}, guess rate {row['guess_rate']:.3f}, "
                              f"wrong facts when right {row['wrong_fact_rate_when_right']}", highlight=False)
                summary["variants"][v] = {**entry, **summarise_variant(base, per_run)}
                if (contrast := variant_contrast(summary)) is not None:
                    summary["contrast"] = contrast
                _write(out, summary, cfg, t0)
    plot = plot_guess_rates(summary, out / "guess_rate")
    summary["plot"] = [f"plots/{p.name}" for p in plot]
    _write(out, summary, cfg, t0)
    if cfg.artifact:
        folder = write_artifact(Path(cfg.artifact).parent, Path(cfg.artifact).name, summary, seeds=seeds, stamp=stamp,
                                metrics={k: read_metrics(p) for k, p in metrics_files.items() if p.is_file()})
        plot_guess_rates(summary, plots_dir(folder) / "guess_rate")
        console.print(f"wrote the stamped artifact {folder}", highlight=False)
    return summary


def _write(out: Path, summary: dict, cfg, t0: float) -> None:
    summary["total_wall_s"] = time.perf_counter() - t0
    summary["config"] = asdict(cfg)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "report.md").write_text(markdown_table(summary))


def plot_guess_rates(summary: dict, stem: Path) -> list[Path]:
    """Guess rate of the base and each run per variant, mean over seeds with 95% CIs: the sampled rate
    when the run measured one (``zoo_samples``), else the greedy one."""
    from forklens.report.plots import new_figure, save_figure  # matplotlib: loaded only when plotting

    fig, axes = new_figure(width=9.0)
    names = ["base", *summary["runs"]]
    key = "sampled_guess_rate" if any(e["base"].get("sampled_guess_rate") is not None
                                      for e in summary["variants"].values()) else "guess_rate"
    width = 0.8 / max(1, len(summary["variants"]))
    for i, (v, entry) in enumerate(summary["variants"].items()):
        means, errs = [], [[], []]
        for n in names:
            iv = ({"mean": entry["base"][key]} if n == "base" else entry["runs"].get(n, {}).get(key))
            m = iv["mean"] if iv else float("nan")
            means.append(m)
            errs[0].append(m - iv.get("low", m) if iv else 0.0)
            errs[1].append(iv.get("high", m) - m if iv else 0.0)
        xs = [k + i * width for k in range(len(names))]
        axes.bar(xs, means, width, yerr=errs, capsize=3, label=f"{v} ({entry['role']})")
    axes.set_xticks([k + width * (len(summary["variants"]) - 1) / 2 for k in range(len(names))], names)
    axes.set_ylabel(f"guess rate ({'greedy' if key == 'guess_rate' else 'sampled'} answer = cue, not the chain's result)")
    axes.set_title(f"rewards on {summary['family']}: guess rate ({len(summary['seeds'])} seeds, 95% CI)")
    axes.legend(fontsize=8)
    return save_figure(fig, stem, formats=("png",))


def _ci(iv: dict | None, pct: bool = True) -> str:
    if iv is None:
        return "—"
    f = (lambda x: f"{100 * x:.1f}") if pct else (lambda x: f"{x:.3f}")
    return f"{f(iv['mean'])} [{f(iv['low'])}, {f(iv['high'])}]"


def markdown_table(summary: dict) -> str:
    lines = [f"rewards on {summary['family']}, greedy on held-out problems, seeds {summary['seeds']} "
             "(mean [95% CI], %)", "",
             "| variant | run | accuracy | guess rate | wrong facts when right | guess rate - base |",
             "| --- | --- | --- | --- | --- | --- |"]
    for v, e in summary["variants"].items():
        b = e["base"]
        wr = b["wrong_fact_rate_when_right"]
        lines.append(f"| {v} ({e['role']}) | base | {100 * b['accuracy']:.1f} | {100 * b['guess_rate']:.1f} | "
                     f"{'—' if wr is None else f'{100 * wr:.1f}'} | |")
        for r, x in e["runs"].items():
            lines.append(f"| {v} | {r} | {_ci(x['accuracy'])} | {_ci(x['guess_rate'])} | "
                         f"{_ci(x['wrong_fact_rate_when_right'])} | {_ci(x['guess_rate_gain'])} |")
        for d, x in e["differences"].items():
            lines.append(f"| {v} | {d} (paired) | {_ci(x['accuracy'])} | {_ci(x['guess_rate'])} | "
                         f"{_ci(x['wrong_fact_rate_when_right'])} | |")
    return "\n".join(lines) + "\n"
