"""Data parallelism for real: 2 processes (gloo, CPU) x accumulation give the same gradient and the
same trained weights as one process."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import make_tiny
from tests.test_invariance import CASES, case_id, case_inputs, grads, objective_name, rel_err

ROOT = Path(__file__).resolve().parents[1]


def torchrun(*args, timeout=240, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", **(env_extra or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(random.randint(20000, 40000)), *args]
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.mark.distributed
def test_two_process_gradients_equal_single_process(tmp_path):
    from forklens.objectives import get_objective

    out = tmp_path / "grads.pt"
    torchrun(str(ROOT / "tests" / "dist_worker.py"), str(out))
    got = torch.load(str(out), weights_only=False)
    assert len(got) == len(CASES)
    for name, cfg in CASES:
        key = case_id(name, cfg)
        model, _ = make_tiny("llama", seed=1)
        cfg, batch = case_inputs(name, cfg)
        g_ref, m_ref = grads(model, get_objective(objective_name(name)), cfg, batch, micro=len(batch))
        assert rel_err(got[key]["grad"], g_ref) <= 1e-5, (key, rel_err(got[key]["grad"], g_ref))
        assert got[key]["loss"] == pytest.approx(m_ref["loss"], rel=1e-5, abs=1e-7)


@pytest.mark.distributed
@pytest.mark.parametrize("sharding", ["ddp", "fsdp", "ddp-bf16"])
def test_two_process_training_equals_single_process(tmp_path, sharding):
    """Also under ACCELERATE_MIXED_PRECISION=bf16 (accelerate's variable): forklens autocasts itself, so one
    process and two train in bf16 alike (before, one process ignored it and two autocast)."""
    from forklens.tasks.arith import ArithConfig, ArithTask

    model, tok = make_tiny("llama", seed=4)
    base = tmp_path / "base"
    model.save_pretrained(str(base))
    tok.save_pretrained(str(base))
    task, rng = ArithTask(ArithConfig(digits=2)), random.Random(0)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n"
                            for p, r in (task.teacher_example(rng) for _ in range(32))))
    common = ["train", "sft", "--model", str(base), "--data", str(data), "--set", "train.max_steps=3",
              "--set", "batch_size=8", "--set", "train.micro_batch_size=3", "--set", "train.learning_rate=1e-3"]
    precision = {"ACCELERATE_MIXED_PRECISION": "bf16"} if sharding == "ddp-bf16" else {}
    subprocess.run([sys.executable, "-m", "forklens.cli", *common, "--out", str(tmp_path / "one")], check=True,
                   cwd=ROOT, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1", **precision})
    torchrun("-m", "forklens.cli", *common, "--out", str(tmp_path / "two"),
             *(["--set", "train.fsdp=true"] if sharding == "fsdp" else []), env_extra=precision)
    a = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "model" / "model.safetensors"))
    if not precision:
        for k in a:
            assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), k
    else:  # bf16 rounds sums taken in another order; Adam turns that into small update differences
        start = model.state_dict()
        moved = sum(float((a[k] - start[k]).norm() ** 2) for k in a) ** 0.5
        apart = sum(float((a[k] - b[k]).norm() ** 2) for k in a) ** 0.5
        assert apart < 0.1 * moved, (apart, moved)
    lrel = 2e-3 if precision else 1e-5
    one = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [m["loss"] for m in one] == pytest.approx([m["loss"] for m in two], rel=lrel)
    if precision:  # and both really ran in bf16: the loss is off the fp32 run's by more than bf16's rounding
        subprocess.run([sys.executable, "-m", "forklens.cli", *common, "--out", str(tmp_path / "fp32")], check=True,
                       cwd=ROOT, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        ref = [json.loads(x) for x in (tmp_path / "fp32" / "metrics.jsonl").read_text().splitlines()]
        off = sum(abs(o["loss"] - r["loss"]) for r, o in zip(ref, one))
        assert off > 1e-5 and sum(abs(t["loss"] - r["loss"]) for r, t in zip(ref, two)) > 1e-5
        assert sum(abs(o["loss"] - t["loss"]) for o, t in zip(one, two)) < 0.3 * off  # nearer each other than fp32
    assert [m["flops"] for m in one] == [m["flops"] for m in two]


@pytest.mark.distributed
def test_fsdp_grpo_samples_checkpoints_and_resumes_exactly(tmp_path):
    """GRPO under 2-process FSDP: sampling with gathered weights (ranks decode independently), a
    checkpoint at step 2, and a resumed run that ends with the same weights as an uninterrupted one."""
    model, tok = make_tiny("llama", seed=5)
    base = tmp_path / "base"
    model.save_pretrained(str(base))
    tok.save_pretrained(str(base))
    worker = str(ROOT / "tests" / "fsdp_grpo_worker.py")
    torchrun(worker, str(base), str(tmp_path / "full"), "full")
    torchrun(worker, str(base), str(tmp_path / "cut"), "cut")
    assert (tmp_path / "cut" / "checkpoints" / "step-000002").is_dir()
    torchrun(worker, str(base), str(tmp_path / "cut"), "resume")
    a = load_file(str(tmp_path / "full" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model" / "model.safetensors"))
    start = load_file(str(base / "model.safetensors"))
    assert set(a) == set(b) == set(start)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert any(not torch.equal(a[k], start[k]) for k in a)  # it trained
