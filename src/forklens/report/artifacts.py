"""Committed result artifacts: what every number in README and docs/results.md is rendered from.

An artifact is a folder ``results/<name>/`` in the repository:

- ``artifact.json``: ``{"stamp": {...}, "summary": {...}}``, the machine-readable truth;
- ``metrics/<run>.json``: per-step metrics of each run, a JSON array with one step per line (optional);
- ``plots/<stem>.png`` / ``.svg`` (optional).

The stamp says what produced the numbers: git commit of the forklens source that ran (and whether its
tracked files outside ``results/`` had uncommitted changes), UTC timestamp, hardware (CPU model, cores,
memory, GPU), Python / torch / transformers / forklens versions, the seeds and the exact command line.
:func:`load_artifact` refuses an artifact whose stamp is missing or malformed, naming the file and key.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from forklens.errors import DataError

SCHEMA = 1
ARTIFACT_FILE = "artifact.json"
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
STAMP_KEYS: dict[str, type | tuple[type, ...]] = {
    "schema": int, "name": str, "commit": str, "dirty": bool, "timestamp": str, "command": str,
    "seeds": list, "hardware": dict, "versions": dict,
}
HARDWARE_KEYS = ("cpu_model", "cpu_cores", "memory_gib", "gpu")
VERSION_KEYS = ("python", "torch", "transformers", "forklens")


class ArtifactError(DataError):
    """An artifact file that is missing, malformed or lacks a valid stamp."""


def source_root() -> Path:
    """The directory of the forklens source that is running (its git work tree holds the commit)."""
    return Path(__file__).resolve().parents[1]


def git_state(where: Path | None = None) -> tuple[str, bool]:
    """(commit, dirty) of the git work tree holding ``where`` (default: the running forklens source).

    ``dirty`` is True when tracked files outside ``results/`` differ from the commit (artifacts being
    rewritten do not make a run dirty). Outside a git work tree: ``("unknown", True)``."""
    where = where or source_root()
    try:
        top = subprocess.run(["git", "-C", str(where), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, check=True).stdout.strip()
        commit = subprocess.run(["git", "-C", top, "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        status = subprocess.run(["git", "-C", top, "status", "--porcelain", "--untracked-files=no", "--", ".",
                                 ":(exclude)results"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown", True
    return commit, bool(status.strip())


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def hardware() -> dict[str, Any]:
    """CPU model and cores, memory, and the GPU (name and memory) if torch sees one."""
    gpu = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = {"name": props.name, "count": torch.cuda.device_count(),
               "memory_gib": round(props.total_memory / 2**30, 1)}
    return {"cpu_model": _cpu_model(), "cpu_cores": os.cpu_count(), "memory_gib": _memory_gib(), "gpu": gpu,
            "platform": platform.platform()}


def versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("torch", "transformers", "forklens"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["torch"] = torch.__version__  # the imported module wins over installed metadata (an editable install)
    return out


def command_line(argv: Sequence[str] | None = None) -> str:
    """The exact command as a shell-quoted string (default: this process's ``sys.argv``)."""
    argv = list(sys.argv if argv is None else argv)
    if argv and argv[0].endswith(("forklens/cli.py", "forklens/__main__.py")):
        argv = ["python", "-m", "forklens.cli", *argv[1:]]
    return shlex.join(argv)


def make_stamp(name: str, seeds: Iterable[int], command: str | None = None,
               now: datetime | None = None) -> dict[str, Any]:
    """The provenance stamp of an artifact produced now by this process."""
    commit, dirty = git_state()
    now = now or datetime.now(timezone.utc)
    return {"schema": SCHEMA, "name": name, "commit": commit, "dirty": dirty,
            "timestamp": now.astimezone(timezone.utc).isoformat(timespec="seconds"),
            "command": command if command is not None else command_line(), "seeds": [int(s) for s in seeds],
            "hardware": hardware(), "versions": versions()}


def validate_stamp(stamp: Any, where: str) -> dict[str, Any]:
    """Check a stamp's keys and types; raise :class:`ArtifactError` naming ``where`` and the key."""
    if not isinstance(stamp, dict):
        raise ArtifactError(f"{where}: 'stamp' must be an object, got {type(stamp).__name__}")
    for key, kind in STAMP_KEYS.items():
        if key not in stamp:
            raise ArtifactError(f"{where}: stamp lacks {key!r} (expected keys: {', '.join(STAMP_KEYS)})")
        if not isinstance(stamp[key], kind) or (kind is int and isinstance(stamp[key], bool)):
            raise ArtifactError(f"{where}: stamp[{key!r}] must be {getattr(kind, '__name__', kind)}, "
                                f"got {stamp[key]!r}")
    if stamp["schema"] != SCHEMA:
        raise ArtifactError(f"{where}: stamp schema {stamp['schema']} is not the supported {SCHEMA}")
    if not _HEX40.match(stamp["commit"]):
        raise ArtifactError(f"{where}: stamp['commit'] must be a 40-hex git commit, got {stamp['commit']!r}")
    try:
        when = datetime.fromisoformat(stamp["timestamp"])
    except ValueError:
        raise ArtifactError(f"{where}: stamp['timestamp'] is not an ISO 8601 time: {stamp['timestamp']!r}") from None
    if when.utcoffset() is None or when.utcoffset().total_seconds() != 0:
        raise ArtifactError(f"{where}: stamp['timestamp'] must be in UTC (+00:00), got {stamp['timestamp']!r}")
    if not stamp["command"].strip():
        raise ArtifactError(f"{where}: stamp['command'] is empty")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in stamp["seeds"]):
        raise ArtifactError(f"{where}: stamp['seeds'] must be a list of integers, got {stamp['seeds']!r}")
    for key in HARDWARE_KEYS:
        if key not in stamp["hardware"]:
            raise ArtifactError(f"{where}: stamp['hardware'] lacks {key!r}")
    for key in VERSION_KEYS:
        if key not in stamp["versions"]:
            raise ArtifactError(f"{where}: stamp['versions'] lacks {key!r}")
    return stamp


@dataclass
class Artifact:
    """A loaded artifact: its folder, stamp and summary."""

    path: Path
    stamp: dict[str, Any]
    summary: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.stamp["name"]

    def metrics(self, run: str) -> list[dict[str, Any]]:
        return read_metrics(self.path / "metrics" / f"{run}.json")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """An artifact's per-step metrics file: a JSON array of objects, one step per line."""
    try:
        rows = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ArtifactError(f"{path}: expected a JSON array of objects (one per step)")
    return rows


def _safe_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ArtifactError(f"artifact name {name!r}: use letters, digits, '.', '_' and '-' only")
    return name


def write_artifact(root: str | Path, name: str, summary: Mapping[str, Any], *, seeds: Iterable[int],
                   command: str | None = None, metrics: Mapping[str, Iterable[Mapping[str, Any]]] | None = None,
                   stamp: Mapping[str, Any] | None = None) -> Path:
    """Write ``root/name/artifact.json`` (stamped now unless ``stamp`` is given) and per-run metrics.

    Returns the artifact folder. Plots go to :func:`plots_dir` of the folder."""
    folder = Path(root) / _safe_name(name)
    stamp = dict(stamp) if stamp is not None else make_stamp(name, seeds, command)
    validate_stamp(stamp, str(folder / ARTIFACT_FILE))
    folder.mkdir(parents=True, exist_ok=True)
    for run, rows in (metrics or {}).items():
        mdir = folder / "metrics"
        mdir.mkdir(exist_ok=True)
        lines = ",\n".join(json.dumps(dict(r), sort_keys=True) for r in rows)
        (mdir / f"{_safe_name(run)}.json").write_text(f"[\n{lines}\n]\n", encoding="utf-8")
    payload = {"stamp": stamp, "summary": dict(summary)}
    tmp = folder / (ARTIFACT_FILE + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(folder / ARTIFACT_FILE)
    return folder


def plots_dir(folder: str | Path) -> Path:
    path = Path(folder) / "plots"
    path.mkdir(parents=True, exist_ok=True)
    return path


def finish_run(summary: dict[str, Any], out: Path, plot, stem: str, artifact: str, *, seeds: Iterable[int],
               stamp: Mapping[str, Any] | None, metrics: Mapping[str, Iterable[Mapping[str, Any]]]) -> Path | None:
    """The end of an experiment run: ``plot(summary, out / stem)`` (returns the figure paths), the figures
    named in ``out/summary.json``, and, when ``artifact`` is set, the stamped artifact folder with the same
    plot under its ``plots/`` (returned)."""
    figs = plot(summary, out / stem)
    summary["figures"] = [str(f) for f in figs]
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if not artifact:
        return None
    art = {**summary, "figures": [f"plots/{Path(f).name}" for f in figs]}
    folder = write_artifact(Path(artifact).parent, Path(artifact).name, art, seeds=seeds, stamp=stamp, metrics=metrics)
    plot(summary, plots_dir(folder) / stem)
    return folder


def load_artifact(path: str | Path) -> Artifact:
    """Load ``path`` (an artifact folder or its ``artifact.json``) and validate its stamp."""
    path = Path(path)
    file = path / ARTIFACT_FILE if path.is_dir() else path
    if not file.is_file():
        raise ArtifactError(f"{file}: no such artifact (expected results/<name>/{ARTIFACT_FILE})")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{file}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict) or "stamp" not in data or "summary" not in data:
        raise ArtifactError(f"{file}: expected an object with 'stamp' and 'summary'")
    stamp = validate_stamp(data["stamp"], str(file))
    if not isinstance(data["summary"], dict):
        raise ArtifactError(f"{file}: 'summary' must be an object")
    extra = {k: v for k, v in data.items() if k not in ("stamp", "summary")}
    return Artifact(path=file.parent, stamp=stamp, summary=data["summary"], extra=extra)


def lookup(data: Any, dotted: str, where: str = "artifact") -> Any:
    """``data["a"]["b"][0]`` for ``"a.b.0"``; keys may contain dots when quoted as ``a.[b.c].d``."""
    parts = re.findall(r"\[([^\]]+)\]|([^.\[\]]+)", dotted)
    cur = data
    walked = []
    for bracketed, plain in parts:
        key = bracketed or plain
        walked.append(key)
        if isinstance(cur, list) and key.lstrip("-").isdigit():
            idx = int(key)
            if not -len(cur) <= idx < len(cur):
                raise ArtifactError(f"{where}: index {'.'.join(walked)} out of range")
            cur = cur[idx]
        elif isinstance(cur, dict) and key in cur:
            cur = cur[key]
        else:
            have = ", ".join(sorted(map(str, cur))[:12]) if isinstance(cur, dict) else type(cur).__name__
            raise ArtifactError(f"{where}: no field {'.'.join(walked)!r} (there: {have})")
    return cur
