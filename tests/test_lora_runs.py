"""LoRA for GRPO and SFT (issue 16), and PEFT adapter folders loaded by every command."""

from __future__ import annotations

import json

import pytest
import torch

from forklens.cli import main
from forklens.errors import ConfigError, ModelLoadError
from forklens.policy import Policy
from forklens.policy.load import adapter_base
from tests.conftest import make_tiny

pytest.importorskip("peft")

ROWS = [{"prompt": f"{i}+{i}=", "answer": str(2 * i), "response": str(2 * i)} for i in range(6)]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    model, tok = make_tiny("llama", seed=0)
    d = tmp_path_factory.mktemp("lora") / "base"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _data(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def _weights(d):
    return Policy.load(d).model.state_dict()


@pytest.mark.parametrize("objective", ["grpo", "sft"])
def test_lora_trains_only_adapters_and_saves_merged_and_adapter(base_dir, tmp_path, objective):
    out = tmp_path / objective
    (tmp_path / "rew.py").write_text("def length(prompts, completions, **kw):\n"
                                     "    return [float(len(c)) for c in completions]\n")
    common = ["--model", str(base_dir), "--data", str(_data(tmp_path)), "--out", str(out), "--set", "lora.enabled=true",
              "--set", "lora.r=4", "--set", "train.max_steps=2", "--set", "train.learning_rate=0.05",
              "--set", "train.save_every=0"]
    extra = (["--set", "sampling.group_size=2", "--set", "sampling.prompts_per_step=2", "--set",
              "sampling.max_new_tokens=3", "--set", "sampling.temperature=1.0",
              "--reward", f"{tmp_path}/rew.py:length"] if objective == "grpo"
             else ["--set", "batch_size=3"])
    assert main(["train", objective, *common, *extra]) == 0
    assert (out / "adapter" / "adapter_config.json").is_file()
    merged, base = _weights(out / "model"), _weights(base_dir)
    assert set(merged) == set(base)  # a plain checkpoint: no lora_ keys
    changed = {k for k in base if not torch.equal(merged[k], base[k])}
    assert changed and all(any(m in k for m in ("q_proj", "k_proj", "v_proj", "o_proj")) for k in changed)
    # the adapter folder loads too (base resolved from adapter_config.json) and equals the merged model
    via_adapter = _weights(out / "adapter")
    for k in base:
        torch.testing.assert_close(via_adapter[k], merged[k], rtol=1e-5, atol=1e-6)


def test_lora_errors(base_dir, tmp_path, capsys):
    args = ["train", "sft", "--model", str(base_dir), "--data", str(_data(tmp_path)), "--out", str(tmp_path / "o"),
            "--set", "lora.enabled=true", "--set", "lora.target_modules=[c_attn]", "--set", "train.max_steps=1"]
    assert main(args) == 2
    assert "lora.target_modules: the model has no module named c_attn (its linear layers:" in capsys.readouterr().err


def test_adapter_with_missing_base(tmp_path):
    d = tmp_path / "adapter"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/not-here"}))
    with pytest.raises(ModelLoadError, match="PEFT adapter for base 'org/not-here', which is not a local model"):
        adapter_base(d)
    (d / "adapter_config.json").write_text("{oops")
    with pytest.raises(ModelLoadError, match="adapter_config.json line 1: not valid JSON"):
        adapter_base(d)
    assert adapter_base(tmp_path) is None


def test_resume_with_lora_is_refused(base_dir, tmp_path):
    from forklens.train.lora import LoraSettings, check_lora_run

    with pytest.raises(ConfigError, match="--resume is supported with full fine-tuning only"):
        check_lora_run(LoraSettings(enabled=True), resume=True)
    check_lora_run(LoraSettings(enabled=False), resume=True)
