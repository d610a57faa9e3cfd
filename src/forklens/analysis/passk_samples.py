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

from forklens.errors import DataError
from forklens.tasks.answers import is_correct
from forklens.tasks.base import Sampling
from forklens.tasks.dataset import iter_jsonl, read_utf8


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


def lm_eval_records(path: str | Path, model: str | None = None) -> list[dict[str, Any]]:
    """Graded samples from lm-evaluation-harness's ``--log_samples`` output (``samples_<task>_<time>.jsonl``).

    Each line is one document: ``doc_id``, ``target`` and ``resps`` (a list of lists of generated
    strings; with ``repeats`` or several generations, every string is one sample). Every response is
    graded against ``target`` with :func:`forklens.tasks.answers.is_correct` (boxed, numeric or last-line
    match), so pass@k counts each of a document's responses. ``model`` defaults to the task name in the
    file name."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"lm-eval samples file {path} does not exist" if not path.exists()
                        else f"{path} is not a file; give one samples_<task>_<time>.jsonl")
    name = model or (path.stem.split("_")[1] if path.stem.startswith("samples_") and "_" in path.stem[8:]
                     else path.stem)
    out: list[dict[str, Any]] = []
    for lineno, obj in iter_jsonl(path, read_utf8(path)):
        where = f"{path} line {lineno}"
        if "doc_id" not in obj or "target" not in obj or "resps" not in obj:
            raise DataError(f"{where}: expected an lm-eval sample with doc_id, target and resps")
        resps = [r for group in obj["resps"] for r in (group if isinstance(group, list) else [group])]
        if not resps or not all(isinstance(r, str) for r in resps):
            raise DataError(f"{where}: resps must hold generated strings (a generate_until task), got {obj['resps']!r:.80}")
        target = obj["target"]
        if isinstance(target, list):
            target = target[0] if target else ""
        for r in resps:
            out.append({"model": name, "T": 0, "problem_id": str(obj["doc_id"]),
                        "correct": bool(is_correct(str(target), r))})
    if not out:
        raise DataError(f"lm-eval samples file {path} is empty")
    return out
