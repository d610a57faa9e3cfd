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


def test_ranges_are_checked_and_name_key_value_bound_and_origin(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("rl:\n  sampling:\n    prompts_per_step: 0\n")
    with pytest.raises(ConfigError, match=r"c.yaml: rl.sampling.prompts_per_step=0 is out of range; expected >= 1"):
        load_config(DemoConfig, f)
    with pytest.raises(ConfigError, match=r"^override 'rl.loss.epsilon=-1': rl.loss.epsilon=-1.0 is out of range; "
                                          r"expected >= 0 \(Lower clip"):
        load_config(DemoConfig, None, ["rl.loss.epsilon=-1"])
    # the value that is wrong is named even when another key was overridden later
    with pytest.raises(ConfigError, match=r"c.yaml: rl.sampling.prompts_per_step=0"):
        load_config(DemoConfig, f, ["seed=3"])


def test_validate_checks_defaults_and_code_built_configs():
    from forklens.config import validate

    cfg = DemoConfig()
    validate(cfg)  # the defaults are valid
    cfg.rl.loss.loss_agg_mode = "mean"  # set in code, never parsed
    with pytest.raises(ConfigError, match=r"^default: rl.loss.loss_agg_mode='mean' is not valid; expected one of"):
        validate(cfg)
    cfg = DemoConfig()
    cfg.rl.train.learning_rate = float("nan")
    with pytest.raises(ConfigError, match=r"rl.train.learning_rate=nan is out of range; expected > 0"):
        validate(cfg)


def test_list_fields_are_checked_elementwise():
    from forklens.experiments.boundary import BoundaryConfig

    with pytest.raises(ConfigError, match=r"agent.agent.bridge_depths=\[1, 0\] is out of range; expected >= 1 "
                                          r"\(every element\)"):
        load_config(BoundaryConfig, None, ["agent.agent.bridge_depths=1,0"])
    assert load_config(BoundaryConfig, None, ["passk.T=0,2"]).passk.T == [0, 2]


def test_a_base_config_keeps_the_origin_of_its_values(tmp_path):
    """The packaged recipe, then --config: a bad value from the first pass is still named by its file."""
    f = tmp_path / "base.yaml"
    f.write_text("rl:\n  train:\n    max_steps: 5\n")
    base = load_config(DemoConfig, f)
    base.rl.train.max_steps = 0
    with pytest.raises(ConfigError, match=r"base.yaml: rl.train.max_steps=0"):
        load_config(DemoConfig, None, ["seed=1"], base=base)


def test_degenerate_values_warn_but_load():
    from forklens.errors import ForklensWarning

    with pytest.warns(ForklensWarning, match=r"rl.sampling.temperature=0.0 \(override .*\): greedy rollouts"):
        cfg = load_config(DemoConfig, None, ["rl.sampling.temperature=0"])
    assert cfg.rl.sampling.temperature == 0.0


def test_help_config_shows_the_recipe_defaults_without_a_model(capsys):
    from forklens.cli import main

    assert main(["train", "grpo", "--help-config"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "train.max_steps" in line)
    assert " 60 " in row  # RLConfig's recipe default, not TrainConfig's own 100
    assert main(["train", "grpo"]) == 2
    assert "--model is required" in capsys.readouterr().err
