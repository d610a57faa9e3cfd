"""`forklens experiment skills`: skill files vs weights on the frozen rule executor (E078, arXiv 2605.23904;
E088, arXiv 2605.27276).

From one cached base organism (``skills/executor``), per seed a target (one non-default value per rule
slot) and its train / selection / test inputs; then

(a) **E078, transfer across harnesses.** Skills (rule lines) are optimised under harness A by
    :func:`~forklens.train.skill_opt.optimize_skill` with the failure-diagnosing proposer
    (:func:`forklens.organisms.skills.propose_edits`): ``skillopt`` (edit budget 4 -> 2, gate on),
    ``gate-off`` (every edited skill accepted) and ``unbounded`` (every proposed edit applied). With the
    ``random`` skill (as many random rule lines), no skill, the ``masked`` skillopt skill (its values
    replaced by ``?``) and the ``oracle`` (the target's own lines: the executor's ceiling), each is
    evaluated greedily, unchanged, on the test inputs under A and under B. Transfer = B accuracy of
    skillopt - B accuracy without a skill, paired by seed.
(b) **E088, weights vs scaffold.** Two tasks per seed: ``low`` (the target's answer must end with the
    mark, which the base writes 4% of the time whatever its context says; the scorer gives the right
    answer without the mark 0.5, so both levers see graded feedback) and ``high`` (no mark: the best
    answer has high base probability once the skill is right). Scaffold lever: the skill
    optimiser, then a harness search over sampling temperature and best-of-N by majority vote,
    chosen on the selection inputs by mean score. Weight lever: the same optimised skill, then GRPO of the executor
    with the skill in its prompt. Compute is counted in sampled completions scored (scorer calls);
    the harness grid is sized to cost at least as much as GRPO's rollouts. Reported accuracies are
    exact match.
(c) **Token view.** On the first seed's test inputs (GRPO's greedy answers): ``forklens diff`` base vs
    base+skill, base vs RL+skill, base+skill vs RL+skill, and their overlap (``diff-overlap``): which
    tokens a skill moves, which the weights move beyond it (the mark?).

Intervals: 95% percentile bootstrap over seeds; contrasts paired by seed.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from rich.console import Console

from forklens.analysis.curves import bootstrap_ci, paired_difference
from forklens.analysis.diff import run_diff
from forklens.analysis.diff_overlap import compare_diffs, load_token_rows
from forklens.config import field
from forklens.errors import ConfigError
from forklens.organisms import get_family
from forklens.organisms.skills import SkillsOrganismConfig, build_skills_organism, propose_edits
from forklens.policy import Policy
from forklens.report.artifacts import make_stamp, plots_dir, write_artifact
from forklens.report.plots import plot_bars
from forklens.runfolder import claim_folder, owned_rmtree
from forklens.tasks.base import Problem
from forklens.tasks.rules import HARNESSES, MARK, RulesTask, Target, harness, mask_skill, rule_vocabulary
from forklens.train.loop import TrainConfig, read_metrics
from forklens.train.run import RLConfig, run_grpo
from forklens.train.skill_opt import SkillOptConfig, optimize_skill, random_skill
from forklens.train.sources import SamplingConfig

console = Console(stderr=True)
MAX_NEW = 12
E078_ARMS = ("none", "skillopt", "gate-off", "unbounded", "random", "masked", "oracle")
#: E078 contrasts under harness B, paired by seed: name -> (a, b), meaning a - b
CONTRASTS = {"transfer": ("skillopt", "none"), "skillopt-gate-off": ("skillopt", "gate-off"),
             "skillopt-unbounded": ("skillopt", "unbounded"), "skillopt-random": ("skillopt", "random"),
             "masked-none": ("masked", "none"), "oracle-skillopt": ("oracle", "skillopt")}


def _rl_default() -> RLConfig:
    return RLConfig(train=TrainConfig(max_steps=30, learning_rate=5e-4, micro_batch_size=128, save_every=0),
                    sampling=SamplingConfig(prompts_per_step=16, group_size=8, max_new_tokens=MAX_NEW))


@dataclass
class ProposerConfig:
    minibatch: int = field(16, ge=1, help="Training inputs rolled out (greedy, harness A) per optimiser step.")
    p_noise: float = field(0.3, ge=0, le=1, help="Share of proposed edits replaced by random edits.")


@dataclass
class SkillsConfig:
    organism: SkillsOrganismConfig = field(default_factory=SkillsOrganismConfig,
                                           help="The executor organism config (the variant's overrides apply on top).")
    variant: str = field("executor", help="Variant of the skills family (executor, executor-adjacent, deaf).")
    transfer_harness: str = field("B", help="The harness the A-trained skill moves to (reported under the key B); "
                                  "it must be one the variant pretrains on.")
    opt: SkillOptConfig = field(default_factory=SkillOptConfig, help="SkillOpt settings of the skillopt arm.")
    proposer: ProposerConfig = field(default_factory=ProposerConfig, help="The failure-diagnosing proposer.")
    rl: RLConfig = field(default_factory=_rl_default, help="GRPO of the weight lever.")
    temperatures: list[float] = field(default_factory=lambda: [0.5, 1.0, 1.5, 2.0],
                                      help="Harness search: sampling temperatures (greedy is always tried).")
    best_of: list[int] = field(default_factory=lambda: [1, 4, 16], help="Harness search: samples per input, "
                               "answer by majority vote.")
    mark_samples: int = field(8, ge=1, help="Samples per selection input measuring the base's mark rate.")
    diff_problems: int = field(100, ge=1, help="Test inputs of the token view (first seed).")
    seeds: int = field(5, ge=1, help="Seeds (targets, inputs, optimisation, GRPO; one shared base).")
    seed: int = field(0, help="First seed; seeds are seed, seed+1, ...")
    artifact: str = field("", help="Also write a stamped artifact folder here (e.g. results/skills).")


class Counted:
    """Greedy / sampled answers of one policy under a harness, counting completions scored."""

    def __init__(self, policy: Policy, task: RulesTask):
        self.policy, self.task, self.calls = policy, task, 0

    def answers(self, problems: list[Problem], h: str, skill: list[str], temperature: float = 0.0, n: int = 1,
                seed: int = 0) -> list[list[str]]:
        sc = harness(h, skill)
        s = self.policy.sample([sc.apply(p.prompt) for p in problems], n=n, temperature=temperature,
                               max_new_tokens=MAX_NEW, seed=seed)
        return [[t.strip("\n") for t in s.texts[i * n:(i + 1) * n]] for i in range(len(problems))]

    def accuracy(self, problems: list[Problem], h: str, skill: list[str], temperature: float = 0.0, n: int = 1,
                 seed: int = 0, count: bool = True, exact: bool = False) -> float:
        """Mean score (``exact``: exact-match accuracy) of the majority answer of ``n`` samples (greedy when
        temperature is 0)."""
        groups = self.answers(problems, h, skill, temperature, n, seed)
        if count:
            self.calls += len(problems) * n
        votes = [Counter(g).most_common(1)[0][0] for g in groups]
        scores = [self.task.verify(p, v) for p, v in zip(problems, votes)]
        return sum(s == 1.0 if exact else s for s in scores) / len(problems)


def optimise(counted: Counted, train: list[Problem], val: list[Problem], opt: SkillOptConfig, prop: ProposerConfig,
             seed: int) -> dict:
    """One skill optimisation under harness A from the empty skill; its scorer calls are counted."""
    mb_rng = random.Random(f"skills-minibatch-{seed}")

    def propose(skill: list[str], rejected, rng: random.Random):
        batch = mb_rng.sample(train, min(prop.minibatch, len(train)))
        outs = counted.answers(batch, "A", skill)
        counted.calls += len(batch)
        fails = [(o[0], p.answer) for p, o in zip(batch, outs) if counted.task.verify(p, o[0]) < 1]
        return propose_edits(skill, rejected, rng, fails, prop.p_noise)

    start = counted.calls
    res = optimize_skill([], propose, lambda sk: counted.accuracy(val, "A", sk), opt, seed=seed)
    return {"skill": res.skill, "val_score": res.score, "accepted": res.accepted, "evaluations": res.evaluations,
            "calls": counted.calls - start, "history": res.history}


def harness_search(counted: Counted, val: list[Problem], skill: list[str], cfg: SkillsConfig, seed: int) -> dict:
    """Greedy and every (temperature, best-of-N) setting on the selection inputs; the best (first on ties)."""
    start = counted.calls
    grid = [{"temperature": 0.0, "n": 1}] + [{"temperature": t, "n": n} for t in cfg.temperatures for n in cfg.best_of]
    for g in grid:
        g["val"] = counted.accuracy(val, "A", skill, g["temperature"], g["n"], seed)
    best = max(grid, key=lambda g: g["val"])
    return {"grid": grid, "best": best, "calls": counted.calls - start}


def _grpo(base_dir: Path, task: RulesTask, train: list[Problem], skill: list[str], cfg: SkillsConfig, seed: int,
          work: Path) -> tuple[Policy, dict]:
    sc = harness("A", skill)
    problems = [replace(p, prompt=sc.apply(p.prompt)) for p in train]
    owned_rmtree(work)
    info = run_grpo(base_dir, task, cfg.rl, work, seed, progress=False, name=f"GRPO seed {seed}", problems=problems)
    rl = cfg.rl
    info["calls"] = info["steps"] * rl.sampling.prompts_per_step * rl.sampling.group_size
    return Policy.load(work / "model"), info


def mark_rate(counted: Counted, val: list[Problem], skill: list[str], n: int, seed: int) -> float:
    outs = counted.answers(val, "A", skill, 1.0, n, seed)
    return sum(o.endswith(MARK) for g in outs for o in g) / (len(val) * n)


def token_view(base: Policy, rl: Policy, problems: list[Problem], skill: list[str], out: Path) -> dict:
    """Diffs base vs RL+skill (RL's greedy answers), base vs base+skill and base+skill vs RL+skill on the same
    tokens, and the overlap of the tokens they move; the mark's share of each diff's moved tokens."""
    prompts = [{"id": p.id, "prompt": p.prompt, "answer": p.answer} for p in problems]
    none, with_skill = harness("A"), harness("A", skill)
    common = {"max_new_tokens": MAX_NEW, "progress": False,
              "verifier": lambda rec, text: text.strip("\n") == rec["answer"]}
    diffs = {"rl": run_diff(base, rl, prompts, base_scaffold=none, rl_scaffold=with_skill, out_dir=out / "rl", **common)}
    responses = str(out / "rl" / "responses.jsonl")
    diffs["skill"] = run_diff(base, base, prompts, responses=responses, base_scaffold=none, rl_scaffold=with_skill,
                              out_dir=out / "skill", **common)
    diffs["weights"] = run_diff(base, rl, prompts, responses=responses, base_scaffold=with_skill,
                                rl_scaffold=with_skill, out_dir=out / "weights", **common)
    rows = {k: load_token_rows(out / k) for k in diffs}
    mark_id = base.tokenizer.convert_tokens_to_ids(MARK)
    view: dict = {"overlap": compare_diffs(rows["skill"], rows["rl"], names=("base vs base+skill", "base vs RL+skill"))}
    for k, rs in rows.items():
        moved = [r for r in rs if int(r["rank_under_base"]) > 1]
        marks = [r for r in rs if int(r["token_id"]) == mark_id]
        view[k] = {"tokens": len(rs), "moved": len(moved), "moved_frac": len(moved) / max(1, len(rs)),
                   "mark_tokens": len(marks), "mark_moved_frac": (sum(int(r["rank_under_base"]) > 1 for r in marks)
                                                                  / len(marks)) if marks else None,
                   "moved_mark_share": sum(int(r["token_id"]) == mark_id for r in moved) / len(moved) if moved else 0.0,
                   "accuracy": (diffs[k].get("correctness") or {}).get("accuracy")}
    view["overlap"].pop("definitions", None)
    return view


def run_seed(base: Policy, base_dir: Path, cfg: SkillsConfig, org, seed: int, out: Path) -> tuple[dict, dict]:
    target = Target.draw(random.Random(f"skills-target-{seed}"))
    task = RulesTask(org.task, target, seed)
    train, val, test = task.problems("train"), task.problems("val"), task.problems("test")
    counted = Counted(base, task)
    row: dict = {"seed": seed, "target": target.skill(), "skills": {}, "A": {}, "B": {}, "e088": {}}
    arms = {"skillopt": cfg.opt, "gate-off": replace(cfg.opt, gate=False),
            "unbounded": replace(cfg.opt, edits_start=None, edits_end=None)}
    for name, opt in arms.items():
        res = optimise(counted, train, val, opt, cfg.proposer, seed)
        row["skills"][name] = {k: v for k, v in res.items() if k != "history"}
        console.print(f"seed {seed} {name}: {res['skill']} (val {res['val_score']:.2f}, {res['accepted']} accepted)",
                      highlight=False)
    best = row["skills"]["skillopt"]["skill"]
    skills = {"none": [], **{k: v["skill"] for k, v in row["skills"].items()},
              "random": random_skill(rule_vocabulary(), max(1, len(best)), random.Random(f"skills-random-{seed}")),
              "masked": mask_skill(best), "oracle": target.skill()}
    row["skills"]["random"], row["skills"]["masked"] = {"skill": skills["random"]}, {"skill": skills["masked"]}
    for key, h in (("A", "A"), ("B", cfg.transfer_harness)):
        for name in E078_ARMS:
            row[key][name] = counted.accuracy(test, h, skills[name], count=False, exact=True)
    row["mark_rate"] = mark_rate(counted, val, target.skill(), cfg.mark_samples, seed)
    metrics: dict = {}
    for kind, t in (("low", Target(target.rules, mark=True)), ("high", target)):
        ktask = RulesTask(org.task, t, seed)
        ktrain, kval, ktest = ktask.problems("train"), ktask.problems("val"), ktask.problems("test")
        kc = Counted(base, ktask)
        opt = row["skills"]["skillopt"] if kind == "high" else optimise(kc, ktrain, kval, cfg.opt, cfg.proposer, seed)
        skill, opt_calls = opt["skill"], opt.get("calls", 0)
        search = harness_search(kc, kval, skill, cfg, seed)
        b = search["best"]
        scaffold_acc = kc.accuracy(ktest, "A", skill, b["temperature"], b["n"], seed + 7, count=False, exact=True)
        rl, info = _grpo(base_dir, ktask, ktrain, skill, cfg, seed, out / "train" / f"{kind}-seed{seed}")
        rl_counted = Counted(rl, ktask)
        weights_acc = rl_counted.accuracy(ktest, "A", skill, count=False, exact=True)
        metrics[f"grpo-{kind}_seed-{seed}"] = read_metrics(Path(out / "train" / f"{kind}-seed{seed}" / "metrics.jsonl"))
        row["e088"][kind] = {
            "skill": skill, "skill_calls": opt_calls, "search": search, "scaffold": scaffold_acc, "weights": weights_acc,
            "greedy_with_skill": kc.accuracy(ktest, "A", skill, count=False, exact=True),
            "weights_mark_rate": mark_rate(rl_counted, kval, skill, 1, seed),
            "calls": {"scaffold": opt_calls + search["calls"], "weights": opt_calls + info["calls"]},
            "grpo": {k: info[k] for k in ("steps", "flops", "wall_s")}}
        if cfg.diff_problems and seed == cfg.seed:
            row["e088"][kind]["tokens"] = token_view(base, rl, ktest[:cfg.diff_problems], skill,
                                                     out / "diff" / f"{kind}-seed{seed}")
        owned_rmtree(out / "train" / f"{kind}-seed{seed}" / "checkpoints")
        console.print(f"seed {seed} {kind}: scaffold {scaffold_acc:.2f} (best {b['temperature']}/{b['n']}), "
                      f"weights {weights_acc:.2f}", highlight=False)
    return row, metrics


def run_skills(cfg: SkillsConfig, out: str | Path, use_cache: bool = True, progress: bool = False) -> dict:
    if not cfg.temperatures or not cfg.best_of or min(cfg.best_of) < 1 or min(cfg.temperatures) <= 0:
        raise ConfigError(f"skills: temperatures must be non-empty and > 0 (greedy is always tried) and best_of "
                          f"non-empty and >= 1; got {cfg.temperatures} and {cfg.best_of}")
    out = Path(out)
    claim_folder(out, "experiment-skills")
    t0 = time.perf_counter()
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    stamp = make_stamp(Path(cfg.artifact).name, seeds) if cfg.artifact else None
    org = get_family("skills").variant_config(cfg.variant, base=cfg.organism)
    if cfg.transfer_harness == "A" or cfg.transfer_harness not in org.task.harnesses:
        raise ConfigError(f"skills: transfer_harness={cfg.transfer_harness!r} must be a harness other than A that "
                          f"skills/{cfg.variant} pretrains on ({org.task.harnesses})")
    console.rule(f"[bold]skills/{cfg.variant} base organism")
    base_info = build_skills_organism(org, out / "base", use_cache=use_cache, progress=progress)
    base = Policy.load(out / "base")
    rows, metrics, summary = [], {}, {}
    for s in seeds:
        console.rule(f"[bold]seed {s}")
        row, m = run_seed(base, out / "base", cfg, org, s, out)
        rows.append(row)
        metrics.update(m)
        summary = summarize(cfg, rows, base_info, t0)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _plot(summary, out / "skills")
    summary["plot"] = ["plots/skills.png"]
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if cfg.artifact:
        folder = write_artifact(Path(cfg.artifact).parent, Path(cfg.artifact).name, summary, seeds=seeds, stamp=stamp,
                                metrics=metrics)
        _plot(summary, plots_dir(folder) / "skills")
        console.print(f"wrote the stamped artifact {folder}", highlight=False)
    return summary


def _ci(vals: list[float]) -> dict:
    return bootstrap_ci(vals).as_dict()


def _paired(rows: list[dict], a, b) -> dict:
    return paired_difference({r["seed"]: a(r) for r in rows}, {r["seed"]: b(r) for r in rows}).as_dict()


def summarize(cfg: SkillsConfig, rows: list[dict], base_info: dict, t0: float) -> dict:
    e078 = {h: {a: _ci([r[h][a] for r in rows]) for a in E078_ARMS} for h in "AB"}
    contrasts = {n: _paired(rows, lambda r, a=a: r["B"][a], lambda r, b=b: r["B"][b]) for n, (a, b) in CONTRASTS.items()}
    contrasts["transfer-A"] = _paired(rows, lambda r: r["A"]["skillopt"], lambda r: r["A"]["none"])
    contrasts["B-minus-A-skillopt"] = _paired(rows, lambda r: r["B"]["skillopt"], lambda r: r["A"]["skillopt"])
    lines = {a: _ci([len(r["skills"][a]["skill"]) for r in rows]) for a in ("skillopt", "gate-off", "unbounded")}
    e088 = {}
    for kind in ("low", "high"):
        get = [r["e088"][kind] for r in rows]
        e088[kind] = {
            "scaffold": _ci([g["scaffold"] for g in get]), "weights": _ci([g["weights"] for g in get]),
            "greedy_with_skill": _ci([g["greedy_with_skill"] for g in get]),
            "gap": _paired(rows, lambda r, k=kind: r["e088"][k]["weights"], lambda r, k=kind: r["e088"][k]["scaffold"]),
            "weights_mark_rate": _ci([g["weights_mark_rate"] for g in get]),
            "calls_scaffold": _ci([g["calls"]["scaffold"] for g in get]),
            "calls_weights": _ci([g["calls"]["weights"] for g in get]),
            "best_temperature": [g["search"]["best"]["temperature"] for g in get],
            "best_n": [g["search"]["best"]["n"] for g in get]}
        if "tokens" in get[0]:
            e088[kind]["tokens"] = get[0]["tokens"]
    e088["gap_low_minus_high"] = _paired(
        rows, lambda r: r["e088"]["low"]["weights"] - r["e088"]["low"]["scaffold"],
        lambda r: r["e088"]["high"]["weights"] - r["e088"]["high"]["scaffold"])
    return {
        "variant": cfg.variant, "seeds": [r["seed"] for r in rows], "n_seeds": len(rows),
        "harnesses": {"A": HARNESSES["A"], "B": HARNESSES[cfg.transfer_harness], "B_name": cfg.transfer_harness},
        "precondition": {"oracle_A": e078["A"]["oracle"], "oracle_B": e078["B"]["oracle"],
                         "none_A": e078["A"]["none"], "none_B": e078["B"]["none"],
                         "mark_rate": _ci([r["mark_rate"] for r in rows])},
        "base": {"cache_hit": base_info["cache_hit"], "pretrain_steps": base_info["steps"],
                 "pretrain_flops": base_info["flops"], "pretrain_wall_s": base_info["wall_s"]},
        "e078": {"accuracy": e078, "contrasts": contrasts, "skill_lines": lines,
                 "accepted": {a: _ci([r["skills"][a]["accepted"] for r in rows]) for a in lines}},
        "e088": e088, "per_seed": rows, "total_wall_s": time.perf_counter() - t0, "config": asdict(cfg),
    }


def _plot(summary: dict, stem: Path) -> list[Path]:
    acc = summary["e078"]["accuracy"]
    groups = {f"harness {h}": {a: acc[h][a] for a in E078_ARMS} for h in "AB"}
    return plot_bars(groups, stem, title=f"E078: skills optimised under A, test accuracy ({summary['n_seeds']} seeds, "
                     "95% CI)", ylabel="exact-match accuracy", formats=("png",))


def markdown_table(summary: dict) -> str:
    def cell(iv: dict) -> str:
        return f"{100 * iv['mean']:.0f}% [{100 * iv['low']:.0f}, {100 * iv['high']:.0f}]"

    acc = summary["e078"]["accuracy"]
    lines = [f"skills/{summary['variant']}, seeds {summary['seeds']}", "",
             "| skill (optimised under A) | harness A | harness B |", "| --- | --- | --- |"]
    lines += [f"| {a} | {cell(acc['A'][a])} | {cell(acc['B'][a])} |" for a in E078_ARMS]
    lines += ["", "| E088 task | scaffold only | skill + GRPO | gap (paired) |", "| --- | --- | --- | --- |"]
    lines += [f"| {k} | {cell(v['scaffold'])} | {cell(v['weights'])} | {cell(v['gap'])} |"
              for k, v in summary["e088"].items() if k in ("low", "high")]
    return "\n".join(lines) + "\n"
