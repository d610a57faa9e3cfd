"""Accuracy of a policy on a task split, by exact verification of sampled or greedy completions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from forklens.config import field


@dataclass
class EvalConfig:
    split: Literal["train", "test"] = field("test", help="Task split to evaluate on.")
    n: int = field(1, ge=1, help="Completions per problem (accuracy is their mean).")
    temperature: float = field(0.0, ge=0, help="0 = greedy.")
    top_p: float = field(1.0, gt=0, le=1, help="Nucleus sampling threshold (temperature > 0).")
    max_new_tokens: int = field(48, ge=1, help="Completion length cap (single-turn tasks).")
    T: int = field(5, ge=1, help="Tool-call cap of each episode (tasks with tools; forced answer at the cap).")
    turn_tokens: int = field(12, ge=1, help="Token cap of one model turn (tasks with tools).")
    limit: int = field(0, ge=0, help="Evaluate only the first N problems (0 = all).")
    seed: int = field(0, help="Sampling seed.")


def evaluate(policy, task, config: EvalConfig | None = None) -> dict:
    """Accuracy plus per-problem correct counts over the task's own rollout (episodes with tool
    observations for a task with tools); greedy by default. The task's rollout metrics (tool calls,
    coverage, ...) are added under their names."""
    c = config or EvalConfig()
    problems = task.problems(c.split)
    if c.limit:
        problems = problems[: c.limit]
    samples = task.rollout(policy, problems, c.n, c, seed=c.seed)
    correct = [0] * len(problems)
    for g, text in zip(samples.group, samples.texts):
        correct[g] += int(task.verify(problems[g], text) > 0)
    n_total = len(problems) * c.n
    return {
        "accuracy": sum(correct) / n_total,
        "n_problems": len(problems),
        "n_per_problem": c.n,
        "split": c.split,
        "temperature": c.temperature,
        "truncated_frac": sum(not f for f in samples.finished) / n_total,
        "per_problem": [{"id": p.id, "correct": k, "n": c.n} for p, k in zip(problems, correct)],
        **task.rollout_metrics([problems[g] for g in samples.group], samples),
        "examples": [{"prompt": problems[g].prompt, "completion": t, "answer": problems[g].answer}
                     for g, t in list(zip(samples.group, samples.texts))[:5]],
    }
