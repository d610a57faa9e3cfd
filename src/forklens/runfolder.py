"""Output folders that never lose a user's file.

Every command that writes an ``--out`` folder calls :func:`prepare_run_folder` first. A folder forklens
writes holds a small marker, ``.forklens-run.json``, naming the kind of run (``train-sft``, ``demo``,
...), the entries that were there before forklens wrote into it (``foreign``: never deleted) and the
entries the run wrote (``written``, recorded when the command ends, also when it fails). The rules:

- ``.``, ``~``, ``/``, the working directory or any folder above it is always refused, and so is an
  ``--out`` that is an existing file;
- a new or empty folder is used as it is;
- a non-empty folder that is not this command's kind of run (no marker, or another kind) is refused,
  unless ``--overwrite``;
- a folder that already holds this kind of run is refused too (logs and checkpoints of two runs would
  mix), unless ``--resume`` (commands that have it: continue the run) or ``--overwrite``;
- ``--overwrite`` removes only what forklens wrote there (the marker's ``written`` list, or for a run
  that was killed before it could record that, the names forklens run folders use:
  :data:`FORKLENS_NAMES`) and keeps every other file (they are added to ``foreign``).

Library code removes folders only through :func:`owned_rmtree`, which refuses anything the marker
of the enclosing run folder lists as foreign or that lies outside a forklens folder.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from pathlib import Path

from forklens.errors import ForklensError

MARKER = ".forklens-run.json"
# what forklens writes into run folders, for runs killed before they recorded their ``written`` list
FORKLENS_NAMES = ("checkpoints", "metrics.jsonl", "model", "models", "tensorboard", "fork_data.pt", "data.json",
                  "summary.json", "report.html", "report.md", "diff.html", "responses.jsonl", "samples*.jsonl",
                  "tokens.jsonl", "tokens.parquet", "per_problem.jsonl", "probe.json", "eval_*.json", "table.md",
                  "predictions*.json", "*.png", "*.svg", "base", "rl", "rl_train", "*_train", "train", "diff",
                  "trajectories", "seed*", "arith*", "agent*", "pass_at_k*", "accuracy_vs_flops*", ".*tmp*",
                  ".*-staging", ".*-pretrain", "organism.json", "pretrain_metrics.jsonl", "config.json",
                  "generation_config.json", "model.safetensors", "tokenizer*.json", "special_tokens_map.json",
                  "trainer_state.*")


class OutputError(ForklensError):
    """An output folder that forklens must not write into (or must not delete)."""


def _refuse_below_file(path: Path, raw: str, flag: str) -> None:
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{flag} {raw!r} lies below {str(parent)!r}, which is a file, not a folder")
            return


def check_out_path(out: str | os.PathLike, flag: str = "--out") -> Path:
    """``out`` as a Path, refusing places no run may write into: empty, ``.``/``~``/``/``, the working
    directory or any of its parents, an existing file, or a path below a file."""
    raw = str(out)
    if not raw.strip():
        raise OutputError(f"{flag} is empty; name a folder for the run, e.g. {flag} runs/NAME")
    path = Path(raw).expanduser()
    resolved = path.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise OutputError(f"{flag} {raw!r} is the working directory or a folder above it; forklens writes into a "
                          f"folder of its own: name one, e.g. {flag} runs/NAME")
    if resolved == Path.home().resolve() or resolved == Path(resolved.anchor):
        raise OutputError(f"{flag} {raw!r} is your home or the root folder; name a folder of its own, "
                          f"e.g. {flag} runs/NAME")
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {raw!r} is an existing file, not a folder; name a folder for the run")
    _refuse_below_file(path, raw, flag)
    return path


def check_out_file(out: str | os.PathLike, overwrite: bool = False, flag: str = "--out") -> Path:
    """A file path to write a result to: never a folder, never below a file, and an existing file only
    with ``--overwrite``."""
    raw = str(out)
    if not raw.strip():
        raise OutputError(f"{flag} is empty; name a file, e.g. {flag} runs/eval.json")
    path = Path(raw).expanduser()
    if path.is_dir():
        raise OutputError(f"{flag} {raw!r} is a folder; name a file to write, e.g. {flag} {raw.rstrip('/')}/eval.json")
    _refuse_below_file(path, raw, flag)
    if path.exists() and not overwrite:
        raise OutputError(f"{flag} {raw!r} exists; pass --overwrite to replace it, or name a new file")
    return path


def read_marker(folder: Path) -> dict | None:
    """The folder's marker, ``None`` when it has none; a marker that is not ours is an error."""
    path = folder / MARKER
    if not path.exists():
        return None
    try:
        marker = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise OutputError(f"{path}: unreadable forklens marker ({type(exc).__name__}: {exc}); the folder's owner "
                          "is unknown, so nothing is written or deleted there: choose another --out") from None
    if not (isinstance(marker, dict) and isinstance(marker.get("kind"), str)
            and all(isinstance(marker.get(k, []), list) for k in ("foreign", "written"))):
        raise OutputError(f"{path}: not a forklens marker (expected an object with \"kind\", \"foreign\", "
                          "\"written\"); choose another --out")
    return marker


def write_marker(folder: Path, marker: dict) -> None:
    from forklens import __version__

    marker = {**marker, "forklens_version": __version__}
    tmp = folder / f".{MARKER}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(marker, indent=2, sort_keys=True))
    os.replace(tmp, folder / MARKER)


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != MARKER)


def _is_forklens_name(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pat) for pat in FORKLENS_NAMES)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _shown(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _refuse_clashes(out, foreign: list[str]) -> None:
    """--overwrite keeps files forklens did not write; one named like a forklens output would be
    overwritten by the run, so it is refused instead."""
    clash = [e for e in foreign if _is_forklens_name(e)]
    if clash:
        raise OutputError(f"--out {str(out)!r} holds {_shown(clash)}, which forklens did not write but a run may write "
                          "under the same name; move it away or choose another --out (nothing was changed)")


def prepare_run_folder(out: str | os.PathLike, kind: str, *, resume: bool = False, overwrite: bool = False,
                       resumable: bool = False, inputs: list[str | os.PathLike] = ()) -> Path:
    """Check ``out`` against the rules of this module, clean it for ``--overwrite`` and mark it as a run
    of ``kind``. Returns the folder (created). ``inputs`` (the command's input files and folders) are
    never removed, even where forklens wrote them (``--model runs/x/model --out runs/x --overwrite``)."""
    path = check_out_path(out)
    if resume and overwrite:
        raise OutputError("--resume and --overwrite contradict each other: --resume continues the run in --out, "
                          "--overwrite replaces it; pass one")
    if not path.exists():
        path.mkdir(parents=True)
        write_marker(path, {"kind": kind, "foreign": [], "written": [], "finished": False})
        return path
    marker = read_marker(path)
    entries = _entries(path)
    if marker is None:
        if not entries:
            write_marker(path, {"kind": kind, "foreign": [], "written": [], "finished": False})
            return path
        if resume and (path / "checkpoints").is_dir():  # a run written before folders were marked
            foreign = [e for e in entries if not _is_forklens_name(e)]
            write_marker(path, {"kind": kind, "foreign": foreign, "written": [], "finished": False})
            return path
        if not overwrite:
            what = "nothing to resume there" if resume else "it holds " + _shown(entries)
            raise OutputError(f"--out {str(out)!r} is not empty and is not a forklens run of kind {kind} ({what}); choose a new "
                              "or empty folder, or pass --overwrite to write beside these files (they are kept)")
        _refuse_clashes(out, entries)
        write_marker(path, {"kind": kind, "foreign": entries, "written": [], "finished": False})
        return path
    ours = [e for e in entries if e not in marker.get("foreign", [])]
    if marker["kind"] != kind:
        if not overwrite:
            raise OutputError(f"--out {str(out)!r} holds a forklens run of kind {marker['kind']}, not {kind}; choose "
                              "another folder, or pass --overwrite to replace what that run wrote")
    elif resume:
        return path
    elif ours and not overwrite:
        hint = "--resume to continue it or --overwrite" if resumable else "--overwrite"
        raise OutputError(f"--out {str(out)!r} already holds a run of kind {kind} ({_shown(ours)}); pass {hint} to replace "
                          "it, or choose a new folder")
    # --overwrite (or an empty run of this kind): remove what forklens wrote, keep the rest
    written = set(marker.get("written", []))
    known = written if marker.get("finished") else written | {e for e in ours if _is_forklens_name(e)}
    kept = [e for e in ours if e not in known]
    _refuse_clashes(out, kept)
    needed = [Path(p).resolve() for p in inputs]
    for name in ours:
        entry = (path / name).resolve()
        if name in known and not any(p == entry or entry in p.parents for p in needed):
            _remove(path / name)
    write_marker(path, {"kind": kind, "foreign": sorted(set(marker.get("foreign", [])) | set(kept)),
                        "written": [], "finished": False})
    return path


def record_written(folder: str | os.PathLike, finished: bool = True) -> None:
    """Record in the marker what the run wrote (every entry that is not foreign)."""
    folder = Path(folder)
    try:
        marker = read_marker(folder)
    except OutputError:
        return
    if marker is None:
        return
    foreign = set(marker.get("foreign", []))
    written = sorted(set(marker.get("written", [])) | {e for e in _entries(folder) if e not in foreign})
    write_marker(folder, {**marker, "written": written, "finished": finished})


def claim_folder(folder: str | os.PathLike, kind: str) -> Path:
    """Library entry points that write a folder call this: create and mark it when unmarked, listing
    what was already there as foreign (never deleted). A marked folder is left as it is."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if read_marker(folder) is None:
        write_marker(folder, {"kind": kind, "foreign": _entries(folder), "written": [], "finished": False})
    return folder


def owned_rmtree(path: str | os.PathLike) -> None:
    """Remove ``path`` (a folder or file forklens wrote); a no-op when it does not exist. Refused
    (:class:`OutputError`) when ``path`` is listed as foreign by the enclosing run folder's marker, or is
    not inside a marked folder at all (except forklens' own hidden temporaries, ``.NAME-staging`` etc.)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    resolved = path.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise OutputError(f"refusing to delete {str(path)!r}: it is the working directory or a folder above it")
    for top in [resolved, *resolved.parents]:
        marker = read_marker(top) if top.is_dir() else None
        if marker is None:
            continue
        if top == resolved:
            break  # a marked folder is forklens's own
        first = resolved.relative_to(top).parts[0]
        if first in marker.get("foreign", []):
            raise OutputError(f"refusing to delete {str(path)!r}: it was in {str(top)!r} before forklens wrote "
                              "there; move it away or choose another --out")
        break
    else:
        if not (path.name.startswith(".") and _is_forklens_name(path.name)):
            raise OutputError(f"refusing to delete {str(path)!r}: it is not in a folder forklens marked as its own")
    _remove(path)


def install_folder(src: str | os.PathLike, dst: str | os.PathLike, kind: str) -> Path:
    """Move the finished folder ``src`` (a staging copy) to ``dst``: a rename when ``dst`` is new or
    empty; else entry by entry, replacing only entries forklens wrote and keeping every other file. An
    entry of ``src`` whose name ``dst`` lists as foreign (a user's file) is an :class:`OutputError`."""
    src, dst = Path(src), Path(dst)
    if not dst.exists() or (dst.is_dir() and not any(dst.iterdir())):
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists():
            dst.rmdir()
        os.replace(src, dst)
        if read_marker(dst) is None:
            write_marker(dst, {"kind": kind, "foreign": [], "written": _entries(dst), "finished": True})
        return dst
    claim_folder(dst, kind)
    marker = read_marker(dst)
    foreign = set(marker.get("foreign", []))
    clash = [e for e in _entries(src) if e in foreign]
    if clash:
        shutil.rmtree(src)
        raise OutputError(f"{str(dst)!r} holds {_shown(clash)}, which forklens did not write and would have to "
                          "replace; move it away or choose another --out")
    for name in _entries(src):
        if (dst / name).exists() or (dst / name).is_symlink():
            _remove(dst / name)
        os.replace(src / name, dst / name)
    shutil.rmtree(src)
    written = sorted(set(marker.get("written", [])) | {e for e in _entries(dst) if e not in foreign})
    write_marker(dst, {**marker, "written": written, "finished": True})
    return dst


_PREPARED: list[Path] = []


def prepare_out(out, kind: str, *, resume: bool = False, overwrite: bool = False, resumable: bool = False,
                inputs: list[str | os.PathLike] = ()) -> Path:
    """:func:`prepare_run_folder` for a command; the folder's ``written`` list is recorded when the
    command ends (:func:`record_prepared`, called by the CLI)."""
    path = prepare_run_folder(out, kind, resume=resume, overwrite=overwrite, resumable=resumable, inputs=inputs)
    _PREPARED.append(path)
    return path


def record_prepared(finished: bool) -> None:
    while _PREPARED:
        path = _PREPARED.pop()
        if path.is_dir():
            record_written(path, finished=finished)
