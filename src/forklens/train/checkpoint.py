"""Atomic checkpoints and exact resume.

A checkpoint is a directory ``step-NNNNNN`` holding the model (``save_pretrained``), the tokenizer,
``trainer_state.pt`` (optimizer, scheduler, every RNG state, the data source's state) and
``trainer_state.json`` (step, FLOPs, how many metric lines were logged). It is written under a
temporary name ``.tmp-step-NNNNNN-PID``, fsynced and renamed into place, and the ``latest`` pointer is
replaced atomically after that, so a crash at any moment leaves either the old checkpoint or the new
one, never half of one. Temporary folders left by a crash are removed at the next save or resume.

``trainer_state.pt`` holds tensors, numbers, strings and lists only (RNG states as tensors or JSON-like
lists), so it loads with ``torch.load(..., weights_only=True)``: resuming from someone else's run folder
cannot execute code. When the newest checkpoint is unreadable (a truncated file, broken JSON),
:func:`read_latest_intact` falls back to the previous intact one and says what was wrong.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from forklens.errors import ForklensError

POINTER = "latest"
STEP_DIR = re.compile(r"step-\d{6,}")
TMP_DIR = re.compile(r"\.tmp-step-\d{6,}-\d+")


class CheckpointError(ForklensError):
    """No usable checkpoint: every one is corrupt, or they do not fit the model being trained."""


class CorruptCheckpoint(Exception):
    """One checkpoint cannot be read; the message names the file and what was wrong."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def torch_save_atomic(obj, path: Path) -> None:
    """``torch.save`` to a temporary sibling, fsync, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, str(tmp))
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


# --- RNG states, as tensors and plain lists (loadable with weights_only=True) ---------------------

def rng_state() -> dict:
    """Every RNG the training loop may draw from: torch CPU, CUDA (when initialised), python, numpy."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "python": [version, list(internal), gauss],
             "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), int(n["pos"]), int(n["has_gauss"]),
                         float(n["cached_gaussian"])))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- writing ---------------------------------------------------------------------------------------

def remove_stale_tmp(root: Path) -> list[str]:
    """Remove ``.tmp-step-*`` folders a crashed save left in ``root`` (only that exact name pattern);
    returns their names."""
    removed = []
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and TMP_DIR.fullmatch(p.name):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
    return removed


def clear_checkpoints(root: Path) -> None:
    """Remove the checkpoints of an earlier run (``step-*`` folders, temporaries, the pointer) and
    nothing else, so a fresh start never leaves old checkpoints beside new ones."""
    if not root.is_dir():
        return
    remove_stale_tmp(root)
    for p in root.iterdir():
        if p.is_dir() and STEP_DIR.fullmatch(p.name):
            shutil.rmtree(p)
    if (root / POINTER).is_file():
        (root / POINTER).unlink()


def save_checkpoint(root: Path, step: int, model, tokenizer, optimizer, scheduler, state: dict,
                    keep: int = 2, source_state: dict | None = None, model_state: dict | None = None,
                    optimizer_state: dict | None = None) -> Path:
    """Write ``step-NNNNNN`` atomically (temporary folder, fsync, rename, then the pointer). Under FSDP
    the caller passes the gathered ``model_state`` / ``optimizer_state``."""
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(root)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    tmp.mkdir()
    model.save_pretrained(str(tmp), safe_serialization=True, state_dict=model_state)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp))
    torch.save({"optimizer": optimizer_state if optimizer_state is not None else optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": rng_state(),
                "source": source_state}, str(tmp / "trainer_state.pt"))
    (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
    for f in tmp.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(tmp)
    if final.exists():  # an unreadable checkpoint of this step that resume fell back from
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    write_text_atomic(root / POINTER, final.name)
    # prune older checkpoints, never the one just written
    done = sorted((p for p in root.iterdir() if p.is_dir() and STEP_DIR.fullmatch(p.name)), key=_step_of)
    for old in done[:-keep] if keep > 0 else []:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


# --- reading ---------------------------------------------------------------------------------------

def _step_of(path: Path) -> int:
    return int(path.name.split("-")[1])


def checkpoint_dirs(root: Path) -> list[Path]:
    """Every ``step-NNNNNN`` folder in ``root``, newest first."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and STEP_DIR.fullmatch(p.name)), key=_step_of,
                  reverse=True)


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete-looking checkpoint: the highest step directory with a ``trainer_state.json``
    (folders appear only by an atomic rename, so the ``latest`` pointer, written after it, may lag behind
    by one after a crash; it is for people and tools). :func:`read_latest_intact` also reads it whole."""
    done = [p for p in checkpoint_dirs(root) if (p / "trainer_state.json").is_file()]
    return done[0] if done else None


def read_weights(ckpt: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(ckpt.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in checkpoint {ckpt}")
    state = {}
    for f in files:
        try:
            state.update(load_file(str(f)))
        except Exception as exc:  # safetensors raises its own error type for truncated files
            raise CorruptCheckpoint(f"{f.name}: {type(exc).__name__}: {exc}") from exc
    return state


@dataclass
class LoadedCheckpoint:
    path: Path
    weights: dict
    blob: dict  # trainer_state.pt: optimizer, scheduler, rng, source
    state: dict  # trainer_state.json: step, flops, wall_s, metric_lines, ...
    skipped: list[str] = field(default_factory=list)  # "step-000004: what was wrong" for newer, unusable ones


STATE_KEYS = {"step": int, "flops": (int, float), "wall_s": (int, float), "metric_lines": int}


def read_checkpoint(ckpt: Path) -> LoadedCheckpoint:
    """Read and check every file of one checkpoint; raises :class:`CorruptCheckpoint` naming the file."""
    path = ckpt / "trainer_state.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CorruptCheckpoint(f"{path.name}: {type(exc).__name__}: {exc}") from exc
    for key, kind in STATE_KEYS.items():
        if not isinstance(state, dict) or not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            raise CorruptCheckpoint(f"{path.name}: expected a number under {key!r}")
    try:
        weights = read_weights(ckpt)
    except FileNotFoundError as exc:
        raise CorruptCheckpoint(f"model weights missing: {exc}") from exc
    path = ckpt / "trainer_state.pt"
    try:
        blob = torch.load(str(path), weights_only=True)
    except Exception as exc:  # truncated zip (RuntimeError), pickled objects refused (UnpicklingError), ...
        raise CorruptCheckpoint(f"{path.name}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    missing = {"optimizer", "scheduler", "rng"} - set(blob if isinstance(blob, dict) else ())
    if missing:
        raise CorruptCheckpoint(f"{path.name}: missing {sorted(missing)}")
    return LoadedCheckpoint(ckpt, weights, blob, state)


def read_latest_intact(root: Path) -> LoadedCheckpoint | None:
    """The newest checkpoint in ``root`` that reads completely; newer unreadable ones are listed in
    ``skipped``. ``None`` when there is no checkpoint at all; :class:`CheckpointError` when there are
    checkpoints but none is intact."""
    skipped = []
    for ckpt in checkpoint_dirs(root):
        try:
            loaded = read_checkpoint(ckpt)
        except CorruptCheckpoint as exc:
            skipped.append(f"{ckpt.name}: {exc}")
            continue
        loaded.skipped = skipped
        return loaded
    if skipped:
        raise CheckpointError(f"no intact checkpoint in {root} to resume from: " + "; ".join(skipped)
                              + ". Start again without --resume (with --overwrite) or restore a checkpoint.")
    return None


def load_weights(model, ckpt: Path, state: dict | None = None) -> None:
    """Load the checkpoint's weights (``state`` when already read) into ``model``; a checkpoint of a
    different architecture is a :class:`CheckpointError`."""
    state = read_weights(ckpt) if state is None else state
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # size mismatch
        first = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln][:2]
        raise CheckpointError(f"checkpoint {ckpt} was written for a different model: "
                              f"{'; '.join(first) or str(exc).splitlines()[0]}. Resume with the model the run "
                              "was started with, or start a new run.") from None
    # tied weights are saved once; anything else missing is an error
    tied = {k for k in missing if k.endswith("lm_head.weight") or "embed" in k}
    bad = [k for k in missing if k not in tied]
    if bad or unexpected:
        raise CheckpointError(f"checkpoint {ckpt} does not match the model: missing {bad[:5]}, unexpected "
                              f"{unexpected[:5]}. Resume with the model the run was started with.")


def load_training_state(loaded: LoadedCheckpoint, optimizer, scheduler, source=None, load_optimizer=None) -> dict:
    """Restore optimizer (through ``load_optimizer(state)`` when given: FSDP), scheduler, every RNG and
    (for stateful data sources) the source's state from a checkpoint read by :func:`read_checkpoint`."""
    blob = loaded.blob
    try:
        if load_optimizer is not None:
            load_optimizer(blob["optimizer"])
        else:
            optimizer.load_state_dict(blob["optimizer"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {loaded.path}: the optimizer state does not fit this model "
                              f"({exc})") from None
    scheduler.load_state_dict(blob["scheduler"])
    set_rng_state(blob["rng"])
    if source is not None and hasattr(source, "load_state_dict"):
        if blob.get("source") is None and hasattr(source, "state_dict"):
            raise CheckpointError(f"checkpoint {loaded.path} holds no state for the stateful data source "
                                  f"{type(source).__name__}; it was written by a different run")
        if blob.get("source") is not None:
            source.load_state_dict(blob["source"])
    return loaded.state
