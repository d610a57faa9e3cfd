"""Interrupted-then-resumed training equals an uninterrupted run: weights and logged metrics."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from forklens.objectives.grpo import GRPOLossConfig
from forklens.policy import Policy
from forklens.tasks.arith import ArithConfig, ArithTask
from forklens.train.checkpoint import latest_checkpoint
from forklens.train.loop import Trainer, TrainConfig, read_metrics
from forklens.train.sources import GRPOSource, SamplingConfig, SFTSource
from tests.conftest import make_tiny

TASK = ArithTask(ArithConfig(digits=2))


def sft_trainer(out, steps=6):
    model, tok = make_tiny("llama", seed=11)
    policy = Policy(model, tok)
    src = SFTSource(lambda rng, n: [TASK.teacher_example(rng) for _ in range(n)], batch_size=8, seed=3)
    cfg = TrainConfig(max_steps=steps, learning_rate=3e-3, save_every=2, micro_batch_size=3, seed=3,
                      warmup_steps=2, lr_schedule="cosine")
    return Trainer(policy, "sft", None, src, cfg, out, progress=False)


def grpo_trainer(out, steps=4):
    model, tok = make_tiny("llama", seed=12)
    policy = Policy(model, tok)
    sc = SamplingConfig(prompts_per_step=3, group_size=4, max_new_tokens=12)
    src = GRPOSource(TASK, TASK.problems("train"), sc, seed=5)
    # random models rarely solve a problem: reward a digit-containing completion instead, so gradients flow
    src.reward_fns = [lambda prompts, completions, **_: [float(sum(ch.isdigit() for ch in c) % 2) for c in completions]]
    cfg = TrainConfig(max_steps=steps, learning_rate=1e-3, save_every=1, micro_batch_size=5, seed=5)
    return Trainer(policy, "grpo", GRPOLossConfig(max_new_tokens=12), src, cfg, out, progress=False)


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def strip(metrics):
    return [{k: v for k, v in m.items() if k != "wall_s"} for m in metrics]


@pytest.mark.parametrize("make", [sft_trainer, grpo_trainer], ids=["sft", "grpo"])
def test_resume_equals_uninterrupted(tmp_path, make):
    full = make(tmp_path / "full")
    full.train()
    part = make(tmp_path / "part")
    part.train(stop_after=3)  # dies after step 3; the newest checkpoint is older or equal
    resumed = make(tmp_path / "part")  # a fresh process would rebuild everything from scratch
    resumed.train(resume=True)
    assert resumed.step == full.step
    wf, wr = weights(full.model), weights(resumed.model)
    for k in wf:
        assert torch.equal(wf[k], wr[k]), k
    assert strip(read_metrics(tmp_path / "full" / "metrics.jsonl")) == strip(read_metrics(tmp_path / "part" / "metrics.jsonl"))


def test_checkpoint_dir_is_complete_or_absent(tmp_path):
    t = sft_trainer(tmp_path / "run", steps=4)
    t.train()
    root = tmp_path / "run" / "checkpoints"
    assert not list(root.glob(".tmp-*"))
    ck = latest_checkpoint(root)
    assert ck.name == "step-000004"
    for name in ("model.safetensors", "config.json", "trainer_state.pt", "trainer_state.json", "tokenizer.json"):
        assert (ck / name).is_file(), name
    # a half-written temp dir left by a crash is ignored
    (root / ".tmp-step-000006-123").mkdir()
    assert latest_checkpoint(root).name == "step-000004"


def _cli(*args):
    return [sys.executable, "-m", "forklens.cli", *args]


def test_sigkill_at_random_step_then_resume(tmp_path):
    model, tok = make_tiny("llama", seed=4)
    base = tmp_path / "base"
    model.save_pretrained(str(base))
    tok.save_pretrained(str(base))
    rng = random.Random(0)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n"
                            for p, r in (TASK.teacher_example(rng) for _ in range(40))))
    common = ["--model", str(base), "--data", str(data), "--set", "train.max_steps=14", "--set", "train.save_every=1",
              "--set", "batch_size=8", "--set", "train.micro_batch_size=3", "--set", "train.learning_rate=2e-3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_cli("train", "sft", *common, "--out", str(tmp_path / "full")), check=True, env=env,
                   capture_output=True)
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli("train", "sft", *common, "--out", str(out)), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_at = random.Random().randint(2, 10)
    deadline = time.time() + 120
    while time.time() < deadline:
        log = out / "metrics.jsonl"
        if log.exists() and len(log.read_text().splitlines()) >= kill_at:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model").exists(), "the run finished before it was killed"
    subprocess.run(_cli("train", "sft", *common, "--out", str(out), "--resume"), check=True, env=env,
                   capture_output=True)
    a = load_file(str(tmp_path / "full" / "model" / "model.safetensors"))
    b = load_file(str(out / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), (k, kill_at)
    assert strip(read_metrics(tmp_path / "full" / "metrics.jsonl")) == strip(read_metrics(out / "metrics.jsonl"))
