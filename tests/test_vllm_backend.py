"""The vLLM backend's plumbing, against a stand-in `vllm` module (vLLM itself needs a GPU), and the
clear error when vLLM is absent."""

import subprocess
import sys
import types

import pytest

from forklens.errors import ForklensError
from forklens.policy import Policy


class FakeCompletion:
    def __init__(self, ids, reason):
        self.token_ids, self.finish_reason = ids, reason


class FakeLLM:
    instances: list = []

    def __init__(self, **kwargs):
        self.kwargs, self.loaded, self.calls = kwargs, [], []
        FakeLLM.instances.append(self)

    def generate(self, prompts, sampling_params, use_tqdm=False):
        self.calls.append((prompts, sampling_params.kw))
        n, eos = sampling_params.kw["n"], sampling_params.kw["stop_token_ids"]
        outs = []
        for p in prompts:
            ids = p["prompt_token_ids"]
            comps = []
            for j in range(n):  # completion j of a prompt: its last token + j, then EOS for even j
                body = [ids[-1] + j] * (j + 1)
                comps.append(FakeCompletion(body + eos[:1] if j % 2 == 0 else body, "stop" if j % 2 == 0 else "length"))
            outs.append(types.SimpleNamespace(outputs=comps))
        return outs

    def apply_model(self, fn):
        class M:
            def load_weights(inner, weights):
                self.loaded.append([name for name, _ in weights])
        fn(M())

    def reset_prefix_cache(self):
        pass


@pytest.fixture
def fake_vllm(monkeypatch):
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)  # restored after the test (the backend sets defaults)
    mod = types.ModuleType("vllm")
    mod.__version__ = "0.0-fake"
    mod.LLM = FakeLLM
    mod.SamplingParams = lambda **kw: types.SimpleNamespace(kw=kw)
    monkeypatch.setitem(sys.modules, "vllm", mod)
    FakeLLM.instances.clear()
    return mod


def test_samples_are_grouped_per_prompt_and_flags_follow_eos(fake_vllm, tiny_dir):
    policy = Policy.load(tiny_dir, device="cpu").use_backend("vllm", gpu_memory_utilization=0.5)
    llm = FakeLLM.instances[-1]
    assert llm.kwargs["model"] == str(tiny_dir) and llm.kwargs["gpu_memory_utilization"] == 0.5
    assert llm.kwargs["distributed_executor_backend"] == "external_launcher"  # one GPU too, as TRL's colocate
    import os
    assert os.environ["WORLD_SIZE"] == "1" and int(os.environ["MASTER_PORT"]) > 0
    s = policy.sample([[5, 6], [7]], n=3, temperature=0.7, top_p=0.9, max_new_tokens=4, seed=11)
    eos = policy.eos_ids[0]
    assert s.group == [0, 0, 0, 1, 1, 1]
    assert s.response_ids == [[6, eos], [7, 7], [8, 8, 8, eos], [7, eos], [8, 8], [9, 9, 9, eos]]
    assert s.finished == [True, False, True, True, False, True]
    assert s.tokens_processed == sum(len(p) + len(r) for p, r in zip(s.prompt_ids, s.response_ids))
    kw = llm.calls[0][1]
    assert (kw["n"], kw["temperature"], kw["top_p"], kw["max_tokens"], kw["seed"]) == (3, 0.7, 0.9, 4, 11)
    assert kw["stop_token_ids"] == policy.eos_ids and kw["detokenize"] is False


def test_weights_are_pushed_only_after_the_policy_changed(fake_vllm, tiny_dir):
    policy = Policy.load(tiny_dir, device="cpu").use_backend("vllm")
    llm = FakeLLM.instances[-1]
    policy.sample([[5]], n=1)
    assert llm.loaded == []  # vLLM loaded these very weights from the directory
    policy.weights_version += 1  # what the trainer does after an optimizer step
    policy.sample([[5]], n=1)
    policy.sample([[5]], n=1)
    assert len(llm.loaded) == 1 and set(llm.loaded[0]) == set(policy.model.state_dict())


def test_trainer_step_triggers_a_sync(fake_vllm, tiny_dir, tmp_path):
    from forklens.train.loop import TrainConfig, Trainer
    from forklens.train.sources import SFTSource

    policy = Policy.load(tiny_dir, device="cpu").use_backend("vllm")
    tr = Trainer(policy, "sft", None, SFTSource([("1+1=", "2")] * 4, 2), TrainConfig(max_steps=2), tmp_path,
                 progress=False)
    tr.train()
    assert policy.weights_version == 2
    policy.sample([[5]], n=1)
    assert len(FakeLLM.instances[-1].loaded) == 1


def test_absent_vllm_is_a_clear_error(monkeypatch, tiny_dir):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    with pytest.raises(ForklensError, match="needs vLLM, which is not installed"):
        Policy.load(tiny_dir, device="cpu").use_backend("vllm")
    with pytest.raises(ValueError, match="unknown sampling backend"):
        Policy.load(tiny_dir, device="cpu").use_backend("sglang")


@pytest.mark.skipif(__import__("importlib").util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_cli_backend_vllm_without_vllm_exits_2(tiny_dir, tmp_path):
    r = subprocess.run([sys.executable, "-m", "forklens.cli", "train", "grpo", "--model", str(tiny_dir),
                        "--backend", "vllm", "--out", str(tmp_path / "run"), "--set", "train.max_steps=1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "needs vLLM" in r.stderr and "Traceback" not in r.stderr
