"""Run under `torchrun --nproc_per_node 2`: GRPO with FSDP on a tiny Llama with a dense toy reward
(the share of '1' characters, so advantages are never all zero). ``MODE``: ``full`` trains 4 steps;
``cut`` stops after 2 (checkpoint at 2); ``resume`` continues a ``cut`` run to 4."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from forklens.objectives.grpo import GRPOLossConfig  # noqa: E402
from forklens.policy import Policy  # noqa: E402
from forklens.tasks.arith import ArithConfig, ArithTask  # noqa: E402
from forklens.train.loop import TrainConfig, Trainer  # noqa: E402
from forklens.train.sources import GRPOSource, SamplingConfig  # noqa: E402


def ones(prompts, completions, **_):
    return [c.count("1") / max(len(c), 1) for c in completions]


def main(base: str, out: str, mode: str) -> None:
    torch.set_num_threads(1)
    policy = Policy.load(base, device="cpu")
    task = ArithTask(ArithConfig(digits=2))
    src = GRPOSource(task, task.problems("train")[:50],
                     SamplingConfig(prompts_per_step=4, group_size=4, max_new_tokens=8), reward_fns=[ones], seed=0)
    cfg = TrainConfig(max_steps=4, save_every=2, learning_rate=1e-2, micro_batch_size=3, fsdp=True)
    tr = Trainer(policy, "grpo", GRPOLossConfig(max_new_tokens=8), src, cfg, out, progress=False)
    tr.train(resume=mode == "resume", stop_after=2 if mode == "cut" else None)
    if mode != "cut":
        tr.save_model(Path(out) / "model")
    import torch.distributed as dist

    dist.barrier()  # rank 0 may still be writing; exiting with the group open can abort in gloo
    dist.destroy_process_group()
    os._exit(0)  # skip the interpreter's teardown, which can abort under gloo (see forklens.cli._exit_now)


if __name__ == "__main__":
    main(*sys.argv[1:4])
