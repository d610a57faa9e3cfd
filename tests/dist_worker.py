"""Run under `torchrun --nproc_per_node 2` (gloo): each rank computes gradients of its share of the
batch of tests/test_invariance.py with DDP and accumulation; rank 0 saves them for comparison."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402

from forklens.objectives import get_objective  # noqa: E402
from forklens.policy.score import TokenLogProbs  # noqa: E402
from forklens.train.step import accumulate_step  # noqa: E402
from tests.conftest import make_tiny  # noqa: E402
from tests.test_invariance import CASES, case_id, case_inputs, objective_name  # noqa: E402


def main(out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    results = {}
    for name, cfg in CASES:
        model, _ = make_tiny("llama", seed=1)
        ddp = DDP(TokenLogProbs(model))
        key = case_id(name, cfg)
        cfg, batch = case_inputs(name, cfg)
        rows = list(range(len(batch)))[rank * len(batch) // world:(rank + 1) * len(batch) // world]
        mine = batch.select(rows)  # rank 0: rows 0-2 (13 response tokens), rank 1: rows 3-5 (22): uneven
        metrics = accumulate_step(ddp, get_objective(objective_name(name)), cfg, mine.split(1), no_sync=ddp.no_sync)
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results[key] = {"grad": grad,
                        "loss": metrics["loss"]}
    if rank == 0:
        torch.save(results, out)
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)  # skip the interpreter's teardown, which can abort under gloo (see forklens.cli._exit_now)


if __name__ == "__main__":
    main(sys.argv[1])
