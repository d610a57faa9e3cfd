"""Atomic checkpoints and exact resume.

A checkpoint is a directory ``step-NNNNNN`` holding the model (``save_pretrained``), the tokenizer,
``trainer_state.pt`` (optimizer, scheduler, RNG states) and ``trainer_state.json`` (step, FLOPs, how
many metric lines were logged). It is written under a temporary name and renamed into place, and the
``latest`` pointer is replaced atomically after that, so a crash at any moment leaves either the old
checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

POINTER = "latest"


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


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def save_checkpoint(root: Path, step: int, model, tokenizer, optimizer, scheduler, state: dict,
                    keep: int = 2, source_state: dict | None = None, model_state: dict | None = None,
                    optimizer_state: dict | None = None) -> Path:
    """Write ``step-NNNNNN`` atomically (temporary folder, fsync, rename, then the pointer). Under FSDP
    the caller passes the gathered ``model_state`` / ``optimizer_state``."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    model.save_pretrained(str(tmp), safe_serialization=True, state_dict=model_state)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp))
    torch.save({"optimizer": optimizer_state if optimizer_state is not None else optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": rng_state(),
                "source": source_state}, str(tmp / "trainer_state.pt"))
    (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    write_text_atomic(root / POINTER, final.name)
    # prune older checkpoints, never the one just written
    done = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in done[:-keep] if keep > 0 else []:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint (the pointer's target, else the highest step directory)."""
    pointer = root / POINTER
    if pointer.is_file():
        target = root / pointer.read_text().strip()
        if (target / "trainer_state.json").is_file():
            return target
    done = sorted(p for p in root.glob("step-*") if (p / "trainer_state.json").is_file())
    return done[-1] if done else None


def read_weights(ckpt: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(ckpt.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in checkpoint {ckpt}")
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def load_weights(model, ckpt: Path) -> None:
    state = read_weights(ckpt)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # tied weights are saved once; anything else missing is an error
    tied = {k for k in missing if k.endswith("lm_head.weight") or "embed" in k}
    bad = [k for k in missing if k not in tied]
    if bad or unexpected:
        raise RuntimeError(f"checkpoint {ckpt} does not match the model: missing {bad[:5]}, unexpected {unexpected[:5]}")


def load_training_state(ckpt: Path, optimizer, scheduler, source=None, load_optimizer=None) -> dict:
    """Restore optimizer (through ``load_optimizer(state)`` when given: FSDP), scheduler, RNG and (for
    stateful data sources) the source's state."""
    blob = torch.load(str(ckpt / "trainer_state.pt"), weights_only=False)
    if load_optimizer is not None:
        load_optimizer(blob["optimizer"])
    else:
        optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    set_rng_state(blob["rng"])
    if source is not None and hasattr(source, "load_state_dict") and blob.get("source") is not None:
        source.load_state_dict(blob["source"])
    return json.loads((ckpt / "trainer_state.json").read_text())
