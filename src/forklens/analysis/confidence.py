"""The premature-confidence probe over a set of responses: trajectories, the split, a plot.

:func:`run_confidence_probe` samples one chain of thought per problem (or takes given responses),
probes it with :func:`forklens.rewards.confidence.confidence_trajectories` and grades the full
response; :func:`summarize` splits the responses into progressive (Spearman(confidence, position)
>= 0.4) and premature, with the accuracy of each group; :func:`plot_trajectories` draws them.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Sequence

from forklens.tasks.base import BaseTask, Sampling
from forklens.rewards.confidence import (POSITIONS, PROGRESSIVE_RHO, MarkerForcing, confidence_trajectories,
                                         premature_penalty, spearman)


def sample_chains(policy, task, problems: Sequence, temperature: float = 1.0, seed: int = 0,
                  max_new_tokens: int = 48, T: int = 5, turn_tokens: int = 12) -> list[str]:
    """One response per problem from the task's own rollout: an episode with at most ``T`` tool calls
    for a task with tools, else a completion of at most ``max_new_tokens`` tokens (also for ``task=None``,
    problems read from a data file)."""
    sampling = Sampling(temperature=temperature, max_new_tokens=max_new_tokens, T=T, turn_tokens=turn_tokens)
    return list((task if task is not None else BaseTask()).rollout(policy, problems, 1, sampling, seed=seed).texts)


def probe_records(policy, forcing: MarkerForcing, problems: Sequence, responses: Sequence[str], correct: Sequence[bool],
                  m: int = 10, temperature: float = 1.0, seed: int = 0) -> list[dict]:
    """One record per response: its trajectory, Spearman correlation with position, the split, ``P``."""
    traj = confidence_trajectories(policy, forcing, problems, responses, m=m, temperature=temperature, seed=seed)
    out = []
    for p, r, ok, t in zip(problems, responses, correct, traj):
        rho = spearman(t, POSITIONS)
        out.append({"id": p.id, "prompt": p.prompt, "answer": p.answer, "response": r, "correct": bool(ok),
                    "trajectory": t, "spearman": rho, "progressive": rho >= PROGRESSIVE_RHO,
                    "flat": len(set(t)) == 1, "penalty": premature_penalty(t)})
    return out


def _group(records: list[dict]) -> dict:
    if not records:
        return {"count": 0, "accuracy": None, "mean_trajectory": None, "spearman_mean": None}
    k = len(records[0]["trajectory"])
    return {"count": len(records), "accuracy": statistics.mean(float(r["correct"]) for r in records),
            "mean_trajectory": [statistics.mean(r["trajectory"][j] for r in records) for j in range(k)],
            "spearman_mean": statistics.mean(r["spearman"] for r in records)}


def summarize(records: list[dict]) -> dict:
    """Counts, accuracy and mean trajectory overall and per group (progressive / premature), the
    number of flat trajectories (counted as premature) and the mean shaping penalty ``P``."""
    prog = [r for r in records if r["progressive"]]
    prem = [r for r in records if not r["progressive"]]
    return {"n": len(records), "positions": list(POSITIONS), "threshold": PROGRESSIVE_RHO,
            "all": _group(records), "progressive": _group(prog), "premature": _group(prem),
            "progressive_frac": len(prog) / len(records) if records else None,
            "flat": sum(r["flat"] for r in records),
            "penalty_mean": statistics.mean(r["penalty"] for r in records) if records else None}


def plot_trajectories(records: list[dict], stem: str | Path, title: str = "confidence probe",
                      max_lines: int = 200) -> list[Path]:
    """Each response's trajectory (faint, up to ``max_lines``) and each group's mean (bold)."""
    from forklens.report.plots import new_figure, save_figure

    fig, ax = new_figure()
    xs = [100 * x for x in POSITIONS]
    colors = {True: "C0", False: "C3"}
    for r in records[:max_lines]:
        ax.plot(xs, r["trajectory"], color=colors[r["progressive"]], alpha=0.08, linewidth=0.8)
    s = summarize(records)
    for key, prog in (("progressive", True), ("premature", False)):
        g = s[key]
        if g["count"]:
            acc = f", acc {g['accuracy']:.2f}"
            ax.plot(xs, g["mean_trajectory"], color=colors[prog], linewidth=2.5, marker="o",
                    label=f"{key} (n={g['count']}{acc})")
    ax.set_xlabel("chain of thought shown (%)")
    ax.set_ylabel("forced-answer accuracy c_j")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    return save_figure(fig, stem, formats=("png",))


def markdown_table(summary: dict) -> str:
    fmt = lambda x: "—" if x is None else f"{x:.3f}"  # noqa: E731
    traj = lambda t: "—" if t is None else " ".join(f"{x:.2f}" for x in t)  # noqa: E731
    lines = ["| group | responses | accuracy | mean Spearman | mean c_j at 0,20,...,100% |",
             "| --- | --- | --- | --- | --- |"]
    for key in ("all", "progressive", "premature"):
        g = summary[key]
        lines.append(f"| {key} | {g['count']} | {fmt(g['accuracy'])} | {fmt(g['spearman_mean'])} | "
                     f"{traj(g['mean_trajectory'])} |")
    return "\n".join(lines) + "\n"
