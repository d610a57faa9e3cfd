"""Your own problems as a task: JSONL, JSON, parquet or a ``datasets`` folder, in the formats TRL and verl use.

:func:`read_rows` reads a table and names each row's location (``file line 7``, ``file row 7``) for
errors. :func:`load_dataset_task` turns it into a :class:`DatasetTask` that every forklens command
accepts where it takes a built-in task (``--data FILE``).

Row formats (the column names are TRL's and verl's; others are set with ``--set data.prompt_column=...``):

* **standard**: ``prompt`` (a string) and ``answer`` (string or number), optional ``id``;
* **conversational prompt** (TRL): ``prompt`` is a list of ``{"role", "content"}`` messages, rendered
  with the model's chat template at rollout time;
* **messages** (chat SFT data): ``messages`` is a conversation; the prompt is every message before the
  last assistant message and that message is the expert completion;
* **prompt/completion** (TRL): ``completion`` (string or messages) is the expert completion, for SFT;
* **verl**: ``prompt`` messages and the answer in ``reward_model.ground_truth`` (dotted columns are
  looked up in nested objects), ``data_source`` kept in the problem's meta.

The answer column is the first present of ``answer``, ``solution``, ``ground_truth`` and
``reward_model.ground_truth`` unless one is named. The verifier is
:func:`forklens.tasks.answers.is_correct` (boxed, numeric or last-line match), or your own reward
(``--reward module:function``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from forklens.config import field
from forklens.errors import DataError
from forklens.tasks.answers import is_correct
from forklens.tasks.base import BaseTask, Problem

PROMPT_COLUMNS = ("prompt", "messages", "question", "problem")
ANSWER_COLUMNS = ("answer", "solution", "ground_truth", "reward_model.ground_truth")
ROLES = {"system", "user", "assistant", "tool", "developer"}


@dataclass
class DataColumns:
    prompt_column: str = field("", help="Column holding the prompt (a string or chat messages); default: the "
                               "first of prompt, messages, question, problem.")
    answer_column: str = field("", help="Column holding the gold answer (--answer-column; dotted for nested, e.g. "
                               "reward_model.ground_truth); default: the first of answer, solution, ground_truth, "
                               "reward_model.ground_truth.")
    id_column: str = field("id", help="Column holding a unique id (default id; the row location when absent).")
    split: str = field("", help="Split of a datasets DatasetDict folder (default: train for training, test for "
                        "evaluation, else the only split).")


# ------------------------------------------------------------------------------------------ reading


def iter_jsonl(path: Path, text: str) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` of every non-blank line of a JSONL ``text`` read from ``path``; a line
    that is not a JSON object is an error naming it."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} line {lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path} line {lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); expected JSONL, JSON or "
                        "parquet") from None


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict]]:
    text = read_utf8(path)
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        for i, obj in enumerate(items):
            if not isinstance(obj, dict):
                raise DataError(f"{path} item {i}: expected a JSON object, got {type(obj).__name__}")
            yield f"{path} item {i}", obj
        return
    for lineno, obj in iter_jsonl(path, text):
        yield f"{path} line {lineno}", obj


def text_is_parquet(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == b"PAR1"


def _parquet_rows(path: Path) -> Iterator[tuple[str, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading parquet needs pyarrow (pip install 'forklens[parquet]')") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise DataError(f"{path}: not a readable parquet file ({exc})") from None
    for i, obj in enumerate(table.to_pylist()):
        yield f"{path} row {i}", obj


def _datasets_rows(path: Path, split: str, default_split: str) -> Iterator[tuple[str, dict]]:
    if not ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
        raise DataError(f"{path} is a directory but not a datasets save_to_disk folder (no dataset_info.json "
                        "or dataset_dict.json); give a .jsonl, .json or .parquet file or such a folder")
    try:
        import datasets
    except ImportError:
        raise DataError(f"{path}: reading a datasets folder needs the datasets package (pip install datasets)") from None
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds.keys())
        name = split or (default_split if default_split in ds else (names[0] if len(names) == 1 else ""))
        if name not in ds:
            raise DataError(f"{path}: the DatasetDict has splits {', '.join(names)}; choose one with "
                            f"--data-split NAME")
        ds, where = ds[name], f"{path} [{name}]"
    else:
        where = str(path)
    for i, obj in enumerate(ds):
        yield f"{where} row {i}", dict(obj)


def read_rows(path: str | Path, *, split: str = "", default_split: str = "train") -> list[tuple[str, dict]]:
    """``(location, row)`` for every row of a JSONL / JSON / parquet file or a datasets folder."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    if path.is_dir():
        rows = list(_datasets_rows(path, split, default_split))
    elif path.suffix == ".parquet" or text_is_parquet(path):
        rows = list(_parquet_rows(path))
    else:
        rows = list(_jsonl_rows(path))
    if not rows:
        raise DataError(f"data file {path} is empty: expected one row per line (JSONL) or a table with rows")
    return rows


# ------------------------------------------------------------------------------------------ rows -> problems


def lookup(row: dict, column: str) -> Any:
    """``row[column]``, following dots into nested objects (``reward_model.ground_truth``); None if absent."""
    value: Any = row
    for part in column.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def check_messages(value: Any, where: str, column: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: {column!r} must be a non-empty list of {{\"role\", \"content\"}} messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: {column}[{i}] must be an object with string \"role\" and \"content\", got {m!r}")
        if m["role"] not in ROLES:
            raise DataError(f"{where}: {column}[{i}] has role {m['role']!r}; expected one of {', '.join(sorted(ROLES))}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def completion_text(completion: Any) -> str:
    """The text of a completion: a string as is; chat messages (TRL's conversational completions) as the
    content of their assistant messages joined by newlines (every message when none is an assistant's)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict) and "content" in completion:
        return str(completion["content"])
    if isinstance(completion, (list, tuple)):
        msgs = [m for m in completion if isinstance(m, dict) and "content" in m]
        assistant = [m for m in msgs if m.get("role") == "assistant"] or msgs
        if msgs or not completion:
            return "\n".join(str(m["content"]) for m in assistant)
    raise TypeError(f"a completion must be a string or a list of chat messages, got {type(completion).__name__}")


def prompt_text(prompt: Any) -> str:
    """A prompt as plain text for display and checks: a string as is, chat messages as ``role: content`` lines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in prompt if isinstance(m, dict))


def _first_present(row: dict, names: Sequence[str]) -> str | None:
    return next((c for c in names if lookup(row, c) is not None), None)


def row_problem(where: str, row: dict, cols: DataColumns, index: int) -> Problem:
    """One row as a :class:`Problem`; ``meta`` keeps the expert completion (when the row has one) and
    the other columns (passed to rewards as TRL passes dataset columns)."""
    pcol = cols.prompt_column or _first_present(row, PROMPT_COLUMNS)
    if pcol is None or lookup(row, pcol) is None:
        want = repr(cols.prompt_column) if cols.prompt_column else " or ".join(map(repr, PROMPT_COLUMNS))
        raise DataError(f"{where}: no prompt column {want} (columns: {', '.join(map(str, row))})")
    raw = lookup(row, pcol)
    expert: str | None = None
    if pcol == "messages":
        msgs = check_messages(raw, where, pcol)
        last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
        if last is not None:
            expert = msgs[last]["content"]
            msgs = msgs[:last]
        if not msgs:
            raise DataError(f"{where}: 'messages' has no message before the assistant's reply")
        prompt: str | list = msgs
    elif isinstance(raw, str):
        prompt = raw
    elif isinstance(raw, list):
        prompt = check_messages(raw, where, pcol)
    else:
        raise DataError(f"{where}: {pcol!r} must be a string or a list of chat messages, got {type(raw).__name__}")
    if expert is None and row.get("completion") is not None:
        comp = row["completion"]
        expert = comp if isinstance(comp, str) else completion_text(check_messages(comp, where, "completion"))
    if expert is None and isinstance(row.get("response"), str):
        expert = row["response"]
    acol = cols.answer_column or _first_present(row, ANSWER_COLUMNS)
    if cols.answer_column and lookup(row, cols.answer_column) is None:
        raise DataError(f"{where}: no answer column {cols.answer_column!r} (columns: {', '.join(map(str, row))})")
    answer = lookup(row, acol) if acol else None
    if answer is not None and not isinstance(answer, (str, int, float)):
        raise DataError(f"{where}: the answer ({acol!r}) must be a string or a number, got {type(answer).__name__}")
    rid = lookup(row, cols.id_column) if cols.id_column else None
    if rid is not None and (isinstance(rid, bool) or not isinstance(rid, (str, int))):
        raise DataError(f"{where}: {cols.id_column!r} must be a string or an integer, got {rid!r}")
    meta = {k: v for k, v in row.items() if k not in (pcol, "completion")}
    meta.update({"expert": expert, "where": where})
    return Problem(id=str(rid) if rid is not None else f"row{index}", prompt=prompt,
                   answer=None if answer is None else str(answer), meta=meta)


class DatasetTask(BaseTask):
    """A task from your rows: the same problems for every split (give a separate file to evaluate on),
    verified by :func:`~forklens.tasks.answers.is_correct` against the answer column. Rewards get the
    rows' other columns as keyword arguments, as in TRL (``dataset_columns``)."""

    dataset_columns = True

    def __init__(self, problems: list[Problem], name: str = "data", source: str = ""):
        if not problems:
            raise DataError(f"{source or name}: no problems")
        seen: dict[str, str] = {}
        for p in problems:
            if p.id in seen:
                raise DataError(f"{p.meta.get('where', source)}: duplicate id {p.id!r} (first at {seen[p.id]})")
            seen[p.id] = p.meta.get("where", "")
        self.name = name
        self.source = source
        self._problems = problems
        self.alphabet = ""

    def problems(self, split: str) -> list[Problem]:
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
        return self._problems

    def verify(self, problem: Problem, completion) -> float:
        if problem.answer is None:
            raise DataError(f"{problem.meta.get('where', problem.id)}: no answer to verify against; add an answer "
                            "column or pass --reward module:function")
        return float(is_correct(problem.answer, completion_text(completion)))

    def expert_response(self, problem: Problem) -> str:
        if problem.meta.get("expert") is None:
            raise DataError(f"{problem.meta.get('where', problem.id)}: no expert completion (a 'completion', "
                            "'response' or final assistant message) for SFT")
        return problem.meta["expert"]

    def teacher_example(self, rng) -> tuple:
        p = self._problems[rng.randrange(len(self._problems))]
        return p.prompt, self.expert_response(p)


def load_dataset_task(path: str | Path, columns: DataColumns | None = None, *, default_split: str = "train",
                      require_answer: bool = False) -> DatasetTask:
    """Read ``path`` (see the module docstring) as a :class:`DatasetTask`."""
    cols = columns or DataColumns()
    rows = read_rows(path, split=cols.split, default_split=default_split)
    problems = [row_problem(where, row, cols, i) for i, (where, row) in enumerate(rows)]
    if require_answer:
        missing = [p for p in problems if p.answer is None]
        if missing:
            raise DataError(f"{missing[0].meta['where']}: no answer column ({' or '.join(ANSWER_COLUMNS)}); "
                            f"{len(missing)} of {len(problems)} rows have none. Name it with --answer-column "
                            "COLUMN or pass --reward module:function")
    return DatasetTask(problems, name=Path(path).stem, source=str(path))
