"""Dataclass configs: YAML plus overrides, types, unknown keys."""

import pytest

from forklens.config import describe, load_config
from forklens.errors import ConfigError
from forklens.experiments.demo import DemoConfig


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("seed: 3\nrl:\n  train:\n    max_steps: 7\n  loss:\n    loss_agg_mode: seq-mean-token-mean\n")
    cfg = load_config(DemoConfig, f, ["rl.train.max_steps=9", "organism.arith.digits=2"])
    assert cfg.seed == 3
    assert cfg.rl.train.max_steps == 9  # override wins over the file
    assert cfg.rl.loss.loss_agg_mode == "seq-mean-token-mean"
    assert cfg.organism.arith.digits == 2
    assert cfg.rl.train.learning_rate == DemoConfig().rl.train.learning_rate  # untouched keys keep defaults


def test_literal_values_are_checked():
    with pytest.raises(ConfigError, match="not one of"):
        load_config(DemoConfig, None, ["rl.loss.loss_agg_mode=mean"])


def test_section_and_malformed_overrides():
    with pytest.raises(ConfigError, match="is a section"):
        load_config(DemoConfig, None, ["rl.train=3"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(DemoConfig, None, ["rl.train.max_steps"])


def test_invalid_yaml_names_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("seed: 1\nrl: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml line \d+: not valid YAML"):
        load_config(DemoConfig, f)


def test_every_key_has_help():
    rows = describe(DemoConfig)
    assert len(rows) > 30
    assert all(help_text for _, _, help_text in rows), [k for k, _, h in rows if not h]


def test_packaged_recipes_load():
    from forklens.config import packaged_config

    full = load_config(DemoConfig, packaged_config("demo"))
    quick = load_config(DemoConfig, packaged_config("demo-quick"))
    assert full == DemoConfig()  # demo.yaml spells out the defaults
    assert quick.rl.train.max_steps < full.rl.train.max_steps
