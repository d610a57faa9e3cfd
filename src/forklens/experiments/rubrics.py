"""`forklens experiment rubrics`: trained rubrics vs a scalar reward model (E019, EvoLM, arXiv 2605.03871).

On the `sort` organism (:mod:`forklens.organisms.sort`: sort 6 digits after SFT on a noisy teacher; true
utility U = fraction of correct positions), from one cached base, for each seed and arm a GRPO run of
the policy (a copy of the base) on the arm's reward:

============ ======================================================================================
arm          policy reward
============ ======================================================================================
``scalar``   a Bradley-Terry reward model (a copy of the base with a reward head, all weights trained)
             fit on ``rm_pairs`` pairs of base samples labelled by U; frozen during RL
``fixed``    a weak judge (check outcomes flipped with probability ``judge_noise``) scoring a fixed,
             hand-written generic rubric: length 6, non-decreasing, every digit from the prompt
``trained``  the judge scoring a rubric per prompt written by a generator G (a copy of the base; its
             sample at temperature 1 read as "position p holds digit d" checks), G trained by GRPO on
             the temporal contrast 1[J(y+ | R) > J(y- | R)] (y+ the current policy's sample, y- the
             policy ``rubrics.lag`` steps earlier), one G step per policy step
``frozen``   as ``trained``, G never trained (control: no discriminative training)
``shuffled`` as ``trained``, the older/newer order of each contrast pair a coin (control: no signal)
``oracle``   the true utility U itself (a consistency check of the optimiser; not run by default)
============ ======================================================================================

Each reward's *pair accuracy* (the RewardBench analogue) is measured on a held-out benchmark: pairs of
base samples on the test prompts with different U, the one with higher U the chosen one; a rubric
reward's tie counts 1/2 (a coin). For rubric arms it is measured with the arm's final generator (the
frozen arm's is the initial one). Each final policy's U is measured on every test prompt
(``eval_samples`` samples at temperature 1, and greedy). Costs: every arm has the same policy steps; the
reward's own cost (the reward model's fit and scoring, or the generator's training, rubric samples and
contrast samples) is counted in FLOPs beside the policy's. ``summary``::

    {"arms": {ARM: {"per_seed": {seed: {...}}, "utility", "utility_greedy", "pair_accuracy", "reward_flops",
                    "total_flops"}},
     "diffs": {A_vs_B: {"utility", "utility_greedy", "pair_accuracy"}},   # paired by seed, 95% bootstrap
     "curves": {ARM: [{"step", "utility", "reward_mean", ...}]}, "base": {...}, "seeds", "config"}
"""

from __future__ import annotations

import json
import random
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from rich.console import Console

from forklens.analysis.curves import bootstrap_ci, paired_arm_diffs
from forklens.config import field
from forklens.errors import ConfigError
from forklens.experiments.arm_runs import begin, mean_curve, publish
from forklens.organisms import get_family
from forklens.organisms.sort import SortOrganismConfig, build_sort_organism
from forklens.policy import Policy
from forklens.rewards.reward_model import RewardModel, reward_model_reward
from forklens.rewards.rubric import (Judge, Rubric, fixed_rubrics, from_prompt_check, length_check,
                                     nondecreasing_check, position_rubric, rubric_reward)
from forklens.runfolder import owned_rmtree
from forklens.tasks.base import Problem
from forklens.tasks.sort import DIGITS, SortTask
from forklens.train.loop import TrainConfig
from forklens.train.reward_model import PreferencePair, RewardModelTrainConfig, fit_reward_model, pair_accuracy
from forklens.train.rubrics import RubricCoTraining, RubricTrainingConfig
from forklens.train.run import RLConfig, grpo_loss, train
from forklens.train.sources import GRPOSource, SamplingConfig, verifier_reward

console = Console(stderr=True)

ARMS = ("scalar", "fixed", "trained", "frozen", "shuffled", "oracle")
DEFAULT_ARMS = ARMS[:5]
GENERATOR_ARMS = ("trained", "frozen", "shuffled")
#: paired differences reported (a - b)
DIFFS: tuple[tuple[str, str], ...] = (
    ("trained", "scalar"), ("trained", "fixed"), ("trained", "frozen"), ("trained", "shuffled"),
    ("shuffled", "frozen"), ("scalar", "trained"), ("scalar", "fixed"), ("frozen", "scalar"),
)
OUTCOMES = ("utility", "utility_greedy", "pair_accuracy")
CURVE_KEYS = ("utility", "reward_mean", "rubric/generator_reward")


def _rl_default() -> RLConfig:
    """60 GRPO steps of 8 prompts x 8 samples; fixed before any measured run."""
    return RLConfig(train=TrainConfig(max_steps=60, learning_rate=1e-3, micro_batch_size=64, save_every=0),
                    sampling=SamplingConfig(prompts_per_step=8, group_size=8, max_new_tokens=7))


def _rm_default() -> RewardModelTrainConfig:
    return RewardModelTrainConfig(epochs=2, batch_size=32, learning_rate=1e-3, head_only=False,
                                  backbone="causal-lm", eval_fraction=0.0)


@dataclass
class RubricsConfig:
    organism: SortOrganismConfig = field(default_factory=SortOrganismConfig, help="The sort organism (the variant's "
                                         "overrides apply on top).")
    variant: str = field("noisy", help="Variant of the sort family (noisy: the precondition; uninformed: the "
                         "control whose teacher writes random digits).")
    rl: RLConfig = field(default_factory=_rl_default, help="GRPO of the policy (every arm).")
    generator_rl: RLConfig = field(default_factory=_rl_default, help="GRPO of the rubric generator (train.max_steps: "
                                   "the most generator steps; sampling: rubrics per step).")
    rubrics: RubricTrainingConfig = field(default_factory=RubricTrainingConfig, help="Temporal contrast, alternation "
                                          "and the judge's noise.")
    rm: RewardModelTrainConfig = field(default_factory=_rm_default, help="The scalar arm's Bradley-Terry fit.")
    rm_pairs: int = field(2048, ge=1, help="Preference pairs (base samples on training prompts, labelled by U) the "
                          "scalar reward model is fit on.")
    bench_samples: int = field(4, ge=2, help="Base samples per test prompt for the pair-accuracy benchmark (pairs "
                               "(0,1), (2,3), ... with different U).")
    eval_samples: int = field(4, ge=1, help="Samples per test prompt (temperature 1) for each final policy's U.")
    arms: list[str] = field(default_factory=lambda: list(DEFAULT_ARMS), help="Arms (of ARMS; oracle, GRPO on the "
                            "true utility itself, is not run by default).")
    seeds: int = field(5, ge=1, help="Seeds (overridden by --seeds).")
    seed: int = field(0, help="First seed; seeds are seed, seed+1, ...")
    artifact: str = field("", help="Also write a stamped artifact folder here (e.g. results/rubrics).")


def fixed_rubric(task: SortTask) -> Rubric:
    """The hand-written generic rubric: length, order, digits from the prompt (none needs the answer)."""
    return Rubric.equal([length_check(task.config.n_digits), nondecreasing_check(),
                         from_prompt_check(task.config.prompt_end)])


def labelled_pairs(task: SortTask, prompts: list[str], texts: list[list[str]]) -> list[PreferencePair]:
    """Pairs (0,1), (2,3), ... of each prompt's samples with different U; chosen = higher U."""
    out = []
    for prompt, ys in zip(prompts, texts):
        for a, b in zip(ys[0::2], ys[1::2]):
            ua, ub = task.utility(prompt, a), task.utility(prompt, b)
            if ua != ub:
                out.append(PreferencePair(prompt, a, b, 1.0) if ua > ub else PreferencePair(prompt, b, a, 1.0))
    return out


def base_pairs(policy: Policy, task: SortTask, prompts: list[str], per_prompt: int, max_new_tokens: int,
               seed: int) -> list[PreferencePair]:
    s = policy.sample(prompts, n=per_prompt, temperature=1.0, max_new_tokens=max_new_tokens, seed=seed)
    return labelled_pairs(task, prompts, [s.texts[i * per_prompt:(i + 1) * per_prompt] for i in range(len(prompts))])


def rubric_pair_accuracy(pairs: list[PreferencePair], rubrics: list[Rubric], judge: Judge) -> float:
    """Fraction of pairs the judge orders as the label does under each pair's rubric (a tie counts 1/2)."""
    return statistics.fmean(judge.prefers(p.prompt, p.chosen, p.rejected, r) for p, r in zip(pairs, rubrics))


def evaluate_policy(policy: Policy, task: SortTask, n: int, max_new_tokens: int, seed: int) -> dict[str, float]:
    prompts = [p.prompt for p in task.problems("test")]
    s = policy.sample(prompts, n=n, temperature=1.0, max_new_tokens=max_new_tokens, seed=seed)
    g = policy.sample(prompts, n=1, temperature=0.0, max_new_tokens=max_new_tokens, seed=seed)
    return {"utility": statistics.fmean(task.utility(prompts[i // n], t) for i, t in enumerate(s.texts)),
            "utility_greedy": statistics.fmean(task.utility(p, t) for p, t in zip(prompts, g.texts))}


def sequence_tokens(pairs: list[PreferencePair]) -> int:
    """Tokens of both sequences of every pair (one char per token, plus EOS)."""
    return sum(2 * len(p.prompt) + len(p.chosen) + len(p.rejected) + 2 for p in pairs)


def run_arm(arm: str, base_dir: Path, cfg: RubricsConfig, seed: int, work: Path, bench: list[PreferencePair],
            progress: bool) -> dict:
    task = SortTask(cfg.organism.task)
    problems = task.problems("train")
    n_tok = cfg.rl.sampling.max_new_tokens
    policy = Policy.load(base_dir)
    bench_judge = Judge(noise=cfg.rubrics.judge_noise, seed=seed + 31)
    callbacks, co, rm_flops = [], None, 0.0
    if arm == "scalar":
        rm = RewardModel.from_causal_lm(Policy.load(base_dir), seed=seed)  # head drawn from the run's seed
        pairs = base_pairs(rm.policy, task, [problems[i % len(problems)].prompt for i in range(cfg.rm_pairs)], 2,
                           n_tok, 50_000 + seed)
        fit = fit_reward_model(rm, pairs, replace(cfg.rm, seed=seed))
        rm_flops = 6.0 * rm.policy.num_params() * sequence_tokens(pairs) * cfg.rm.epochs
        reward, acc = reward_model_reward(rm), pair_accuracy(rm, bench)
        extra = {"rm_train_pairs": len(pairs), "rm_train_pair_accuracy": fit["train_pair_accuracy"]}
    elif arm == "fixed":
        rubric = fixed_rubric(task)
        reward = rubric_reward(fixed_rubrics(rubric), Judge(noise=cfg.rubrics.judge_noise, seed=seed), name="fixed")
        acc = rubric_pair_accuracy(bench, [rubric] * len(bench), bench_judge)
        extra = {}
    elif arm == "oracle":
        reward = verifier_reward(task)
        acc = statistics.fmean(float(task.utility(p.prompt, p.chosen) > task.utility(p.prompt, p.rejected))
                               for p in bench)
        extra = {}
    elif arm in GENERATOR_ARMS:
        gen_rl = replace(cfg.generator_rl, train=replace(cfg.generator_rl.train, max_steps=cfg.rl.train.max_steps))
        co = RubricCoTraining(policy, Policy.load(base_dir), Policy.load(base_dir), task, problems,
                              lambda text: position_rubric(text, DIGITS, task.config.n_digits),
                              replace(cfg.rubrics, generator=arm), gen_rl, work, seed=seed)
        reward, extra = co.reward, {}
        callbacks.append(co.callback())
    else:
        raise ConfigError(f"unknown arm {arm!r}; choose from {list(ARMS)}")
    source = GRPOSource(task, problems, cfg.rl.sampling, reward_fns=[reward], seed=seed)
    res = train(policy, "grpo", grpo_loss(cfg.rl), source, replace(cfg.rl.train, seed=seed), work,
                name=f"rubrics {arm} seed {seed}", progress=progress, callbacks=callbacks)
    if co is not None:
        extra = {"generator_steps": co.trainer.step if co.trainer is not None else 0,
                 "generator_flops": co.generator_flops, "sample_flops": co.sample_flops}
        rm_flops = co.generator_flops + co.sample_flops
        rubrics = co.rubrics_for([Problem(id=f"bench-{i}", prompt=p.prompt, answer="") for i, p in enumerate(bench)])
        acc = rubric_pair_accuracy(bench, rubrics, bench_judge)
    elif arm == "scalar":
        # scoring the policy's samples: one forward pass of the reward model per sampled sequence
        rm_flops += 2.0 * rm.policy.num_params() * res.steps * cfg.rl.sampling.prompts_per_step \
            * cfg.rl.sampling.group_size * (len(problems[0].prompt) + n_tok)
    ev = evaluate_policy(policy, task, cfg.eval_samples, n_tok, 10_000 + seed)
    return {**ev, "pair_accuracy": acc, "policy_flops": res.flops, "reward_flops": rm_flops,
            "total_flops": res.flops + rm_flops, "wall_s": res.wall_s, **extra, "metrics": str(res.metrics_file)}


def summarise(per: dict[str, dict[int, dict]]) -> tuple[dict, dict]:
    arms = {arm: {"per_seed": {str(s): {k: v for k, v in r.items() if k != "metrics"} for s, r in rows.items()},
                  **{k: bootstrap_ci([r[k] for r in rows.values()]).as_dict()
                     for k in (*OUTCOMES, "reward_flops", "total_flops")}}
            for arm, rows in per.items() if rows}
    return arms, paired_arm_diffs(per, DIFFS, OUTCOMES)


def run_rubrics(cfg: RubricsConfig, out: str | Path, use_cache: bool = True, progress: bool = False) -> dict:
    out, seeds, stamp = begin(cfg, ARMS, out, "rubrics")
    t0 = time.perf_counter()
    org = replace(get_family("sort").variant_config(cfg.variant, base=cfg.organism), seed=0)  # one base for all
    console.rule(f"[bold]sort/{cfg.variant} base organism")
    base_info = build_sort_organism(org, out / "base", use_cache=use_cache, progress=progress)
    task = SortTask(org.task)
    base = Policy.load(out / "base")
    n_tok = cfg.rl.sampling.max_new_tokens
    base_eval = evaluate_policy(base, task, cfg.eval_samples, n_tok, 10_000)
    test_prompts = [p.prompt for p in task.problems("test")]
    bench = base_pairs(base, task, test_prompts, cfg.bench_samples, n_tok, 20_000)
    random.Random(0).shuffle(bench)
    per: dict[str, dict[int, dict]] = {a: {} for a in cfg.arms}
    summary: dict = {}

    def write() -> None:
        arms, diffs = summarise(per)
        curves = {a: mean_curve([Path(r["metrics"]) for r in rows.values()], CURVE_KEYS)
                  for a, rows in per.items() if rows}
        summary.clear()
        summary.update({"organism": "sort", "variant": cfg.variant, "seeds": seeds, "base": {**base_eval, "cache_hit": base_info["cache_hit"]},
                        "bench_pairs": len(bench), "arms": arms, "diffs": diffs, "curves": curves,
                        "total_wall_s": time.perf_counter() - t0, "config": asdict(cfg)})
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        (out / "report.md").write_text(markdown_table(summary))

    for s in seeds:
        for arm in cfg.arms:
            console.rule(f"[bold]seed {s}: {arm}")
            work = out / "train" / f"{arm}-seed{s}"
            owned_rmtree(work)
            per[arm][s] = run_arm(arm, out / "base", cfg, s, work, bench, progress)
            owned_rmtree(work / "checkpoints")
            owned_rmtree(work / "generator" / "checkpoints")
            write()
    write()
    publish(summary, out, "rubrics_curves", CURVE_KEYS[:2],
            f"sort organism: policy reward arms, means over {len(seeds)} seeds", cfg.artifact, seeds, stamp)
    return summary


def _ci(x: dict, digits: int = 3) -> str:
    return f"{x['mean']:.{digits}f} [{x['low']:.{digits}f}, {x['high']:.{digits}f}]"


def markdown_table(summary: dict) -> str:
    b = summary["base"]
    lines = [f"sort/{summary.get('variant', 'noisy')} organism, seeds {summary['seeds']}; base U {b['utility']:.3f} "
             f"(greedy {b['utility_greedy']:.3f}); "
             f"{summary['bench_pairs']} held-out benchmark pairs. Means with 95% bootstrap intervals over seeds.", "",
             "| arm | pair accuracy | true utility U (samples) | U (greedy) | reward FLOPs | total FLOPs |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, a in summary["arms"].items():
        lines.append(f"| {name} | {_ci(a['pair_accuracy'])} | {_ci(a['utility'])} | {_ci(a['utility_greedy'])} "
                     f"| {a['reward_flops']['mean']:.3g} | {a['total_flops']['mean']:.3g} |")
    if summary["diffs"]:
        lines += ["", "| paired difference | U | U (greedy) | pair accuracy |", "| --- | --- | --- | --- |"]
        for name, d in summary["diffs"].items():
            lines.append(f"| {name} | {_ci(d['utility'])} | {_ci(d['utility_greedy'])} | {_ci(d['pair_accuracy'])} |")
    return "\n".join(lines) + "\n"
