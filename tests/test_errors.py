"""Bad input gets a clear, specific error and exit status 2, never a traceback."""

import json

import pytest

from forklens.cli import main
from forklens.errors import DataError, ModelLoadError
from forklens.policy import Policy
from tests.conftest import make_tiny


def run_cli(capsys, *args):
    code = main(list(args))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_missing_model_dir(capsys, tmp_path):
    code, err = run_cli(capsys, "evaluate", "--model", str(tmp_path / "nope"))
    assert code == 2
    assert f"model directory {tmp_path / 'nope'} does not exist" in err


def test_dir_without_config(capsys, tmp_path):
    code, err = run_cli(capsys, "evaluate", "--model", str(tmp_path))
    assert code == 2 and "has no config.json" in err


def test_non_causal_lm_dir(capsys, tmp_path):
    from transformers import DistilBertConfig, DistilBertModel

    d = tmp_path / "bert"
    DistilBertModel(DistilBertConfig(vocab_size=50, dim=32, n_layers=1, n_heads=2, hidden_dim=64)).save_pretrained(str(d))
    code, err = run_cli(capsys, "evaluate", "--model", str(d))
    assert code == 2
    assert "'distilbert'" in err and "not a causal language model" in err


def test_tokenizer_without_eos(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    model, _ = make_tiny("llama")
    d = tmp_path / "noeos"
    model.save_pretrained(str(d))
    core = Tokenizer(models.WordLevel(vocab={"<unk>": 0, "a": 1}, unk_token="<unk>"))
    PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>").save_pretrained(str(d))
    with pytest.raises(ModelLoadError, match="has no EOS token"):
        Policy.load(d)


def test_prompt_longer_than_context(tiny_policy):
    with pytest.raises(DataError, match=r"prompt 1 is 120 tokens, longer than the context .*\(96 tokens\)"):
        tiny_policy.sample(["1+1=", "1" * 120], max_new_tokens=4)
    with pytest.raises(DataError, match="plus max_new_tokens=40"):
        tiny_policy.sample(["1" * 60], max_new_tokens=40)


def test_prompt_longer_than_context_cli(capsys, tiny_dir, tmp_path):
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"prompt": "1" * 200, "response": "2"}) + "\n")
    code, err = run_cli(capsys, "train", "sft", "--model", str(tiny_dir), "--data", str(data), "--out",
                        str(tmp_path / "run"))
    assert code == 2 and "longer than the context" in err


def test_unknown_config_key_override(capsys):
    code, err = run_cli(capsys, "demo", "--set", "rl.train.max_step=3", "--print-config")
    assert code == 2
    assert "unknown key 'max_step'" in err and "did you mean 'max_steps'" in err


def test_unknown_config_key_in_file(capsys, tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("rl:\n  train:\n    learning_rat: 0.1\n")
    code, err = run_cli(capsys, "demo", "--config", str(f), "--print-config")
    assert code == 2
    assert str(f) in err and "unknown key 'learning_rat'" in err and "'learning_rate'" in err


def test_bad_value_type(capsys):
    code, err = run_cli(capsys, "demo", "--set", "rl.train.max_steps=many", "--print-config")
    assert code == 2 and "expected int" in err


def test_empty_dataset(capsys, tiny_dir, tmp_path):
    data = tmp_path / "empty.jsonl"
    data.write_text("\n")
    code, err = run_cli(capsys, "train", "sft", "--model", str(tiny_dir), "--data", str(data))
    assert code == 2 and "is empty" in err


def test_malformed_jsonl_line(capsys, tiny_dir, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"prompt": "1", "response": "2"}) + "\n{oops\n")
    code, err = run_cli(capsys, "train", "sft", "--model", str(tiny_dir), "--data", str(data))
    assert code == 2 and "line 2" in err and "not valid JSON" in err
