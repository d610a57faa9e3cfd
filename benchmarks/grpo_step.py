"""Seconds per GRPO step: forklens' Trainer vs TRL's ``GRPOTrainer``, side by side in one run.

Both sides train the same saved model (the arith organism's architecture and tokenizer; ``--model
organism`` is the trained base organism, ``--model llama-20M`` a ~20M-parameter random-weight Llama
with the same tokenizer) on the same prompts with the same settings: 16 prompts x 8 completions per
step, completions of exactly ``--new-tokens`` tokens (EOS suppressed on both sides, so both train the
same number of tokens), temperature 1, top-p 1, no top-k, no reference model (beta 0), one
optimizer step per generation, AdamW lr 1e-4, gradient clipping 1.0, fp32, the arith verifier as
reward, loss token-mean over the step ("dapo" in TRL; the default in both). Each side runs
``--steps`` + 1 steps (``--steps`` >= 5); the first is a warm-up and the time per step is the median of
the rest; the JSON records min/median/max of the timed steps of each side (``repeats``) and the stamp.

TRL is a peer, not a dependency: install it only for this benchmark (``pip install trl``). Writes
``benchmarks/results/grpo_step.json`` with ``unit = "s/step"`` (ratio < 1: forklens is faster).

    python benchmarks/grpo_step.py [--quick] [--model organism|llama-20M]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from common import MIN_REPEATS, machine, repeats_arg, spread, write_result

PROMPTS, GROUP, LR = 16, 8, 1e-4


def prepare_model(kind: str, root: Path) -> tuple[Path, object]:
    """Save the benchmark model (HF format) under ``root``; returns (dir, task)."""
    from forklens.tasks import get_task
    from forklens.organisms.arith import OrganismConfig, build_base_organism

    org = OrganismConfig()
    task = get_task(org.task, org.arith)
    base = root / "organism"
    build_base_organism(org, base, progress=False)
    if kind == "organism":
        return base, task
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(base)
    cfg = LlamaConfig(hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
                      num_key_value_heads=8, vocab_size=len(tok), max_position_embeddings=256,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    d = root / kind
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d, task


def step_times(wall: list[float]) -> float:
    """Median seconds per step after the warm-up step, from cumulative (or per-step) times."""
    return statistics.median(wall[1:])


def run_forklens(model_dir: Path, task, steps: int, new_tokens: int, out: Path) -> dict:
    from forklens.objectives.grpo import GRPOLossConfig
    from forklens.policy import Policy
    from forklens.train.loop import TrainConfig, Trainer, read_metrics
    from forklens.train.sources import GRPOSource, SamplingConfig, verifier_reward

    policy = Policy.load(model_dir)
    policy.eos_ids = []  # EOS suppressed: every completion has exactly new_tokens tokens, as on TRL's side
    sampling = SamplingConfig(prompts_per_step=PROMPTS, group_size=GROUP, max_new_tokens=new_tokens)
    source = GRPOSource(task, task.problems("train"), sampling, reward_fns=[verifier_reward(task)], seed=0)
    cfg = TrainConfig(max_steps=steps + 1, learning_rate=LR, micro_batch_size=PROMPTS * GROUP)
    trainer = Trainer(policy, "grpo", GRPOLossConfig(max_new_tokens=new_tokens), source, cfg, out, progress=False)
    trainer.train()
    rows = read_metrics(out / "metrics.jsonl")
    walls = [r["wall_s"] for r in rows]
    per_step = [walls[0]] + [b - a for a, b in zip(walls, walls[1:])]
    return {"s_per_step": step_times(per_step), "per_step": per_step, "trained_tokens": rows[-1]["trained_tokens"]}


def run_trl(model_dir: Path, task, steps: int, new_tokens: int, out: Path) -> dict:
    try:
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
        from trl import GRPOConfig, GRPOTrainer
    except ImportError as exc:
        raise SystemExit(f"TRL is the peer of this benchmark: pip install trl ({exc})")

    problems = task.problems("train")
    data = Dataset.from_list([{"prompt": p.prompt, "answer": p.answer, "pid": p.id} for p in problems])
    by_id = {p.id: p for p in problems}

    def arith_verifier(prompts, completions, pid, **_):
        return [task.verify(by_id[i], c) for i, c in zip(pid, completions)]

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t)

    on_gpu = torch.cuda.is_available()
    args = GRPOConfig(
        output_dir=str(out), max_steps=steps + 1, learning_rate=LR, lr_scheduler_type="constant",
        warmup_steps=0, per_device_train_batch_size=PROMPTS * GROUP, gradient_accumulation_steps=1,
        num_generations=GROUP, steps_per_generation=1, num_iterations=1, max_completion_length=new_tokens,
        temperature=1.0, top_p=1.0, top_k=0, beta=0.0, loss_type="dapo", max_grad_norm=1.0,
        generation_kwargs={"min_new_tokens": new_tokens}, logging_steps=10_000, save_strategy="no",
        report_to="none", use_cpu=not on_gpu, bf16=False, fp16=False, seed=0, disable_tqdm=True,
        dataloader_num_workers=0, shuffle_dataset=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(model_dir)
    trainer = GRPOTrainer(model=model, reward_funcs=[arith_verifier], args=args, train_dataset=data,
                          processing_class=tok, callbacks=[Clock()])
    trainer.train()
    import trl

    return {"s_per_step": step_times(times), "per_step": times, "trl": trl.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["organism", "llama-20M"], default="organism")
    ap.add_argument("--steps", type=repeats_arg, default=10,
                    help=f"timed steps per side (after one warm-up step; >= {MIN_REPEATS})")
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--quick", action="store_true", help=f"the minimum {MIN_REPEATS} timed steps")
    args = ap.parse_args()
    steps = MIN_REPEATS if args.quick else args.steps
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir, task = prepare_model(args.model, root)
        ours = run_forklens(model_dir, task, steps, args.new_tokens, root / "forklens")
        peer = run_trl(model_dir, task, steps, args.new_tokens, root / "trl")
    details = {"model": args.model, "prompts_per_step": PROMPTS, "group_size": GROUP, "new_tokens": args.new_tokens,
               "timed_steps": steps, "forklens": ours, "trl": peer, "machine": machine()}
    print(f"{args.model}: forklens {ours['s_per_step']:.3f} s/step   TRL {peer['trl']} {peer['s_per_step']:.3f} s/step"
          f"   ratio {ours['s_per_step'] / peer['s_per_step']:.2f}")
    name = "grpo_step" if args.model == "organism" else f"grpo_step_{args.model}"
    write_result(name, ours["s_per_step"], peer["s_per_step"], "s/step", details,
                 {"forklens_s_per_step": spread(ours["per_step"][1:]), "trl_s_per_step": spread(peer["per_step"][1:])})


if __name__ == "__main__":
    main()
