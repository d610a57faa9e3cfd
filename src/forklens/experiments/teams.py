"""`forklens experiment teams`: one agent with the whole adapter budget vs a team of three agents with a
third each, trained jointly from one terminal reward (E060, NeuroMAS, arXiv 2605.16757).

On the `compose` organism (``y = (g(x1) + h(x2)) mod 10``; :mod:`forklens.tasks.compose`), from one
cached base per variant, per seed and arm: a :class:`~forklens.train.team.Team` of LoRA adapters on the
frozen base, trained by joint GRPO on the sink's 1-bit reward (:mod:`forklens.train.team`), then
evaluated on all 100 problems (sampled accuracy at temperature 1 over ``eval_samples`` joint rollouts,
majority of three samples, greedy). Arms (:data:`ARMS`):

* ``single/sum``: one node (position S: writes both lookups and their sum) with rank ``rank``;
* ``team/sum``: nodes L and R (one lookup each) and the sink T (reads both messages), rank ``rank / 3``
  each: the same trainable parameter count (:meth:`Team.budget`, recorded per arm);
* ``team-random/sum``: the team with every message replaced by random digits (train and test);
* ``single/table``, ``team/table``: the same two arms on the non-decomposable `entangled/table`;
* ``team/blind``: the team on `compose/blind`, whose base sink ignores the messages.

The single agent given the team's inference compute is its majority of three samples (``majority3``);
tokens run through the model per problem are recorded for every arm. Every number gets a percentile
bootstrap interval over seeds; arm differences are paired by seed (:func:`paired_difference`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console

from forklens.analysis.curves import bootstrap_ci, paired_difference
from forklens.config import field
from forklens.errors import ConfigError
from forklens.experiments.arm_runs import begin
from forklens.organisms import get_family
from forklens.organisms.compose import ComposeOrganismConfig, build_compose_organism
from forklens.policy import Policy
from forklens.report.artifacts import plots_dir, write_artifact
from forklens.report.plots import plot_bars
from forklens.tasks.compose import DIGITS, ComposeTask
from forklens.train.lora import LoraSettings
from forklens.train.team import Graph, Node, Team, TeamTrainConfig, majority

console = Console(stderr=True)

SINGLE = Graph((Node("S", "S", (), max_new_tokens=4),))
TEAM = Graph((Node("L", "L"), Node("R", "R"), Node("T", "T", ("L", "R"))))

#: arm -> (family, variant, graph, random messages)
ARMS: dict[str, tuple[str, str, Graph, bool]] = {
    "single/sum": ("compose", "sum", SINGLE, False),
    "team/sum": ("compose", "sum", TEAM, False),
    "team-random/sum": ("compose", "sum", TEAM, True),
    "single/table": ("entangled", "table", SINGLE, False),
    "team/table": ("entangled", "table", TEAM, False),
    "team/blind": ("compose", "blind", TEAM, False),
}

#: paired contrasts of sampled accuracy after training: name -> (arm a, metric a, arm b, metric b), a - b
CONTRASTS = {
    "team-minus-single/sum": ("team/sum", "sampled", "single/sum", "sampled"),
    "team-minus-single-majority3/sum": ("team/sum", "sampled", "single/sum", "majority3"),
    "team-minus-single/table": ("team/table", "sampled", "single/table", "sampled"),
    "team-minus-random/sum": ("team/sum", "sampled", "team-random/sum", "sampled"),
    "random-minus-single/sum": ("team-random/sum", "sampled", "single/sum", "sampled"),
    "team-minus-blind": ("team/sum", "sampled", "team/blind", "sampled"),
    "team-minus-single-greedy/sum": ("team/sum", "greedy", "single/sum", "greedy"),
}

ALL_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class TeamsConfig:
    organism: ComposeOrganismConfig = field(default_factory=ComposeOrganismConfig,
                                            help="The compose base organism config (each variant's overrides on top).")
    arms: list[str] = field(default_factory=lambda: list(ARMS), help=f"Arms to run (of {', '.join(ARMS)}).")
    rank: int = field(6, ge=1, help="LoRA rank of the single agent (the whole budget); a team node gets rank / nodes.")
    alpha_per_rank: float = field(2.0, gt=0, help="LoRA alpha = alpha_per_rank * rank (the same scale in every arm).")
    target_modules: list[str] = field(default_factory=lambda: list(ALL_MODULES), help="Modules with adapters.")
    rl: TeamTrainConfig = field(default_factory=TeamTrainConfig, help="Joint GRPO settings (every arm).")
    eval_samples: int = field(9, ge=3, help="Sampled joint rollouts per problem at evaluation (triples for majority3).")
    variant_suffix: str = field("", help="Appended to every arm's variant name (\"-long\": the bases pretrained 4x longer, "
                                "added after the first run's bases failed their precondition).")
    seeds: int = field(5, ge=1, help="Seeds (adapter init, rollouts, problem order; one base per variant).")
    seed: int = field(0, help="First seed; seeds are seed, seed+1, ...")
    artifact: str = field("", help="Also write a stamped artifact folder here (e.g. results/teams).")


def lora_for(cfg: TeamsConfig, graph: Graph) -> LoraSettings:
    if cfg.rank % len(graph.nodes):
        raise ConfigError(f"rank {cfg.rank} does not split evenly over {len(graph.nodes)} nodes")
    r = cfg.rank // len(graph.nodes)
    return LoraSettings(enabled=True, r=r, alpha=max(1, round(cfg.alpha_per_rank * r)), dropout=0.0,
                        target_modules=list(cfg.target_modules))


def prompt_fn(task: ComposeTask):
    def prompt(problem, node: Node, messages: list[str]) -> str:
        return task.node_prompt(node.tag, problem.meta["x1"], problem.meta["x2"], "".join(messages))
    return prompt


def answer_of(text: str) -> str:
    text = text.strip()
    return text[-1] if text else ""


def evaluate(team: Team, task: ComposeTask, n: int, seed: int) -> dict:
    """Sampled accuracy (temperature 1, ``n`` joint rollouts per problem), majority of three samples,
    greedy accuracy, and tokens run through the model per problem (sampled: per joint rollout)."""
    probs = task.problems("test")
    jr = team.rollout(probs, n, 1.0, seed)
    ok = [task.verify(p, a) for p, a in zip(jr.problems, jr.answers)]
    triples = n // 3
    maj = []
    for i, p in enumerate(probs):
        answers = [answer_of(a) for a in jr.answers[i * n:(i + 1) * n]]
        maj += [float(majority(answers[3 * t:3 * t + 3]) == p.answer) for t in range(triples)]
    greedy = team.rollout(probs, 1, 0.0, seed)
    g_ok = [task.verify(p, a) for p, a in zip(greedy.problems, greedy.answers)]
    generated = sum(len(r) for s in jr.samples.values() for r in s.response_ids)
    return {"sampled": sum(ok) / len(ok), "majority3": sum(maj) / len(maj), "greedy": sum(g_ok) / len(g_ok),
            "tokens_per_rollout": sum(jr.tokens().values()) / len(jr.problems),
            "generated_per_rollout": generated / len(jr.problems)}


def base_skills(policy: Policy, task: ComposeTask) -> dict:
    """What the base gives its teacher's behaviours, averaged over all 100 pairs: the probability of the right
    lookup and of the decoy at positions L and R, and of the sink writing the sum (mod 10) of the two
    digits it reads (messages varied per pair). The teacher's values: p_right, p_decoy (+ uniform share), 1."""
    pairs = [(x1, x2) for x1 in range(10) for x2 in range(10)]

    def mean_prob(prompts: list[str], answers: list[int]) -> float:
        scored = policy.score([policy.encode_prompt(p) for p in prompts],
                              [policy.encode_response(str(a), add_eos=False) for a in answers])
        return sum(float(s.logprob[0].exp()) for s in scored) / len(scored)

    out = {}
    for tag, i, right, decoy in (("L", 0, task.g, task.g_decoy), ("R", 1, task.h, task.h_decoy)):
        prompts = [task.node_prompt(tag, x1, x2, "") for x1, x2 in pairs]
        out[f"{tag}_right"] = mean_prob(prompts, [right[p[i]] for p in pairs])
        out[f"{tag}_decoy"] = mean_prob(prompts, [decoy[p[i]] for p in pairs])
    msgs = [((3 * x1 + x2) % 10, (x1 + 7 * x2) % 10) for x1, x2 in pairs]
    out["sink_adds"] = mean_prob([task.node_prompt("T", x1, x2, f"{u}{v}") for (x1, x2), (u, v) in zip(pairs, msgs)],
                                 [(u + v) % 10 for u, v in msgs])
    return out


def run_arm(arm: str, base_dir: Path, task: ComposeTask, cfg: TeamsConfig, seed: int) -> tuple[dict, list[dict]]:
    _, _, graph, noisy = ARMS[arm]
    team = Team(Policy.load(base_dir), graph, lora_for(cfg, graph), prompt_fn(task),
                message_noise=DIGITS if noisy else "", seed=seed)
    before = evaluate(team, task, cfg.eval_samples, seed + 10_000)
    t0 = time.perf_counter()
    rows = team.train(task.problems("train"), task.verify, cfg.rl, seed)
    wall = time.perf_counter() - t0
    after = evaluate(team, task, cfg.eval_samples, seed + 20_000)
    return {"seed": seed, "before": before, "after": after, "budget": team.budget(), "train_wall_s": wall,
            "train_sampled_tokens": sum(r["sampled_tokens"] for r in rows),
            "train_trained_tokens": sum(r["trained_tokens"] for r in rows)}, rows


def run_teams(cfg: TeamsConfig, out: str | Path, use_cache: bool = True, progress: bool = False) -> dict:
    out, seeds, stamp = begin(cfg, ARMS, out, "teams")
    t0 = time.perf_counter()
    bases: dict[tuple[str, str], tuple[Path, ComposeTask, dict]] = {}
    for arm in cfg.arms:
        fam, var = ARMS[arm][0], ARMS[arm][1] + cfg.variant_suffix
        if (fam, var) not in bases:
            org = get_family(fam).variant_config(var, base=cfg.organism)
            console.rule(f"[bold]{fam}/{var} base organism")
            info = build_compose_organism(org, out / f"base-{fam}-{var}", use_cache=use_cache, progress=progress)
            task = ComposeTask(org.task)
            info = {**info, "skills": base_skills(Policy.load(out / f"base-{fam}-{var}"), task)}
            console.print(f"{fam}/{var} base: " + ", ".join(f"{k} {v:.2f}" for k, v in info["skills"].items()),
                          highlight=False)
            bases[(fam, var)] = (out / f"base-{fam}-{var}", task, info)
    per_arm: dict[str, list[dict]] = {a: [] for a in cfg.arms}
    metrics: dict[str, list[dict]] = {}
    for s in seeds:
        for arm in cfg.arms:
            base_dir, task, _ = bases[(ARMS[arm][0], ARMS[arm][1] + cfg.variant_suffix)]
            row, steps = run_arm(arm, base_dir, task, cfg, s)
            per_arm[arm].append(row)
            metrics[f"{arm.replace('/', '-')}-seed{s}"] = steps
            console.print(f"seed {s} {arm}: sampled {row['before']['sampled']:.3f} -> {row['after']['sampled']:.3f}, "
                          f"greedy {row['after']['greedy']:.3f}, majority3 {row['after']['majority3']:.3f} "
                          f"({row['train_wall_s']:.0f}s)", highlight=False)
        (out / "per_arm.json").write_text(json.dumps(per_arm, indent=2))
    summary = _summary(cfg, per_arm, bases, seeds, t0)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _plot(summary, out / "teams")
    if cfg.artifact:
        folder = write_artifact(Path(cfg.artifact).parent, Path(cfg.artifact).name, summary, seeds=seeds, stamp=stamp,
                                metrics=metrics)
        _plot(summary, plots_dir(folder) / "teams")
        console.print(f"wrote the stamped artifact {folder}", highlight=False)
    return summary


def _ci(vals: list[float]) -> dict:
    return bootstrap_ci(vals).as_dict()


def _summary(cfg: TeamsConfig, per_arm: dict[str, list[dict]], bases: dict, seeds: list[int], t0: float) -> dict:
    arms = {}
    for arm, rows in per_arm.items():
        arms[arm] = {
            "before": {k: _ci([r["before"][k] for r in rows]) for k in ("sampled", "majority3", "greedy")},
            "after": {k: _ci([r["after"][k] for r in rows]) for k in ("sampled", "majority3", "greedy")},
            "gain": _ci([r["after"]["sampled"] - r["before"]["sampled"] for r in rows]),
            "budget": rows[0]["budget"],
            "tokens_per_rollout": rows[0]["after"]["tokens_per_rollout"],
            "generated_per_rollout": _ci([r["after"]["generated_per_rollout"] for r in rows])["mean"],
            "train_sampled_tokens": _ci([r["train_sampled_tokens"] for r in rows])["mean"],
            "train_wall_s": _ci([r["train_wall_s"] for r in rows])["mean"],
        }
    contrasts = {}
    for name, (a, ma, b, mb) in CONTRASTS.items():
        if a in per_arm and b in per_arm:
            contrasts[name] = paired_difference({r["seed"]: r["after"][ma] for r in per_arm[a]},
                                                {r["seed"]: r["after"][mb] for r in per_arm[b]}).as_dict()
    if all(a in per_arm for a in ("team/sum", "single/sum", "team/table", "single/table")):
        adv = {arm: {r["seed"]: r["after"]["sampled"] for r in per_arm[arm]} for arm in per_arm}
        contrasts["advantage-sum-minus-table"] = paired_difference(
            {s: adv["team/sum"][s] - adv["single/sum"][s] for s in adv["team/sum"]},
            {s: adv["team/table"][s] - adv["single/table"][s] for s in adv["team/table"]}).as_dict()
    budgets = {a: v["budget"]["total"] for a, v in arms.items()}
    return {
        "seeds": seeds, "n_seeds": len(seeds), "arms": arms, "contrasts": contrasts,
        "budget_matched": len(set(budgets.values())) == 1,
        "bases": {f"{f}/{v}": {"cache_hit": i["cache_hit"], "pretrain_steps": i["steps"], "pretrain_flops": i["flops"],
                               "final_loss": i["final_loss"], "skills": i["skills"]} for (f, v), (_, _, i) in bases.items()},
        "per_arm": per_arm, "total_wall_s": time.perf_counter() - t0, "config": asdict(cfg),
    }


def _plot(summary: dict, stem: Path) -> list[Path]:
    arms = summary["arms"]
    groups = {"base (before RL)": {a: v["before"]["sampled"] for a, v in arms.items()},
              "after joint GRPO": {a: v["after"]["sampled"] for a, v in arms.items()},
              "after, majority of 3": {a: v["after"]["majority3"] for a, v in arms.items()}}
    return plot_bars(groups, stem, title=f"sampled accuracy per arm ({summary['n_seeds']} seeds, 95% CI), "
                     "same trainable parameters", ylabel="accuracy", formats=("png",))


def markdown_table(summary: dict) -> str:
    def cell(iv: dict) -> str:
        return f"{100 * iv['mean']:.1f}% [{100 * iv['low']:.1f}, {100 * iv['high']:.1f}]"

    lines = [f"Seeds {summary['seeds']}; trainable parameters per arm "
             + ", ".join(f"{a} {v['budget']['total']}" for a, v in summary["arms"].items()) + ".", "",
             "| arm | before (sampled) | after (sampled) | after (majority of 3) | after (greedy) | tokens / rollout |",
             "| --- | --- | --- | --- | --- | --- |"]
    for a, v in summary["arms"].items():
        lines.append(f"| {a} | {cell(v['before']['sampled'])} | {cell(v['after']['sampled'])} | "
                     f"{cell(v['after']['majority3'])} | {cell(v['after']['greedy'])} | {v['tokens_per_rollout']:.1f} |")
    lines += ["", "| contrast (paired by seed) | difference |", "| --- | --- |"]
    lines += [f"| {k} | {cell(v)} |" for k, v in summary["contrasts"].items()]
    return "\n".join(lines) + "\n"
