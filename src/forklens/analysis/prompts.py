"""Reading prompts and response files (JSONL) for ``forklens diff``, with line-numbered errors.

Prompts file: one JSON object per line::

    {"prompt": "What is 2+3?", "answer": "5", "id": "q1"}

``prompt`` (a string) is required. ``answer`` (string or number) is optional; when present the
correctness of each response is recorded. ``id`` (string or integer) is optional and defaults to
the 1-based line number as a string (``"L3"`` for line 3); ids must be unique. Blank lines are
skipped.

Responses file (``--responses FILE``): one JSON object per line with ``response`` (a string) and
either ``id`` (matching a prompt's id) or ``prompt`` (matching a prompt's text exactly). Several
responses for the same prompt become samples 0, 1, ... in file order. An optional ``finished``
(default true) says whether the response ended with EOS; when true, EOS is appended before
teacher-forcing, as for generated responses that finished.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from forklens.errors import DataError, ForklensWarning
from forklens.tasks.dataset import DataColumns, iter_jsonl, load_dataset_task, read_utf8, text_is_parquet

__all__ = ["load_prompts", "load_responses", "read_jsonl"]


def read_jsonl(path: str | Path, what: str) -> list[tuple[int, dict[str, Any]]]:
    """``(line_number, object)`` for each non-blank line; clear errors for anything else."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} file {path} does not exist")
    if path.is_dir():
        raise DataError(f"{what} file {path} is a directory; expected a JSONL file")
    out = list(iter_jsonl(path, read_utf8(path)))
    if not out:
        raise DataError(f"{what} file {path} is empty: expected one JSON object per line")
    return out


def _check_id(value: Any, path: Path, lineno: int) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{path} line {lineno}: \"id\" must be a string or an integer, got {value!r}")
    return str(value)


def load_prompts(path: str | Path) -> list[dict[str, Any]]:
    """Prompt records ``{"id", "prompt", "answer" (or None), "line"}`` in file order.

    A JSONL file as described above; a parquet file, a JSON list or a ``datasets`` folder in any row
    format of :mod:`forklens.tasks.dataset` (TRL's chat prompts and ``messages``, verl's
    ``reward_model.ground_truth``) is read through it."""
    path = Path(path)
    if path.is_dir() or path.suffix in (".parquet", ".json") or (path.is_file() and text_is_parquet(path)):
        task = load_dataset_task(path, DataColumns(id_column="id"))
        return [{"id": p.id, "prompt": p.prompt, "answer": p.answer, "line": i + 1}
                for i, p in enumerate(task.problems("test"))]
    records: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for lineno, obj in read_jsonl(path, "prompts"):
        if "prompt" not in obj:
            raise DataError(f"{path} line {lineno}: missing the required \"prompt\" field")
        prompt = obj["prompt"]
        if not isinstance(prompt, str):
            raise DataError(f"{path} line {lineno}: \"prompt\" must be a string, got {type(prompt).__name__}")
        answer = obj.get("answer")
        if answer is not None:
            if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
                raise DataError(f"{path} line {lineno}: \"answer\" must be a string or a number, got {answer!r}")
            answer = str(answer)
        pid = _check_id(obj["id"], path, lineno) if "id" in obj else f"L{lineno}"
        if pid in seen:
            raise DataError(f"{path} line {lineno}: id {pid!r} was already used on line {seen[pid]}")
        seen[pid] = lineno
        records.append({"id": pid, "prompt": prompt, "answer": answer, "line": lineno})
    empty = [r["line"] for r in records if not r["prompt"].strip()]
    if empty:
        warnings.warn(f"{path}: {len(empty)} empty prompt(s) (first on line {empty[0]}); the model sees only "
                      "its BOS token (if any) there", ForklensWarning, stacklevel=2)
    return records


def load_responses(path: str | Path, prompts: list[dict[str, Any]]) -> list[tuple[int, str, bool]]:
    """Match a responses file to ``prompts``: ``(prompt index, response text, finished)`` in file order."""
    path = Path(path)
    by_id = {p["id"]: i for i, p in enumerate(prompts)}
    by_text: dict[str, int] = {}
    for i, p in enumerate(prompts):
        if isinstance(p["prompt"], str):  # chat-message prompts are matched by id only
            by_text.setdefault(p["prompt"], i)
    out = []
    for lineno, obj in read_jsonl(path, "responses"):
        if "response" not in obj:
            raise DataError(f"{path} line {lineno}: missing the required \"response\" field")
        text = obj["response"]
        if not isinstance(text, str):
            raise DataError(f"{path} line {lineno}: \"response\" must be a string, got {type(text).__name__}")
        finished = obj.get("finished", True)
        if not isinstance(finished, bool):
            raise DataError(f"{path} line {lineno}: \"finished\" must be true or false, got {finished!r}")
        if "id" in obj or "prompt_id" in obj:  # prompt_id: a `forklens diff` responses.jsonl
            rid = _check_id(obj["id"] if "id" in obj else obj["prompt_id"], path, lineno)
            if rid not in by_id:
                raise DataError(f"{path} line {lineno}: id {rid!r} is not in the prompts file")
            idx = by_id[rid]
        elif "prompt" in obj:
            if not isinstance(obj["prompt"], str) or obj["prompt"] not in by_text:
                raise DataError(f"{path} line {lineno}: this \"prompt\" text is not in the prompts file")
            idx = by_text[obj["prompt"]]
        else:
            raise DataError(f"{path} line {lineno}: give \"id\" (or \"prompt_id\") or \"prompt\" to say which "
                            "prompt this answers")
        out.append((idx, text, finished))
    return out
