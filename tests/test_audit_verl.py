"""``forklens audit --verl-config``: reading verl YAML configs and launch scripts, and the
VERL-TOKEN-MEAN-MICRO rule on both sides of every bound."""

from __future__ import annotations

import json

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from forklens.audit import ConfigFileError, load_inputs, parse_freeze, resolve_setup, run_audit
from forklens.audit.verl import (
    VERL_RULE,
    check_verl_token_mean_accumulation,
    load_verl_config,
    resolve_verl_settings,
)
from forklens.cli import main

SCRIPT = r"""#!/bin/bash
set -x
MINI=64
export N_GPUS=8
python3 -m verl.trainer.main_ppo \
    algorithm.adv_estimator=grpo \
    data.train_batch_size=512 \
    actor_rollout_ref.actor.ppo_mini_batch_size=$MINI \
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4 \
    actor_rollout_ref.actor.loss_agg_mode="token-mean" \
    actor_rollout_ref.rollout.n=8 \
    trainer.n_gpus_per_node=${N_GPUS} \
    trainer.nnodes=1 $@  # more overrides from the caller
"""


def verl_setup(config: dict, source: str = "run.yaml"):
    setup = resolve_setup()
    setup.verl = resolve_verl_settings(config, source)
    return setup


def actor(**keys):
    return {"actor_rollout_ref": {"actor": keys}}


def check(version: str | None, config: dict):
    env = parse_freeze(f"verl=={version}" if version else "", source="freeze.txt")
    return check_verl_token_mean_accumulation(env, verl_setup(config))


def test_launch_script_overrides_and_shell_variables_are_read(tmp_path):
    path = tmp_path / "run_grpo.sh"
    path.write_text(SCRIPT)
    config = load_verl_config(path)
    v = resolve_verl_settings(config, str(path))
    assert v.ppo_mini_batch_size.value == 64
    assert v.ppo_micro_batch_size_per_gpu.value == 4
    assert v.loss_agg_mode.value == "token-mean"
    assert v.rollout_n.value == 8 and v.n_gpus_per_node.value == 8
    assert v.ppo_mini_batch_size.source == f"{path}: actor_rollout_ref.actor.ppo_mini_batch_size"
    assert v.use_dynamic_bsz.value is False and v.use_dynamic_bsz.remark == "verl default"
    # 64 * 8 / 8 GPUs = 64 sequences per GPU, 4 per micro-batch: 16 micro-batches per step
    result = check_verl_token_mean_accumulation(parse_freeze("verl==0.7.1", source="f"), resolve_setup())
    assert result.status == "not applicable"
    setup = resolve_setup()
    setup.verl = v
    result = check_verl_token_mean_accumulation(parse_freeze("verl==0.7.1", source="f"), setup)
    assert result.status == "flagged" and result.findings[0].severity == "medium"
    assert any("16 micro-batches" in line for line in result.findings[0].evidence)
    assert any("= 64 * 8 / 8 = 64" in line for line in result.findings[0].evidence)


def test_unresolved_shell_variable_reads_as_unknown(tmp_path):
    path = tmp_path / "run.sh"
    path.write_text("python3 -m verl.trainer.main_ppo actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=$MICRO\n")
    v = resolve_verl_settings(load_verl_config(path), str(path))
    assert v.ppo_micro_batch_size_per_gpu is None
    result = check_verl_token_mean_accumulation(parse_freeze("verl==0.7.1", source="f"), verl_setup({}))
    # defaults only: 256 * 1 / 8 = 32 per GPU, micro size unknown, but 8 data-parallel ranks average
    assert result.status == "flagged"
    assert any("8 data-parallel ranks" in line for line in result.findings[0].evidence)


def test_hydra_yaml_with_interpolation(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "actor_rollout_ref": {
            "actor": {"loss_agg_mode": "${algorithm.agg}", "ppo_mini_batch_size": 16,
                      "ppo_micro_batch_size_per_gpu": 16, "use_dynamic_bsz": False},
            "rollout": {"n": 1},
        },
        "algorithm": {"agg": "seq-mean-token-mean"},
        "trainer": {"n_gpus_per_node": 1, "nnodes": 1},
    }))
    v = resolve_verl_settings(load_verl_config(path), str(path))
    assert v.loss_agg_mode.value == "seq-mean-token-mean"


@pytest.mark.parametrize(
    "version,config,status,severity",
    [
        # the legacy actor with accumulation on the releases that default to it
        ("0.7.1", actor(ppo_mini_batch_size=32, ppo_micro_batch_size_per_gpu=4), "flagged", "medium"),
        ("0.6.0", actor(ppo_mini_batch_size=32, ppo_micro_batch_size_per_gpu=4), "flagged", "medium"),
        # 0.8.0 removed the legacy workers
        ("0.8.0", actor(ppo_mini_batch_size=32, ppo_micro_batch_size_per_gpu=4), "clear", None),
        ("0.9.0", actor(ppo_mini_batch_size=32, ppo_micro_batch_size_per_gpu=4), "clear", None),
        # 0.8.0 pre-releases default to the engine workers (PR #5604)
        ("0.8.0.dev0", actor(ppo_mini_batch_size=32, ppo_micro_batch_size_per_gpu=4), "clear", None),
        # opting out of the legacy workers on 0.7.x
        ("0.7.1", {**actor(ppo_mini_batch_size=32, ppo_micro_batch_size_per_gpu=4),
                   "trainer": {"use_legacy_worker_impl": "disable"}}, "clear", None),
        # 0.6's engine predates the global token count: not checked
        ("0.6.0", {**actor(ppo_mini_batch_size=32, ppo_micro_batch_size_per_gpu=4),
                   "trainer": {"use_legacy_worker_impl": "disable"}}, "not applicable", None),
        # sequence-level aggregation is weighted by sample count, which is right for it
        ("0.7.1", actor(ppo_mini_batch_size=32, ppo_micro_batch_size_per_gpu=4,
                        loss_agg_mode="seq-mean-token-mean"), "clear", None),
        # one micro-batch on one rank: nothing to average
        ("0.7.1", {**actor(ppo_mini_batch_size=4, ppo_micro_batch_size_per_gpu=4),
                   "trainer": {"n_gpus_per_node": 1, "nnodes": 1}}, "clear", None),
        # dynamic batch size packs micro-batches to a token budget
        ("0.7.1", {**actor(ppo_mini_batch_size=4, use_dynamic_bsz=True),
                   "trainer": {"n_gpus_per_node": 1}}, "flagged", "medium"),
        # megatron actor is not covered
        ("0.7.1", actor(strategy="megatron"), "not applicable", None),
        # version unknown: possible, low
        (None, actor(ppo_mini_batch_size=32, ppo_micro_batch_size_per_gpu=4), "flagged", "low"),
    ],
)
def test_rule_both_sides_of_each_bound(version, config, status, severity):
    result = check(version, config)
    assert result.status == status, result.reason
    if severity:
        assert result.findings[0].severity == severity
        assert result.findings[0].id == VERL_RULE


def test_unknown_version_with_explicit_legacy_workers_is_low():
    config = {**actor(ppo_mini_batch_size=32, ppo_micro_batch_size_per_gpu=4),
              "trainer": {"use_legacy_worker_impl": "enable"}}
    result = check(None, config)
    assert result.status == "flagged" and result.findings[0].severity == "low"
    assert "verl is not in freeze.txt" in result.findings[0].evidence[0]


@settings(max_examples=60, deadline=None)
@given(
    mini=st.sampled_from([8, 16, 32, 64, 256]),
    micro=st.sampled_from([1, 2, 4, 8]),
    n=st.sampled_from([1, 4, 8]),
    gpus=st.sampled_from([1, 2, 8]),
    dynamic=st.booleans(),
)
def test_flagged_exactly_when_a_step_averages_several_micro_batches(mini, micro, n, gpus, dynamic):
    config = {"actor_rollout_ref": {"actor": {"ppo_mini_batch_size": mini, "ppo_micro_batch_size_per_gpu": micro,
                                              "use_dynamic_bsz": dynamic},
                                    "rollout": {"n": n}},
              "trainer": {"n_gpus_per_node": gpus, "nnodes": 1}}
    per_gpu = mini * n // gpus
    several = dynamic or gpus > 1 or per_gpu // micro > 1
    result = check("0.7.1", config)
    assert result.status == ("flagged" if several else "clear")


@pytest.mark.parametrize(
    "content,message",
    [
        ("actor_rollout_ref:\n  actor:\n    ppo_mini_batch_size: many\n", "ppo_mini_batch_size: expected a positive integer"),
        ("actor_rollout_ref:\n  actor:\n    use_dynamic_bsz: 3\n", "use_dynamic_bsz: expected true or false"),
        ("actor_rollout_ref:\n  actor: [1,\n", "config.yaml:3: not valid YAML"),
        ("- a\n- b\n", "expected a YAML mapping"),
    ],
)
def test_bad_yaml_values_name_file_and_key(tmp_path, content, message):
    path = tmp_path / "config.yaml"
    path.write_text(content)
    with pytest.raises(ConfigFileError, match=message.replace("[", r"\[")):
        load_inputs(requirements=None, verl_config=path)


def test_script_without_overrides_and_missing_file(tmp_path):
    path = tmp_path / "run.sh"
    path.write_text("echo hello\n")
    with pytest.raises(ConfigFileError, match="no verl settings found"):
        load_verl_config(path)
    with pytest.raises(ConfigFileError, match=r"run.sh:1: cannot split"):
        path.write_text("python3 -m verl.trainer.main_ppo trainer.nnodes='1\n")
        load_verl_config(path)
    with pytest.raises(Exception, match="does not exist|not found|No such"):
        load_inputs(verl_config=tmp_path / "absent.yaml")


def test_cli_flags_verl_and_exits_1(tmp_path, capsys):
    script = tmp_path / "run_grpo.sh"
    script.write_text(SCRIPT)
    freeze = tmp_path / "freeze.txt"
    freeze.write_text("verl==0.7.1\ntorch==2.6.0\n")
    code = main(["audit", "--requirements", str(freeze), "--verl-config", str(script), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1
    assert [f["id"] for f in out["findings"]] == [VERL_RULE]
    assert out["checked"]["verl_config"] == str(script)
    assert out["checked"]["settings"]["verl"]["ppo_mini_batch_size"]["value"] == 64
    assert out["checked"]["packages"]["verl"]["version"] == "0.7.1"
    freeze.write_text("verl==0.8.0\n")
    assert main(["audit", "--requirements", str(freeze), "--verl-config", str(script)]) == 0
    assert "VERL-TOKEN-MEAN-MICRO" in capsys.readouterr().out


def test_report_lists_the_rule_without_a_verl_config(tmp_path):
    env = parse_freeze("verl==0.7.1", source="f")
    report = run_audit(env, resolve_setup())
    assert report.checked()["rules"][VERL_RULE]["status"] == "not applicable"
    assert report.checked()["verl_config"] is None
