"""`forklens experiment boundary`: does RL expand the capability boundary? PASS@(k, T) on two organisms.

After arXiv 2604.14877 (see docs/boundary.md):

* **static arithmetic** (the ``arith`` organism, no tools): the demo's base organism vs GRPO from it
  (:func:`forklens.train.run.run_grpo`); pass@k from ``n`` fresh samples per test problem;
* **compositional tool use** (the ``agent`` organism, :mod:`forklens.tasks.agent`): the agent base
  vs GRPO from it (binary exact-match reward, group 8, trained at ``T = max(T grid)``) vs SFT from it
  on the gold trajectories of the same training questions (matched data). For every model and every
  cap ``T`` in the grid, ``n`` fresh episodes per test question (forced answer at the cap), then
  PASS@(k, T), boundary sets at ``k = n`` and strategy diversity (distinct tool-call sequences per
  question, :mod:`forklens.analysis.diversity`).

Outputs in ``--out``: ``summary.json``, ``report.md``, ``samples_arith.jsonl``,
``samples_agent.jsonl`` (one line per sample; ``forklens passk --samples`` reads them),
``arith_pass_at_k.png``, ``agent_pass_at_k_T{T}.png`` (one per cap) and ``agent_pass_at_k.png``
(every model and cap), plus the model directories.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, Sequence

from rich.console import Console

from forklens.analysis.diversity import diversity_table, strategy_overlap
from forklens.analysis.passk import boundary_sets, boundary_sets_to_json, pass_at_k_table
from forklens.analysis.passk_samples import generate_samples, write_jsonl
from forklens.config import field
from forklens.objectives.grpo import GRPOLossConfig
from forklens.organisms.agent import AgentOrganismConfig, build_agent_organism
from forklens.organisms.arith import OrganismConfig, build_base_organism
from forklens.policy import Policy
from forklens.tasks import get_task
from forklens.train.episode_source import EpisodeSFTSource
from forklens.train.loop import TrainConfig
from forklens.train.run import RLConfig, run_grpo, train
from forklens.train.sources import SamplingConfig
from forklens.runfolder import claim_folder, owned_rmtree

console = Console(stderr=True)


def _agent_rl_train() -> TrainConfig:
    return TrainConfig(max_steps=60, learning_rate=3e-4, micro_batch_size=128)


@dataclass
class AgentRLConfig:
    train: TrainConfig = field(default_factory=_agent_rl_train, help="Optimizer and loop settings of GRPO.")
    sampling: SamplingConfig = field(default_factory=SamplingConfig,
                                            help="Training episodes (group size, temperature). The boundary "
                                            "experiment trains at T = max(passk.T) and turn_tokens = passk.turn_tokens.")
    loss: GRPOLossConfig = field(default_factory=GRPOLossConfig, help="GRPO loss settings.")


def _agent_sft_train() -> TrainConfig:
    return TrainConfig(max_steps=30, learning_rate=3e-4, micro_batch_size=64)


@dataclass
class AgentSFTConfig:
    train: TrainConfig = field(default_factory=_agent_sft_train,
                               help="SFT on the gold trajectories of the training questions (30 steps of 32 = "
                               "about 5 epochs of 200).")
    batch_size: int = field(32, ge=1, help="Gold trajectories per SFT step.")


@dataclass
class PassKGridConfig:
    n: int = field(64, ge=1, help="Fresh samples (episodes) per problem, model and T; k runs over powers of 2 up to n.")
    T: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 5], ge=0, help="Tool-call caps of the agent grid.")
    temperature: float = field(1.0, ge=0, help="Sampling temperature of the pass@k samples.")
    top_p: float = field(1.0, gt=0, le=1, help="Nucleus threshold of the pass@k samples.")
    arith_problems: int = field(200, ge=0, help="Held-out arith problems (0 = the whole test split).")
    agent_problems: int = field(0, ge=0, help="Held-out agent questions (0 = the whole test split).")
    max_new_tokens: int = field(48, ge=1, help="Completion cap of the arith samples.")
    turn_tokens: int = field(12, ge=1, help="Token cap of one agent turn.")


@dataclass
class BoundaryConfig:
    arith: OrganismConfig = field(default_factory=OrganismConfig, help="The arith base organism (the demo's).")
    arith_rl: RLConfig = field(default_factory=RLConfig, help="GRPO on arith (the demo's settings).")
    agent: AgentOrganismConfig = field(default_factory=AgentOrganismConfig, help="The agent base organism.")
    agent_rl: AgentRLConfig = field(default_factory=AgentRLConfig, help="GRPO on agent episodes.")
    agent_sft: AgentSFTConfig = field(default_factory=AgentSFTConfig, help="SFT on gold agent trajectories.")
    passk: PassKGridConfig = field(default_factory=PassKGridConfig, help="The PASS@(k, T) grid.")
    organisms: list[Literal["arith", "agent"]] = field(default_factory=lambda: ["arith", "agent"],
                                                       help="Which organisms to run.")
    seed: int = field(0, help="Seed of the organisms, training and sampling.")


# ------------------------------------------------------------------------------------ analysis


def powers_of_two(n: int) -> list[int]:
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    return ks


def crossing(curve_a: dict[int, float], curve_b: dict[int, float]) -> dict[str, Any]:
    """The gap ``a - b`` at each k and the first k where its sign differs from the sign at the smallest k."""
    ks = sorted(set(curve_a) & set(curve_b))
    gap = {k: curve_a[k] - curve_b[k] for k in ks}
    sign = lambda x: (x > 1e-12) - (x < -1e-12)  # noqa: E731
    first = sign(gap[ks[0]]) if ks else 0
    cross = next((k for k in ks if sign(gap[k]) != first and sign(gap[k]) != 0), None)
    return {"gap": {str(k): v for k, v in gap.items()}, "first_sign": first, "cross_k": cross}


def analyse(records: list[dict], n: int, reference: str = "base") -> tuple[dict[str, Any], Any]:
    """(summary dict, :class:`PassAtKTable`): pass@k means, boundary sets at k = n, crossings of every
    model's curve with ``reference``'s, and per-kind pass@1 / pass@n when records carry type/depth."""
    ks = powers_of_two(n)
    table = pass_at_k_table(records, ks)
    sets = boundary_sets(table, n) if len(table.models) > 1 else None
    out: dict[str, Any] = {"ks": ks, "n": n, "pass_at_k": table.mean_json(), "boundary": {}, "crossing": {},
                           "boundary_sets": boundary_sets_to_json(sets) if sets else None}
    for T, entry in (sets["by_T"].items() if sets else []):
        b = {"solved": {m: len(v) for m, v in entry["solved"].items()},
             "problems": {m: len(table.counts[m][T]) for m in entry["models"]}}
        if reference in entry["models"]:
            for m in entry["models"]:
                if m != reference:
                    b[f"{m}_not_{reference}"] = entry["a_not_b"][m][reference]
                    b[f"{reference}_not_{m}"] = entry["a_not_b"][reference][m]
        out["boundary"][str(T)] = b
    for m in table.models:
        if m == reference:
            continue
        for T in sorted(table.mean[m]):
            if T in table.mean.get(reference, {}):
                out["crossing"].setdefault(m, {})[str(T)] = crossing(table.mean[m][T], table.mean[reference][T])
    kinds = {}
    for r in records:
        if "type" in r:
            kinds[r["problem_id"]] = f"{r['type']}-{r['depth']}"
    if kinds:
        by_kind: dict[str, dict] = {}
        for m in table.models:
            for T, per in table.per_problem[m].items():
                for pid, vals in per.items():
                    acc = by_kind.setdefault(m, {}).setdefault(str(T), {}).setdefault(kinds[pid], [])
                    acc.append(vals)
        out["by_kind"] = {
            m: {T: {kind: {"problems": len(v), "pass@1": sum(x[1] for x in v) / len(v),
                           f"pass@{n}": sum(x[n] for x in v) / len(v),
                           "solved": sum(x[n] > 0 for x in v)}
                    for kind, v in sorted(by_T.items())}
                for T, by_T in by_kind[m].items()}
            for m in by_kind}
    return out, table


def plot_grid(table, stem: Path, title: str, Ts: Sequence[int] | None = None) -> list[Path]:
    from forklens.report.plots import plot_pass_at_k  # matplotlib: loaded only when plotting

    curves = {m: {T: v for T, v in by_T.items() if Ts is None or T in Ts} for m, by_T in table.mean.items()}
    counts = {m: {T: len(g) for T, g in by_T.items()} for m, by_T in table.counts.items()}
    return plot_pass_at_k(curves, stem, problem_counts=counts, title=title)


# ------------------------------------------------------------------------------------ stages


def model_samples(cfg: BoundaryConfig, task, models: dict[str, Path], limit: int, Ts: Sequence[int]) -> list[dict]:
    """The grid's graded samples of every model on the first ``limit`` test problems (0 = all), per cap in ``Ts``."""
    g = cfg.passk
    problems = task.problems("test")[: limit or None]
    records: list[dict] = []
    for name, path in models.items():
        records += generate_samples(Policy.load(path), task, problems, name, Ts, g.n, g.temperature, g.top_p, cfg.seed,
                                    max_new_tokens=g.max_new_tokens, turn_tokens=g.turn_tokens)
    return records


def run_arith(cfg: BoundaryConfig, out: Path, progress: bool = True) -> dict:
    org = replace(cfg.arith, seed=cfg.seed)
    task = get_task(org.task, org.arith)
    console.rule("[bold]arith: base organism")
    t0 = time.perf_counter()
    base_info = build_base_organism(org, out / "base", use_cache=True, progress=progress)
    console.rule("[bold]arith: GRPO")
    work = out / "rl_train"
    rl_dir = out / "rl"
    owned_rmtree(work)
    owned_rmtree(rl_dir)
    rl_info = run_grpo(out / "base", task, cfg.arith_rl, work, seed=cfg.seed, progress=progress, model_dir=rl_dir)
    owned_rmtree(work / "checkpoints")
    console.rule("[bold]arith: pass@k samples")
    records = model_samples(cfg, task, {"base": out / "base", "rl": rl_dir}, cfg.passk.arith_problems, (0,))
    return {"records": records, "train": {
        "base": {"cache_hit": base_info["cache_hit"], "pretrain_steps": base_info["steps"]},
        "rl": {"steps": rl_info["steps"], "flops": rl_info["flops"], "wall_s": rl_info["wall_s"],
               "final_reward_mean": rl_info["last"].get("reward_mean"), "metrics": str(work / "metrics.jsonl")}},
        "wall_s": time.perf_counter() - t0}


def run_agent_grpo(base_dir: Path, task, rl: AgentRLConfig, out_dir: Path, seed: int, progress: bool = True) -> dict:
    """GRPO on multi-turn episodes from ``base_dir``; the model is saved to ``out_dir / 'model'``."""
    return run_grpo(base_dir, task, rl, out_dir, seed=seed, progress=progress, name="agent GRPO")


def run_agent_sft(base_dir: Path, task, sft: AgentSFTConfig, out_dir: Path, seed: int, progress: bool = True) -> dict:
    """SFT on the gold trajectories of the training questions (the RL questions: matched data)."""
    policy = Policy.load(base_dir)
    data = [(p.prompt, task.gold_trajectory(p)) for p in task.problems("train")]
    res = train(policy, "sft", None, EpisodeSFTSource(data, sft.batch_size, seed), replace(sft.train, seed=seed),
                out_dir, name="agent SFT", progress=progress, model_dir=out_dir / "model")
    return {**res.info(), "examples": len(data)}


def run_agent(cfg: BoundaryConfig, out: Path, progress: bool = True) -> dict:
    org = replace(cfg.agent, seed=cfg.seed)
    task = get_task("agent", org.agent)
    t0 = time.perf_counter()
    console.rule("[bold]agent: base organism")
    base_info = build_agent_organism(org, out / "base", use_cache=True, progress=progress)
    rl_cfg = replace(cfg.agent_rl, sampling=replace(cfg.agent_rl.sampling, T=max(cfg.passk.T),
                                                    turn_tokens=cfg.passk.turn_tokens))
    console.rule(f"[bold]agent: GRPO at T={rl_cfg.sampling.T}")
    trained = {}
    for name, fn, c in (("rl", run_agent_grpo, rl_cfg), ("sft", run_agent_sft, cfg.agent_sft)):
        if name == "sft":
            console.rule("[bold]agent: SFT on gold trajectories (matched questions)")
        work = out / f"{name}_train"
        owned_rmtree(work)
        info = fn(out / "base", task, c, work, cfg.seed, progress)
        owned_rmtree(out / name)
        shutil.move(info["model_dir"], out / name)
        owned_rmtree(work / "checkpoints")
        trained[name] = {k: info[k] for k in ("steps", "flops", "wall_s")}
        trained[name]["metrics"] = str(work / "metrics.jsonl")
        if name == "rl":
            trained[name]["T"] = rl_cfg.sampling.T
        trained[name]["final"] = {k: v for k, v in info["last"].items()
                                  if k in ("loss", "reward_mean", "tool_calls_mean", "forced_frac")}
    console.rule("[bold]agent: PASS@(k, T) episodes")
    records = model_samples(cfg, task, {name: out / name for name in ("base", "rl", "sft")}, cfg.passk.agent_problems,
                            cfg.passk.T)
    return {"records": records, "train": {"base": {"cache_hit": base_info["cache_hit"],
                                                   "pretrain_steps": base_info["steps"]}, **trained},
            "wall_s": time.perf_counter() - t0}


def run_boundary(cfg: BoundaryConfig, out: str | Path, progress: bool = True) -> dict:
    out = Path(out)
    claim_folder(out, "experiment-boundary")
    t_start = time.perf_counter()
    summary: dict[str, Any] = {"paper": "arXiv 2604.14877 (PASS@(k,T)); see docs/boundary.md", "seed": cfg.seed,
                               "config": asdict(cfg)}
    if "arith" in cfg.organisms:
        res = run_arith(cfg, out / "arith", progress)
        write_jsonl(res["records"], out / "samples_arith.jsonl")
        analysis, table = analyse(res["records"], cfg.passk.n)
        figs = plot_grid(table, out / "arith_pass_at_k", "arith (static, no tools): pass@k")
        summary["arith"] = {**analysis, "train": res["train"], "wall_s": res["wall_s"],
                            "figures": [str(f) for f in figs]}
    if "agent" in cfg.organisms:
        res = run_agent(cfg, out / "agent", progress)
        records = res["records"]
        write_jsonl(records, out / "samples_agent.jsonl")
        analysis, table = analyse(records, cfg.passk.n)
        figs = plot_grid(table, out / "agent_pass_at_k", "agent (tool use): PASS@(k, T)")
        for T in cfg.passk.T:
            figs += plot_grid(table, out / f"agent_pass_at_k_T{T}", f"agent (tool use): PASS@(k, T={T})", Ts=[T])
        div = diversity_table(records)
        overlap = {f"{m}_vs_base": {str(T): {"episodes": strategy_overlap(records, m, "base", T),
                                             "distinct": strategy_overlap(records, m, "base", T, weighted=False)}
                                    for T in cfg.passk.T}
                   for m in ("rl", "sft")}
        summary["agent"] = {**analysis, "diversity": {m: {str(T): v for T, v in by_T.items()} for m, by_T in div.items()},
                            "strategy_overlap": overlap, "train": res["train"], "wall_s": res["wall_s"],
                            "figures": [str(f) for f in figs]}
    summary["total_wall_s"] = time.perf_counter() - t_start
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "report.md").write_text(markdown_report(summary))
    return summary


# ------------------------------------------------------------------------------------ report


def _row(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _curve_table(section: dict, models: Sequence[str]) -> list[str]:
    ks = section["ks"]
    show = [k for k in ks if k in (1, 2, 4, 8, 16, 32, 64, 128, 256)]
    lines = [_row(["model", "T"] + [f"k={k}" for k in show]), _row(["---"] * (2 + len(show)))]
    for m in models:
        for T, by_k in section["pass_at_k"].get(m, {}).items():
            lines.append(_row([m, T] + [f"{by_k[str(k)]:.3f}" for k in show]))
    return lines


def markdown_report(summary: dict) -> str:
    lines = ["# Capability boundary: PASS@(k, T)", "",
             "Unbiased pass@k (Chen et al. 2021) from fresh samples per (model, T, problem); boundary = problems "
             "with pass@n > 0. Paper: arXiv 2604.14877.", ""]
    if "arith" in summary:
        a = summary["arith"]
        n = a["n"]
        lines += [f"## Static arithmetic (arith organism, n = {n} samples per problem)", ""]
        lines += _curve_table(a, ["base", "rl"]) + [""]
        b = a["boundary"]["0"]
        lines.append(f"Boundary at k={n}: base {b['solved']['base']} / {b['problems']['base']}, RL "
                     f"{b['solved']['rl']} / {b['problems']['rl']}; RL not base {len(b['rl_not_base'])}, "
                     f"base not RL {len(b['base_not_rl'])}. RL - base crosses at k = "
                     f"{a['crossing']['rl']['0']['cross_k']}.")
        lines.append("")
    if "agent" in summary:
        a = summary["agent"]
        n = a["n"]
        lines += [f"## Compositional tool use (agent organism, n = {n} episodes per question and T)", ""]
        lines += _curve_table(a, ["base", "rl", "sft"]) + [""]
        lines += [_row(["T", "base solved", "RL solved", "SFT solved", "RL not base", "base not RL", "SFT not base",
                        "base not SFT", "RL-base cross k", "SFT-base cross k"]), _row(["---"] * 10)]
        for T, b in a["boundary"].items():
            lines.append(_row([T, b["solved"]["base"], b["solved"]["rl"], b["solved"]["sft"], len(b["rl_not_base"]),
                               len(b["base_not_rl"]), len(b["sft_not_base"]), len(b["base_not_sft"]),
                               a["crossing"]["rl"][T]["cross_k"], a["crossing"]["sft"][T]["cross_k"]]))
        lines += ["", "Strategy diversity (distinct tool-call sequences per question, mean over questions; overlap = "
                  "share of the model's episodes whose call sequence the base also produced):", "",
                  _row(["T", "base distinct", "RL distinct", "SFT distinct", "distinct correct (base/RL/SFT)",
                        "RL overlap w/ base", "SFT overlap w/ base", "calls/ep (base/RL/SFT)"]), _row(["---"] * 8)]
        div, ov = a["diversity"], a["strategy_overlap"]
        fmt = lambda x: "—" if x is None else f"{x:.3f}"  # noqa: E731
        for T in a["boundary"]:
            ms = ("base", "rl", "sft")
            lines.append(_row([T] + [f"{div[m][T]['distinct_strategies']:.2f}" for m in ms]
                              + [" / ".join(f"{div[m][T]['distinct_correct_strategies']:.2f}" for m in ms)]
                              + [fmt(ov["rl_vs_base"][T]["episodes"]), fmt(ov["sft_vs_base"][T]["episodes"])]
                              + [" / ".join(f"{div[m][T]['calls_per_episode']:.2f}" for m in ms)]))
        if "by_kind" in a:
            Tmax = max(a["boundary"], key=int)
            lines += ["", f"By kind of question at T={Tmax} (pass@1 / pass@{n}):", "",
                      _row(["kind", "questions", "base", "RL", "SFT"]), _row(["---"] * 5)]
            for kind, v in a["by_kind"]["base"][Tmax].items():
                cells = [kind, v["problems"]]
                for m in ("base", "rl", "sft"):
                    w = a["by_kind"][m][Tmax][kind]
                    cells.append(f"{w['pass@1']:.3f} / {w[f'pass@{n}']:.3f}")
                lines.append(_row(cells))
        lines.append("")
    lines.append(f"Total wall time: {summary['total_wall_s']:.0f} s.")
    return "\n".join(lines) + "\n"
