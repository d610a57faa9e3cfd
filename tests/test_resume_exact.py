"""Exact resume for any model and source: dropout, a stateful source (ReLIFT buffer), several cuts,
deterministic crashes inside the checkpoint write, corrupt-latest fallback, stale temporaries, pickle-free
trainer state (issue 21)."""

import json
import pickle

import pytest
import torch

import forklens.train.checkpoint as ckpt_mod
from forklens.objectives.mixed_policy import MixedPolicyLossConfig
from forklens.policy import Policy
from forklens.tasks.arith import ArithConfig, ArithTask
from forklens.train.checkpoint import (CheckpointError, checkpoint_dirs, latest_checkpoint, read_checkpoint,
                                       read_latest_intact)
from forklens.train.loop import Trainer, TrainConfig, read_metrics
from forklens.train.sources import GRPOSource, InterleavedSFTSource, SamplingConfig, SFTSource, verifier_reward
from tests.conftest import make_tiny

TASK = ArithTask(ArithConfig(digits=2))


def relift_dropout(out, steps=6, save_every=1, keep=2):
    """GPT-2 shape with its default dropout 0.1, ReLIFT interleaving: RL steps whose failed groups fill a
    buffer, an SFT step on the buffer every 3rd step (steps 3 and 6). The buffer is source state."""
    model, tok = make_tiny("gpt2", seed=21)
    assert model.config.resid_pdrop == 0.1 and model.config.attn_pdrop == 0.1
    policy = Policy(model, tok)
    sc = SamplingConfig(prompts_per_step=2, group_size=2, max_new_tokens=8)
    src = InterleavedSFTSource(GRPOSource(TASK, TASK.problems("train"), sc, [verifier_reward(TASK)], seed=7),
                               TASK.expert_response, sft_every=3, min_buffer=1)
    cfg = TrainConfig(max_steps=steps, learning_rate=3e-3, save_every=save_every, keep_checkpoints=keep,
                      micro_batch_size=3, seed=7)
    return Trainer(policy, "mixed_policy", MixedPolicyLossConfig(max_new_tokens=8), src, cfg, out, progress=False)


def sft_dropout(out, steps=6, save_every=1, keep=2):
    model, tok = make_tiny("gpt2", seed=22)
    policy = Policy(model, tok)
    src = SFTSource(lambda rng, n: [TASK.teacher_example(rng) for _ in range(n)], batch_size=6, seed=3)
    cfg = TrainConfig(max_steps=steps, learning_rate=3e-3, save_every=save_every, keep_checkpoints=keep,
                      micro_batch_size=4, seed=3, warmup_steps=2, lr_schedule="cosine")
    return Trainer(policy, "sft", None, src, cfg, out, progress=False)


def strip(metrics):
    return [{k: v for k, v in m.items() if k != "wall_s"} for m in metrics]


def assert_same_run(a_dir, a: Trainer, b_dir, b: Trainer):
    assert a.step == b.step
    sa, sb = a.policy.model.state_dict(), b.policy.model.state_dict()
    assert sa.keys() == sb.keys()
    diff = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not diff, f"{len(diff)} tensors differ, e.g. {diff[:3]}"
    assert strip(read_metrics(a_dir / "metrics.jsonl")) == strip(read_metrics(b_dir / "metrics.jsonl"))


_FULL = {}


def full_run(tmp_path_factory, make):
    if make not in _FULL:
        d = tmp_path_factory.mktemp("full")
        t = make(d)
        t.train()
        _FULL[make] = (d, t)
    return _FULL[make]


@pytest.mark.parametrize("make", [relift_dropout, sft_dropout], ids=["relift-buffer-dropout", "sft-dropout"])
@pytest.mark.parametrize("cuts", [(1, 3), (2, 2), (4,)], ids=lambda c: "cut-" + "-".join(map(str, c)))
def test_killed_at_several_steps_resumes_bit_identical(tmp_path, tmp_path_factory, make, cuts):
    full_dir, full = full_run(tmp_path_factory, make)
    out = tmp_path / "cut"
    make(out).train(stop_after=cuts[0])  # each segment is a fresh process' worth of objects
    for n in cuts[1:]:
        make(out).train(resume=True, stop_after=n)
    resumed = make(out)
    resumed.train(resume=True)
    assert_same_run(full_dir, full, out, resumed)


def test_relift_run_really_uses_its_buffer_and_dropout(tmp_path_factory):
    """The test above would be vacuous if no SFT step drew on the buffer or dropout did nothing."""
    full_dir, _ = full_run(tmp_path_factory, relift_dropout)
    m = read_metrics(full_dir / "metrics.jsonl")
    assert [r["sft_step"] for r in m] == [0.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    assert m[4]["buffer_size"] == 4.0  # step 6's SFT batch holds problems buffered at steps 4 and 5 only
    model, _ = make_tiny("gpt2", seed=21)
    model.train()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    torch.manual_seed(0)
    a = model(ids).logits
    b = model(ids).logits
    assert not torch.equal(a, b)  # dropout is active in training mode


def test_resume_restores_the_source_buffer(tmp_path, tmp_path_factory):
    """Dropping the source state on resume changes step 6's SFT batch (this is the red mutation)."""
    full_dir, full = full_run(tmp_path_factory, relift_dropout)
    out = tmp_path / "cut"
    relift_dropout(out).train(stop_after=4)
    blob = torch.load(str(latest_checkpoint(out / "checkpoints") / "trainer_state.pt"), weights_only=True)
    assert len(blob["source"]["buffer"]) == 2  # steps 4's failed groups (3's SFT step emptied it)
    resumed = relift_dropout(out)
    resumed.train(resume=True)
    assert_same_run(full_dir, full, out, resumed)


# --- deterministic crashes inside the checkpoint write ---------------------------------------------

class Crash(Exception):
    pass


def _crash_on(monkeypatch, where: str, at_step: int):
    """Make the save of step ``at_step`` raise at ``where``; earlier saves run normally."""
    target = f"step-{at_step:06d}"
    if where == "save_pretrained":
        orig = ckpt_mod.save_checkpoint

        def save(root, step, model, *a, **kw):
            if step == at_step:
                real_sp = model.save_pretrained

                def half(path, **k):
                    real_sp(path, **k)
                    with open(f"{path}/model.safetensors", "r+b") as f:  # half a file, then the crash
                        f.truncate(100)
                    raise Crash(where)
                model.save_pretrained = half
                try:
                    return orig(root, step, model, *a, **kw)
                finally:
                    del model.save_pretrained
            return orig(root, step, model, *a, **kw)
        monkeypatch.setattr("forklens.train.loop.save_checkpoint", save)
    elif where == "trainer_state.pt":
        orig_save = torch.save

        def tsave(obj, path, *a, **kw):
            if str(path).endswith("trainer_state.pt") and f".tmp-{target}" in str(path):
                with open(path, "wb") as f:
                    f.write(b"PK\x03\x04 half")
                raise Crash(where)
            return orig_save(obj, path, *a, **kw)
        monkeypatch.setattr(ckpt_mod.torch, "save", tsave)
    elif where == "rename":
        orig_replace = ckpt_mod.os.replace

        def replace(src, dst):
            if str(dst).endswith(target):
                raise Crash(where)
            return orig_replace(src, dst)
        monkeypatch.setattr(ckpt_mod.os, "replace", replace)
    elif where == "pointer":
        orig_write = ckpt_mod.write_text_atomic

        def write(path, text):
            if text == target:
                raise Crash(where)
            return orig_write(path, text)
        monkeypatch.setattr(ckpt_mod, "write_text_atomic", write)


@pytest.mark.parametrize("where", ["save_pretrained", "trainer_state.pt", "rename", "pointer"])
def test_crash_inside_the_checkpoint_write(tmp_path, tmp_path_factory, monkeypatch, capsys, where):
    full_dir, full = full_run(tmp_path_factory, sft_dropout)
    out = tmp_path / "crash"
    with monkeypatch.context() as m:
        _crash_on(m, where, at_step=4)
        with pytest.raises(Crash):
            sft_dropout(out, save_every=2).train()
    root = out / "checkpoints"
    # every checkpoint folder present is whole: the crash left the old one, or (pointer) the new one
    for d in checkpoint_dirs(root):
        read_checkpoint(d)
    assert [d.name for d in checkpoint_dirs(root)] == (["step-000004", "step-000002"] if where == "pointer"
                                                       else ["step-000002"])
    assert latest_checkpoint(root).name == ("step-000004" if where == "pointer" else "step-000002")
    assert len(read_metrics(out / "metrics.jsonl")) == 4
    resumed = sft_dropout(out, save_every=2)
    resumed.train(resume=True)
    assert "warning" not in capsys.readouterr().err  # nothing corrupt to fall back from
    assert not list(root.glob(".tmp-*"))  # the crashed save's temporary folder is gone
    assert_same_run(full_dir, full, out, resumed)


# --- corrupt latest checkpoint ---------------------------------------------------------------------

def _two_checkpoints(out):
    t = sft_dropout(out, save_every=2, keep=3)
    t.train(stop_after=4)
    return out / "checkpoints" / "step-000004"


CORRUPTIONS = {
    "model.safetensors": lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:200]),
    "trainer_state.pt": lambda d: (d / "trainer_state.pt").write_bytes((d / "trainer_state.pt").read_bytes()[:300]),
    "trainer_state.json": lambda d: (d / "trainer_state.json").write_text('{"step": 4, "flops": '),
    "trainer_state.json-wrong-type": lambda d: (d / "trainer_state.json").write_text('{"step": "four"}'),
    "pickled-object": lambda d: (d / "trainer_state.pt").write_bytes(pickle.dumps(Crash("code"))),
}


@pytest.mark.parametrize("what", list(CORRUPTIONS))
def test_corrupt_latest_falls_back_to_previous(tmp_path, tmp_path_factory, capsys, what):
    full_dir, full = full_run(tmp_path_factory, sft_dropout)
    out = tmp_path / "run"
    CORRUPTIONS[what](_two_checkpoints(out))
    resumed = sft_dropout(out, save_every=2, keep=3)
    resumed.train(resume=True)
    err = capsys.readouterr().err
    assert "step-000004" in err and "falling back to step-000002" in err
    assert what.split("-")[0].replace("pickled", "trainer_state.pt") in err
    assert_same_run(full_dir, full, out, resumed)


def test_no_intact_checkpoint_is_a_clear_error(tmp_path):
    out = tmp_path / "run"
    newest = _two_checkpoints(out)
    CORRUPTIONS["model.safetensors"](newest)
    CORRUPTIONS["trainer_state.json"](newest.parent / "step-000002")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError, match=r"no intact checkpoint .*step-000004: model.safetensors.*"
                       r"step-000002: trainer_state.json"):
        sft_dropout(out, save_every=2, keep=3).train(resume=True)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing touched


def test_resume_with_a_different_architecture_is_a_clear_error(tmp_path):
    out = tmp_path / "run"
    _two_checkpoints(out)
    model, tok = make_tiny("gpt2", seed=22, hidden=64)
    src = SFTSource(lambda rng, n: [TASK.teacher_example(rng) for _ in range(n)], batch_size=6, seed=3)
    t = Trainer(Policy(model, tok), "sft", None, src, TrainConfig(max_steps=6), out, progress=False)
    with pytest.raises(CheckpointError, match="written for a different model: size mismatch"):
        t.train(resume=True)


# --- state files, temporaries, fresh starts --------------------------------------------------------

def test_trainer_state_loads_without_pickle_and_holds_every_rng(tmp_path):
    import numpy as np
    import random

    _two_checkpoints(tmp_path / "run")
    blob = torch.load(str(tmp_path / "run/checkpoints/step-000004/trainer_state.pt"), weights_only=True)
    rng = blob["rng"]
    assert isinstance(rng["torch"], torch.Tensor) and isinstance(rng["numpy"]["keys"], torch.Tensor)
    json.dumps(rng["python"])  # a JSON list
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    saved = ckpt_mod.rng_state()
    a = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    ckpt_mod.set_rng_state(torch.load(_roundtrip(saved, tmp_path), weights_only=True))
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == a


def _roundtrip(obj, tmp_path):
    path = tmp_path / "rng.pt"
    torch.save(obj, str(path))
    return str(path)


def test_stale_temporary_folders_are_removed(tmp_path):
    out = tmp_path / "run"
    _two_checkpoints(out)
    root = out / "checkpoints"
    (root / ".tmp-step-000006-99999").mkdir()
    (root / ".tmp-step-000006-99999" / "model.safetensors").write_bytes(b"half")
    (root / "notes.txt").write_text("mine")
    sft_dropout(out, save_every=2, keep=3).train(resume=True, stop_after=0)
    assert not (root / ".tmp-step-000006-99999").exists()
    assert (root / "notes.txt").read_text() == "mine"
    (root / ".tmp-step-000008-99999").mkdir()
    sft_dropout(out, save_every=2, keep=3).train(resume=True, stop_after=1)  # and at the next save
    assert not list(root.glob(".tmp-*"))


def test_resume_without_checkpoint_starts_clean(tmp_path, tmp_path_factory, capsys):
    """Rule: --resume with no checkpoint starts at step 0 and drops the old metric lines (with a warning),
    so the log never reads 1, 2, 3, 4, 1, 2."""
    full_dir, full = full_run(tmp_path_factory, sft_dropout)
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text("".join(json.dumps({"step": i}) + "\n" for i in (1, 2, 3, 4)))
    t = sft_dropout(out)
    t.train(resume=True)
    assert "no checkpoint" in capsys.readouterr().err
    assert [m["step"] for m in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert_same_run(full_dir, full, out, t)


def test_fresh_start_clears_an_old_runs_checkpoints(tmp_path):
    out = tmp_path / "run"
    t = sft_dropout(out, steps=8, save_every=2, keep=5)
    t.train()
    t2 = sft_dropout(out, steps=4, save_every=2, keep=5)
    t2.train()
    assert [d.name for d in checkpoint_dirs(out / "checkpoints")] == ["step-000004", "step-000002"]
    assert [m["step"] for m in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4]
    assert read_latest_intact(out / "checkpoints").state["step"] == 4


def test_fork_data_file_is_pickle_free_and_atomic(tmp_path, monkeypatch):
    """fork_data.pt is written as run_fork_contrast writes it and loads with weights_only=True; a
    crash inside the write leaves the previous file whole."""
    from dataclasses import fields

    from forklens.rollouts import Rollouts
    from forklens.train.checkpoint import torch_save_atomic

    batch = Rollouts.from_ids([[1, 2], [3]], [[4, 5, 6], [7]], pad_id=0)
    batch.tags["decision_mask"] = torch.ones_like(batch.response_mask)
    blob = {"rollouts": {f.name: getattr(batch, f.name) for f in fields(batch)},
            "stats": {"gate": "entropy", "tau": 0.5, "problems_kept": 2}, "sampled_tokens": 4.0,
            "scored_tokens": 9.0, "wall_s": 1.5}
    path = tmp_path / "fork_data.pt"
    torch_save_atomic(blob, path)
    back = torch.load(str(path), weights_only=True)
    assert torch.equal(Rollouts(**back["rollouts"]).input_ids, batch.input_ids)
    assert back["stats"] == blob["stats"]

    def crash(*a, **k):
        raise Crash("replace")
    monkeypatch.setattr(ckpt_mod.os, "replace", crash)
    with pytest.raises(Crash):
        torch_save_atomic({**blob, "wall_s": 9.0}, path)
    assert torch.load(str(path), weights_only=True)["wall_s"] == 1.5
