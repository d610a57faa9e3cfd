"""Distributed helpers: the one place that asks torch.distributed about ranks.

Everything here works unchanged in a single process (no process group): ``world_size()`` is then the
launcher's ``WORLD_SIZE`` (1 when not launched), reductions are identities and ``barrier`` returns.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as torch_dist


def group():
    """``torch.distributed`` when a process group is initialised, else None."""
    return torch_dist if torch_dist.is_available() and torch_dist.is_initialized() else None


def world_size() -> int:
    """Processes in this run: from torch.distributed when initialised, else the launcher's WORLD_SIZE."""
    dist = group()
    return dist.get_world_size() if dist else int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank: from torch.distributed when initialised, else the launcher's RANK."""
    dist = group()
    return dist.get_rank() if dist else int(os.environ.get("RANK", "0"))


def init_process_group(device: str | None = None) -> bool:
    """Initialise torch.distributed under torchrun / accelerate launch (WORLD_SIZE > 1); else nothing.

    NCCL when the models go on CUDA, gloo otherwise. Returns whether this call initialised it.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not torch_dist.is_available():
        return False
    if torch_dist.is_initialized():
        return False
    if torch.cuda.is_available() and not (device or "").startswith("cpu"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch_dist.init_process_group("nccl")
    else:
        torch_dist.init_process_group("gloo")
    return True


def destroy_process_group() -> None:
    if group() is not None:
        torch_dist.destroy_process_group()


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    dist = group()
    if dist:
        dist.barrier()


def all_reduce_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (identity in a single process); returns it."""
    dist = group()
    if dist:
        dist.all_reduce(tensor)
    return tensor


def global_sums(values: dict[str, float]) -> dict[str, float]:
    """Each value summed over ranks (float64)."""
    names = sorted(values)
    t = all_reduce_(torch.tensor([values[n] for n in names], dtype=torch.float64))
    return {n: float(v) for n, v in zip(names, t)}


def all_gather_variable(values: torch.Tensor) -> torch.Tensor:
    """The concatenation of every rank's 1-D ``values`` (lengths may differ), in rank order."""
    dist = group()
    if not dist:
        return values
    world = dist.get_world_size()
    n = torch.tensor([len(values)], dtype=torch.long)
    sizes = [torch.zeros(1, dtype=torch.long) for _ in range(world)]
    dist.all_gather(sizes, n)
    width = int(max(int(s) for s in sizes))
    padded = torch.zeros(width, dtype=values.dtype)
    padded[: len(values)] = values
    parts = [torch.zeros(width, dtype=values.dtype) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s)] for p, s in zip(parts, sizes)])


def global_std(values: torch.Tensor) -> float | None:
    """Unbiased std over all ranks' values (None in a single process)."""
    if world_size() == 1:
        return None
    stats = all_reduce_(torch.tensor([values.sum(), (values ** 2).sum(), float(len(values))], dtype=torch.float64))
    s, sq, n = stats.tolist()
    return (max(sq - s * s / n, 0.0) / max(n - 1, 1)) ** 0.5
