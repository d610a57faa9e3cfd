"""forklens rewards inside TRL's GRPOTrainer: the docs/rewards.md snippet, run for real.

Trains ``--steps`` GRPO steps of TRL 1.x from the arith base organism with two forklens reward
functions in ``reward_funcs`` (the arith verifier and MaR's knowledge term on the tagged format,
which a model not trained on that format scores 0 on) and a dataset whose ``problem`` column holds
dict rows, as TRL passes them. Prints TRL's per-reward means. TRL is not a forklens dependency:
``pip install trl`` to run this.

    python benchmarks/trl_interop.py [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import asdict
from pathlib import Path


def main() -> None:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from forklens.rewards.metacognition import TaggedGrader, mar_component
    from forklens.tasks import get_task
    from forklens.organisms.arith import OrganismConfig, build_base_organism
    from forklens.train.sources import verifier_reward

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        org = OrganismConfig()
        build_base_organism(org, Path(tmp) / "base", progress=False)
        task = get_task("arith")
        rows = [{"prompt": p.prompt, "problem": asdict(p)} for p in task.problems("train")[:512]]
        trainer = GRPOTrainer(
            model=str(Path(tmp) / "base"),
            reward_funcs=[verifier_reward(task), mar_component(TaggedGrader(), "kmr")],
            args=GRPOConfig(output_dir=str(Path(tmp) / "trl"), max_steps=args.steps, per_device_train_batch_size=16,
                            num_generations=8, max_completion_length=48, logging_steps=1, report_to="none",
                            use_cpu=True, save_strategy="no", disable_tqdm=True),
            train_dataset=Dataset.from_list(rows),
        )
        trainer.train()
        logs = [h for h in trainer.state.log_history if any(k.startswith("rewards/") for k in h)]
        for h in logs:
            print(json.dumps({k: v for k, v in h.items() if k.startswith("rewards/") or k == "step"}))


if __name__ == "__main__":
    main()
