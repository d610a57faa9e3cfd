"""Graded samples for pass@k and PASS@(k, T): ``n`` rollouts per problem and tool-call cap, one record each.

The records are what :func:`forklens.analysis.passk.pass_at_k_table` and ``forklens passk --samples``
read (``problem_id``, ``model``, ``T``, ``correct``), plus the tool calls, the response and the
problem's ``type`` and ``depth`` when it has them.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Sequence

from forklens.tasks.base import Sampling


def cap_seed(seed: int, T: int) -> int:
    """The sampling seed of cap ``T`` (each cap gets fresh, reproducible draws)."""
    return random.Random(f"passk-{seed}-{T}").randrange(2**31)


def generate_samples(policy, task, problems: Sequence, model: str, Ts: Sequence[int] = (0,), n: int = 64,
                     temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, max_new_tokens: int = 48,
                     turn_tokens: int = 12, batch_size: int = 512) -> list[dict[str, Any]]:
    """``n`` graded rollouts per problem and cap ``T`` from the task's own rollout (a fresh run per
    ``T``, forced answer at the cap, for a task with tools; a task without tools accepts only
    ``T = 0``, see ``task.check_caps``)."""
    task.check_caps(Ts)
    records: list[dict[str, Any]] = []
    for T in Ts:
        sampling = Sampling(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, T=T,
                            turn_tokens=turn_tokens)
        s = task.rollout(policy, problems, n, sampling, seed=cap_seed(seed, T), batch_size=batch_size)
        calls = [list(e.calls) for e in s.episodes] if s.episodes is not None else [[] for _ in s.texts]
        for g, text, c in zip(s.group, s.texts, calls):
            p = problems[g]
            rec = {"problem_id": p.id, "model": model, "T": T, "correct": bool(task.verify(p, text) > 0),
                   "calls": c, "response": text}
            for key in ("type", "depth"):
                if key in p.meta:
                    rec[key] = p.meta[key]
            records.append(rec)
    return records


def write_jsonl(records: Sequence[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path
