"""`forklens experiment forks`: sparse policy selection measured on organisms whose mistakes are their own,
with the planted fork as the consistency reference and SFT pairs as the tool's negative control.

For each ``family/variant`` in ``variants`` (organism zoo, docs/organisms.md):

1. the base organism, built once and cached (``family_overrides`` resize it, e.g. the demo's quick arith);
2. per seed, a tuned model from that one base: GRPO with the same :class:`RLConfig` (same steps) for every
   family, except ``negctl``, whose tuned model is SFT on gold traces (:func:`tune_negctl`);
3. held-out accuracy of base (once) and tuned model on the first ``eval_problems`` test problems: greedy, or
   with ``decode_temperature`` > 0 sampled pass@1 averaged over ``decode_samples`` draws per problem;
4. ``forklens diff`` of tuned vs base on the tuned model's greedy responses to the first ``diff_prompts``
   test problems, summarised at its disagreements by :func:`forklens.analysis.fork_stats.fork_stats`
   (share in the base top-5, rank distribution, entropy ratio, base probability of the tuned token,
   branches with base probability > ``branch_p``);
5. the oracle / random / entropy intervention (:func:`run_intervention`) on ``intervene_problems``, greedy or
   (``decode_temperature`` > 0) sampled at that temperature with ``decode_samples`` draws per problem, common
   random numbers across decoders; gates with ``+sample`` (emit an RL draw instead of the RL argmax) or ``+base``
   (emit the base's own argmax: the twin that separates RL's choice from what any argmax does) only then.
   The diff (step 4) stays on the tuned model's greedy responses: it locates where the argmaxes differ.

"First" counts from ``problem_offset`` (default 0): a pilot can choose a setting on later test problems
that a measured run with offset 0 never evaluates (:class:`OffsetTask`).

Seeds share one base per variant (the seed changes the GRPO / SFT run only). Each metric gets a
percentile-bootstrap interval over seeds (:func:`bootstrap_ci`). Gain recovered (``*_recovered``) is
undefined for a seed whose tuned model does not beat the base on the intervention's problems; such
seeds are left out of that metric's interval (its ``n`` says how many remain). Max new tokens per variant: the longest gold trace of its test problems
plus ``token_margin``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

from rich.console import Console

from forklens.analysis.curves import bootstrap_ci
from forklens.analysis.diff import run_diff
from forklens.analysis.evaluate import EvalConfig, evaluate
from forklens.analysis.fork_stats import fork_stats, mean_rank_distribution, read_token_rows
from forklens.analysis.intervene import gate_keys, parse_gate, random_reference, run_intervention
from forklens.config import apply_override, field, validate
from forklens.errors import ConfigError
from forklens.organisms import get_family
from forklens.organisms.negctl import tune_negctl
from forklens.policy import Policy
from forklens.report.artifacts import make_stamp, plots_dir, write_artifact
from forklens.report.plots import plot_rank_distribution
from forklens.rewards import as_problem, texts_of
from forklens.runfolder import claim_folder, owned_rmtree
from forklens.train.loop import TrainConfig, read_metrics
from forklens.train.run import RLConfig, run_grpo
from forklens.train.sources import SamplingConfig, verifier_reward

console = Console(stderr=True)

DEFAULT_VARIANTS = ["arith/planted", "addv/undertrained", "addv/length-gen", "addv/capacity",
                    "negctl/notation", "negctl/unreachable", "negctl/same-notation"]
#: per-seed numbers that get an interval over seeds (field name -> where it is in a seed's record)
METRICS = {
    "base_accuracy": ("base_accuracy",),
    "tuned_accuracy": ("tuned_accuracy",),
    "gain": ("gain",),
    "share_in_topk": ("forks", "share_in_topk"),
    "share_shifted": ("forks", "share_shifted"),
    "mean_rank": ("forks", "mean_rank"),
    "entropy_ratio": ("forks", "entropy_ratio"),
    "base_prob_rl_token": ("forks", "base_prob_rl_token_mean"),
    "branches": ("forks", "branches_mean"),
    "share_multi_branch": ("forks", "share_multi_branch"),
    "disagreements_per_response": ("forks", "disagreements_per_response"),
    "oracle_recovered": ("recovered", "oracle"),
    "random_recovered": ("recovered", "random"),
    "entropy_recovered": ("recovered", "entropy"),
    "oracle_sample_recovered": ("recovered", "oracle+sample"),
    "entropy_sample_recovered": ("recovered", "entropy+sample"),
    "random_sample_recovered": ("recovered", "random+sample"),
    "oracle_base_recovered": ("recovered", "oracle+base"),
    "entropy_base_recovered": ("recovered", "entropy+base"),
    "random_base_recovered": ("recovered", "random+base"),
    # pass@1 with the RL argmax minus pass@1 with the base argmax at the same gate (its +base twin)
    "oracle_rl_minus_base_argmax": ("rl_minus_base_argmax", "oracle"),
    "entropy_rl_minus_base_argmax": ("rl_minus_base_argmax", "entropy"),
    "random_rl_minus_base_argmax": ("rl_minus_base_argmax", "random"),
}


def _rl_default() -> RLConfig:
    return RLConfig(train=TrainConfig(max_steps=20, learning_rate=1e-4, micro_batch_size=128, save_every=0),
                    sampling=SamplingConfig(prompts_per_step=8, group_size=8, max_new_tokens=48))


@dataclass
class ForksConfig:
    variants: list[str] = field(default_factory=lambda: list(DEFAULT_VARIANTS),
                                help="family/variant pairs of the organism zoo to measure, in order.")
    family_overrides: list[str] = field(
        default_factory=lambda: ["arith:model.num_hidden_layers=2", "arith:pretrain.max_steps=300"],
        help="FAMILY:KEY=VALUE overrides of a family's config applied before its variant's (default: the "
        "demo's quick arith organism).")
    rl: RLConfig = field(default_factory=_rl_default, help="GRPO from each base (same for every RL variant; "
                         "max_new_tokens is set per variant).")
    seeds: int = field(5, ge=1, help="Seeds per variant (GRPO / SFT seeds from one cached base).")
    seed: int = field(0, help="First seed; seeds are seed, seed+1, ...")
    eval_problems: int = field(200, ge=1, help="Held-out test problems for accuracy.")
    diff_prompts: int = field(50, ge=1, help="Held-out prompts the diff uses.")
    intervene_problems: int = field(100, ge=1, help="Held-out problems of the intervention.")
    intervene_gates: list[str] = field(default_factory=lambda: ["oracle", "random", "entropy:0.5"],
                                       help="Intervention gates: one oracle, one random and one entropy:TAU, plus "
                                       "(decode_temperature > 0 only) optionally entropy:TAU+sample / oracle+sample "
                                       "with random+sample as their control, and +base twins (the base's argmax).")
    intervene_seeds: int = field(1, ge=1, help="Random-gate draws per intervention (greedy decoding; sampled "
                                 "decoding draws decode_samples times for every decoder).")
    decode_temperature: float = field(0.0, ge=0, help="0: greedy accuracy and intervention (as registered before). "
                                      "> 0: held-out accuracy is sampled pass@1 at this temperature and the "
                                      "intervention decodes sampled at it.")
    decode_samples: int = field(1, ge=1, help="Draws per problem under sampled decoding (pass@1 is their mean).")
    top_k: int = field(5, ge=1, help="Re-ranked means base rank 2..top_k; beyond is shifted.")
    branch_p: float = field(0.05, gt=0, lt=1, help="A branch is a candidate with base probability above this.")
    token_margin: int = field(8, ge=0, help="Max new tokens = longest gold test trace + this.")
    problem_offset: int = field(0, ge=0, help="Held-out test problems start at this index for accuracy, diff and "
                                "intervention (a pilot on problems a measured run with offset 0 does not use).")
    reward: Literal["verifier", "digits"] = field(
        "verifier", help="GRPO's outcome reward: the task's 0/1 verifier, or (addv only) the share of the answer's "
        "digits that are right (digit_reward; 1 only for the exact answer). With digits, the verifier is logged "
        "beside it at weight 0 (reward/<task>_verifier in the metrics).")
    train_on: Literal["all", "base-wrong"] = field(
        "all", help="GRPO's training problems: the whole training split, or only those the base answers wrong "
        "greedily (offline difficulty filtering; the base is evaluated once per variant on the training split). "
        "SFT-tuned (negctl) variants ignore it.")
    artifact: str = field("", help="Also write a stamped artifact folder here (e.g. results/forks).")


def grpo_rewards(reward: str, task) -> dict:
    """``run_grpo`` keyword arguments for the reward named by :attr:`ForksConfig.reward` (none: the verifier)."""
    if reward == "verifier":
        return {}
    if reward != "digits":
        raise ConfigError(f"reward: {reward!r} is not verifier or digits")
    score = getattr(task, "digit_reward", None)
    if score is None:
        raise ConfigError(f"reward=digits: task {task.name!r} has no per-digit reward (addv has one)")

    def digits(prompts, completions, problem, **_):
        return [score(as_problem(p), c) for p, c in zip(problem, texts_of(completions))]
    digits.__name__ = f"{task.name}_digits"
    return {"reward_fns": [digits, verifier_reward(task)], "reward_weights": [1.0, 0.0]}


def variant_config(spec: str, family_overrides: list[str]):
    """(family, variant name, config) of ``family/variant`` with the family-level overrides applied."""
    if spec.count("/") != 1:
        raise ConfigError(f"variants: {spec!r} is not FAMILY/VARIANT")
    fname, vname = spec.split("/")
    family = get_family(fname)
    family.variant(vname)
    base = family.config()
    for item in family_overrides:
        if ":" not in item or "=" not in item:
            raise ConfigError(f"family_overrides: {item!r} is not FAMILY:KEY=VALUE")
        target, assignment = item.split(":", 1)
        if target == fname:
            apply_override(base, assignment)
    validate(base)
    return family, vname, family.variant_config(vname, base=base)


class OffsetTask:
    """``task`` whose test split starts at problem ``offset``; every other attribute is the task's own.
    Max new tokens stay those of the whole test split, so a pilot decodes exactly as the measured run."""

    def __init__(self, task, offset: int):
        n = len(task.problems("test"))
        if not 0 <= offset < n:
            raise ConfigError(f"problem_offset: {offset} is outside the {n} test problems of {task.name}")
        self._task, self._offset = task, offset

    def problems(self, split: str):
        probs = self._task.problems(split)
        return probs[self._offset:] if split == "test" else probs

    def __getattr__(self, name: str):
        return getattr(self._task, name)


def recovered(inter: dict) -> dict:
    """Gain recovered per gate, defined only where the tuned model beats the base on the intervention's
    problems (with no gain, or a loss, the ratio says nothing about where a gain comes from)."""
    acc = inter["accuracy"]
    ok = acc["rl"] > acc["base"]
    return {k: (v if ok else None) for k, v in inter["gain_recovered"].items()}


def rl_minus_base_argmax(inter: dict) -> dict:
    """Per gate with a ``+base`` twin: pass@1 emitting the RL argmax minus pass@1 emitting the base's own
    argmax at that gate (what RL's choice adds beyond taking an argmax there); empty without twins."""
    acc = inter["accuracy"]
    return {k: acc[k] - acc[f"{k}+base"] for k in ("oracle", "random", "entropy")
            if k in acc and f"{k}+base" in acc}


def _get(record: dict, path: tuple[str, ...]):
    cur = record
    for key in path:
        if not isinstance(cur, dict) or cur.get(key) is None:
            return None
        cur = cur[key]
    return cur


def aggregate(records: list[dict]) -> dict:
    """Bootstrap intervals over seeds of every :data:`METRICS` entry (None values left out)."""
    out = {}
    for name, path in METRICS.items():
        vals = [v for v in (_get(r, path) for r in records) if v is not None]
        out[name] = bootstrap_ci(vals).as_dict() if vals else None
    return out


def grpo_problems(train_on: str, base, task, mnt: int) -> tuple[list | None, dict]:
    """(GRPO's training problems, what was chosen) for :attr:`ForksConfig.train_on`: None (the task's training
    split) for ``all``; for ``base-wrong`` the training problems whose greedy base answer is wrong."""
    if train_on == "all":
        return None, {"train_on": "all"}
    if train_on != "base-wrong":
        raise ConfigError(f"train_on: {train_on!r} is not all or base-wrong")
    train = task.problems("train")
    ev = evaluate(base, task, EvalConfig(split="train", max_new_tokens=mnt))
    wrong = [p for p, r in zip(train, ev["per_problem"]) if r["correct"] == 0]
    if not wrong:
        raise ConfigError("train_on=base-wrong: the base answers every training problem right; nothing to train on")
    return wrong, {"train_on": "base-wrong", "train_problems": len(train), "kept": len(wrong),
                   "base_train_accuracy": ev["accuracy"]}


def check_gates(specs: list[str], temperature: float) -> list:
    """The parsed gates: exactly one oracle, one random and one entropy:TAU, plus optional ``+sample`` /
    ``+base`` gates (sampled decoding only; random+M needs the gate it copies counts from)."""
    gates = [parse_gate(g) for g in specs]
    keys = gate_keys(gates)
    if {k for k, g in keys.items() if g.emit == "argmax"} != {"oracle", "random", "entropy"} or len(keys) != len(gates):
        raise ConfigError("intervene_gates: give exactly one oracle, one random and one entropy:TAU gate (and at most "
                          "one of each +sample / +base gate)")
    if any(g.emit != "argmax" for g in gates):
        if temperature == 0:
            raise ConfigError("intervene_gates: +sample / +base gates differ from their argmax gates only under "
                              "sampling; they need decode_temperature > 0")
        for k, g in keys.items():
            if g.kind == "random" and g.emit != "argmax":
                random_reference(keys, k)
    return gates


def decoding(cfg: ForksConfig) -> dict:
    """How accuracy and the intervention decode (recorded in the artifact)."""
    if cfg.decode_temperature == 0:
        return {"mode": "greedy", "temperature": 0.0, "samples_per_problem": 1}
    return {"mode": "sampled", "temperature": cfg.decode_temperature, "samples_per_problem": cfg.decode_samples,
            "accuracy": "pass@1: mean over samples_per_problem draws per problem", "diff": "tuned model's greedy "
            "responses"}


def run_forks(cfg: ForksConfig, out: str | Path, use_cache: bool = True, progress: bool = True) -> dict:
    out = Path(out)
    claim_folder(out, "experiment-forks")
    t_start = time.perf_counter()
    specs = [variant_config(s, cfg.family_overrides) for s in cfg.variants]  # bad names fail first
    for family, _, vcfg in specs:  # and a reward a GRPO variant's task does not have
        if family.name != "negctl":
            grpo_rewards(cfg.reward, family.task(vcfg))
    gates = check_gates(cfg.intervene_gates, cfg.decode_temperature)
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    stamp = make_stamp(Path(cfg.artifact).name, seeds) if cfg.artifact else None
    summary: dict = {"variants": {}, "seeds": seeds, "config": asdict(cfg), "decoding": decoding(cfg)}
    sampled = cfg.decode_temperature > 0
    metrics_files: dict[str, Path] = {}

    for family, vname, vcfg in specs:
        key = f"{family.name}/{vname}"
        vdir = out / f"{family.name}-{vname}"
        console.rule(f"[bold]{key}: base organism")
        task = family.task(vcfg)
        mnt = max(len(task.expert_response(p)) for p in task.problems("test")) + cfg.token_margin
        if cfg.problem_offset:
            task = OffsetTask(task, cfg.problem_offset)
        test = task.problems("test")
        base_info = family.build(vcfg, vdir / "base", use_cache=use_cache, progress=progress)
        base = Policy.load(vdir / "base")
        ev = EvalConfig(max_new_tokens=mnt, limit=cfg.eval_problems, temperature=cfg.decode_temperature,
                        n=cfg.decode_samples if sampled else 1, seed=cfg.seed)
        # greedy: one base number; sampled: the base is drawn again with each seed's generator seed, the
        # tuned model's, so a seed's gain compares draws seeded alike (the base's own sampling noise then
        # enters the interval over seeds instead of being one fixed offset)
        base_accs = {cfg.seed: evaluate(base, task, ev)["accuracy"]}
        base_acc = base_accs[cfg.seed]
        console.print(f"{key}: base {summary['decoding']['mode']} accuracy {100 * base_acc:.1f}% "
                      f"({'cached' if base_info['cache_hit'] else 'pretrained'}), max_new_tokens {mnt}",
                      highlight=False)
        by_id = {p.id: p for p in test}
        records = [{"id": p.id, "prompt": p.prompt, "answer": p.answer} for p in test]

        def verify(rec: dict, text: str) -> bool:
            return task.verify(by_id[rec["id"]], text) > 0

        rl = replace(cfg.rl, sampling=replace(cfg.rl.sampling, max_new_tokens=mnt))
        per_seed = []
        train_probs, train_info = (None, {}) if family.name == "negctl" else \
            grpo_problems(cfg.train_on, base, task, mnt)
        for s in seeds:
            sd = vdir / f"seed-{s}"
            console.rule(f"[bold]{key}: seed {s}")
            tuned_dir = sd / "tuned"
            owned_rmtree(tuned_dir)
            if family.name == "negctl":
                info = tune_negctl(vcfg, vdir / "base", tuned_dir, seed=s, progress=progress)
                how = "sft"
            else:
                owned_rmtree(sd / "train")
                info = run_grpo(vdir / "base", task, rl, sd / "train", seed=s, progress=progress, model_dir=tuned_dir,
                                problems=train_probs, **grpo_rewards(cfg.reward, task))
                metrics_files[f"{family.name}-{vname}_seed-{s}"] = sd / "train" / "metrics.jsonl"
                how = "grpo"
            tuned = Policy.load(tuned_dir)
            tuned_acc = evaluate(tuned, task, replace(ev, seed=s))["accuracy"]
            if sampled and s not in base_accs:
                base_accs[s] = evaluate(base, task, replace(ev, seed=s))["accuracy"]
            base_acc_s = base_accs[s] if sampled else base_acc
            diff = run_diff(base, tuned, records[: cfg.diff_prompts], responses="rl-greedy", max_new_tokens=mnt,
                            top_k=cfg.top_k, seed=s, verifier=verify, out_dir=sd / "diff", progress=False)
            forks = fork_stats(read_token_rows(sd / "diff" / "tokens.jsonl"), top_k=cfg.top_k, branch_p=cfg.branch_p)
            inter = run_intervention(base, tuned, records[: cfg.intervene_problems], verify, gates,
                                     temperature=cfg.decode_temperature,
                                     seeds=cfg.decode_samples if sampled else cfg.intervene_seeds, seed=s,
                                     max_new_tokens=mnt)
            per_seed.append({
                "seed": s, "tuned_by": how, "base_accuracy": base_acc_s, "tuned_accuracy": tuned_acc,
                "gain": tuned_acc - base_acc_s,
                "train": {k: info[k] for k in ("steps", "flops", "wall_s")},
                "diff": {k: diff.get(k) for k in ("unshifted_frac", "reranked_frac", "shifted_frac",
                                                   "mean_rank_at_disagreement", "entropy_ratio")},
                "forks": forks,
                "intervention": {k: inter[k] for k in ("accuracy", "gain_recovered", "substitutions_per_response",
                                                       "changed_per_response")},
                "recovered": recovered(inter),
                "rl_minus_base_argmax": rl_minus_base_argmax(inter),
            })
            console.print(f"{key} seed {s}: tuned {100 * tuned_acc:.1f}% (base {100 * base_acc_s:.1f}%), "
                          f"{forks['n_disagreement']} disagreements, in top-{cfg.top_k}: {forks['share_in_topk']}, "
                          f"oracle recovered {inter['gain_recovered'].get('oracle')}", highlight=False)
            mean_base = sum(r["base_accuracy"] for r in per_seed) / len(per_seed) if sampled else base_acc
            summary["variants"][key] = _variant_summary(family, vname, mean_base, base_info, mnt, per_seed)
            summary["variants"][key]["grpo_problems"] = train_info
            _write(out, summary, t_start)
        # after every variant: the plot and (with `artifact`) the stamped artifact so far, so a run cut
        # short still leaves the finished variants behind
        summary["variants_done"] = len(summary["variants"])
        _finish(cfg, out, summary, seeds, stamp, metrics_files, t_start)
    return summary


def _finish(cfg: ForksConfig, out: Path, summary: dict, seeds: list[int], stamp: dict | None,
            metrics_files: dict[str, Path], t_start: float) -> None:
    dists = {k: v["rank_distribution"] for k, v in summary["variants"].items()}
    title = f"base rank of the tuned model's token at disagreements ({len(seeds)} seeds, mean)"
    plot_rank_distribution(dists, out / "rank_distribution", title=title)
    summary["plot"] = ["plots/rank_distribution.png"]
    _write(out, summary, t_start)
    if cfg.artifact:
        folder = write_artifact(Path(cfg.artifact).parent, Path(cfg.artifact).name, summary, seeds=seeds,
                                stamp=stamp,
                                metrics={k: read_metrics(p) for k, p in metrics_files.items() if p.is_file()})
        plot_rank_distribution(dists, plots_dir(folder) / "rank_distribution", title=title, formats=("png",))
        console.print(f"wrote the stamped artifact {folder} ({summary['variants_done']} of "
                      f"{len(cfg.variants)} variants)", highlight=False)


def _variant_summary(family, vname: str, base_acc: float, base_info: dict, mnt: int, per_seed: list[dict]) -> dict:
    return {
        "family": family.name, "variant": vname, "role": family.variant(vname).role,
        "about": family.variant(vname).about, "base_accuracy": base_acc,
        "base": {"cache_hit": base_info["cache_hit"], "pretrain_steps": base_info["steps"],
                 "pretrain_flops": base_info["flops"], "pretrain_wall_s": base_info["wall_s"]},
        "max_new_tokens": mnt, "n_seeds": len(per_seed),
        "ci": aggregate(per_seed),
        "rank_distribution": mean_rank_distribution(r["forks"]["rank_distribution"] for r in per_seed),
        "per_seed": per_seed,
    }


def _write(out: Path, summary: dict, t_start: float) -> None:
    summary["total_wall_s"] = time.perf_counter() - t_start
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


def print_summary(s: dict, out) -> None:
    from rich.table import Table

    t = Table(title=f"forks: diff and intervention over seeds {s['seeds']} (mean [95% CI])")
    cols = ("variant", "role", "base acc", "tuned acc", "in top-5", "entropy ratio", "branches", "oracle recovered")
    for col in cols:
        t.add_column(col, justify="left" if col in ("variant", "role") else "right")

    def cell(iv, pct=False):
        if iv is None:
            return "—"
        f = (lambda x: f"{100 * x:.0f}%") if pct else (lambda x: f"{x:.2f}")
        return f"{f(iv['mean'])} [{f(iv['low'])}, {f(iv['high'])}]"

    for key, v in s["variants"].items():
        ci = v["ci"]
        t.add_row(key, v["role"], f"{100 * v['base_accuracy']:.1f}%", cell(ci["tuned_accuracy"], True),
                  cell(ci["share_in_topk"], True), cell(ci["entropy_ratio"]), cell(ci["branches"]),
                  cell(ci["oracle_recovered"], True))
    Console().print(t)
    console.print(f"wrote {Path(out) / 'summary.json'} and {Path(out) / 'rank_distribution.png'}", highlight=False)
