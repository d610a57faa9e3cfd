"""Organism pretraining options (arXiv 2605.20613): response-only or whole-sequence loss, causal or PrefixLM
attention, the recurrent model class with warmed-up truncated backprop; defaults keep every organism as it was."""

import json
from dataclasses import replace

import pytest
from transformers import AutoConfig

from forklens.errors import ConfigError
from forklens.organisms.arith import OrganismConfig, build_base_organism, organism_key
from forklens.organisms.base import NEUTRAL_MODEL_SETTINGS, OrganismModelConfig
from forklens.tasks.arith import ArithConfig
from forklens.train.loop import TrainConfig


def _tiny(**model) -> OrganismConfig:
    return OrganismConfig(arith=ArithConfig(digits=2), batch_size=8,
                          model=OrganismModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                    num_attention_heads=4, max_position_embeddings=64, **model),
                          pretrain=TrainConfig(max_steps=4, learning_rate=3e-3, micro_batch_size=8))


def test_defaults_are_neutral_and_every_option_changes_the_key(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    cfg = OrganismConfig()
    assert organism_key(cfg) == "0b8aa65290a1cf95"
    assert {k: getattr(cfg.model, k) for k in NEUTRAL_MODEL_SETTINGS} == NEUTRAL_MODEL_SETTINGS
    keys = {organism_key(replace(cfg, model=replace(cfg.model, **{k: v})))
            for k, v in [("architecture", "recurrent"), ("architecture", "transformer"), ("loss", "sequence"),
                         ("prompt_end", "=")]}
    assert len(keys) == 4 and organism_key(cfg) not in keys
    rec = replace(cfg, model=replace(cfg.model, architecture="recurrent"))
    assert organism_key(replace(rec, model=replace(rec.model, h_cycles=1))) != organism_key(rec)


def _metrics(out):
    return [json.loads(x) for x in (out / "pretrain_metrics.jsonl").read_text().splitlines()]


def test_recurrent_prefix_sequence_loss_organism(tmp_path):
    out = tmp_path / "rec"
    info = build_base_organism(_tiny(architecture="recurrent", attention="prefix", loss="sequence", h_cycles=2,
                                     l_cycles=1, bptt_start=1, bptt_end=4), out, use_cache=False, progress=False)
    assert info["steps"] == 4
    cfg = AutoConfig.from_pretrained(out)
    assert cfg.model_type == "forklens-recurrent" and cfg.prefix_lm and cfg.architecture == "recurrent"
    assert cfg.applications == 4 and cfg.bptt_steps == 4  # the saved depth is the warm-up's end
    from forklens.policy import Policy

    policy = Policy.load(out)
    assert policy.tokenizer.convert_ids_to_tokens(cfg.prompt_end_token_id) == "="  # "12+34=" prompts
    assert [m["bptt_steps"] for m in _metrics(out)] == [2.0, 3.0, 4.0, 4.0]
    resp = tmp_path / "resp"
    build_base_organism(_tiny(architecture="recurrent", attention="prefix", h_cycles=2, l_cycles=1), resp,
                        use_cache=False, progress=False)
    seq_count, resp_count = _metrics(out)[0]["loss_count"], _metrics(resp)[0]["loss_count"]
    # same teacher batch: P(x) also trains the prompt tokens after the first ("12+34=": 6 chars, no BOS)
    assert seq_count - resp_count == 8 * (6 - 1)


def test_bad_option_combinations_fail_clearly(tmp_path):
    with pytest.raises(ConfigError, match="architecture=transformer or recurrent"):
        build_base_organism(_tiny(attention="prefix"), tmp_path / "a", use_cache=False, progress=False)
    with pytest.raises(ConfigError, match="does not end with"):
        build_base_organism(_tiny(architecture="transformer", attention="prefix", prompt_end="+"), tmp_path / "b",
                            use_cache=False, progress=False)
