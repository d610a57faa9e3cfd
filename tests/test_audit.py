"""Tests of ``forklens audit``: freeze/config parsing, the four rules both ways, errors, CLI exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forklens.audit import (
    BLOCKING_SEVERITY,
    ConfigFileError,
    FreezeFormatError,
    InputFileNotFound,
    load_inputs,
    parse_freeze,
    resolve_setup,
    run_audit,
    severity_rank,
)
from forklens.audit.inputs import environment_from_installed
from forklens.audit.rules import (
    check_deepspeed_offload_accumulation,
    check_openrlhf_loss_aggregation,
    check_transformers_accumulation_loss,
    check_trl_dapo_normalization,
)
from forklens.cli import main
from forklens.errors import ForklensError

DS_ZERO2_CPU = {
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": 4,
    "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu", "pin_memory": True}},
}


def ds_config(stage=2, device="cpu", ga=4):
    cfg = {"zero_optimization": {"stage": stage, "offload_optimizer": {"device": device}}}
    if ga is not None:
        cfg["gradient_accumulation_steps"] = ga
    return cfg


def env_of(**versions):
    lines = [f"{name}=={version}" for name, version in versions.items()]
    return parse_freeze("\n".join(lines), source="freeze.txt")


def ds_result(version="0.18.9", **cfg):
    env = env_of(deepspeed=version)
    return check_deepspeed_offload_accumulation(env, resolve_setup(ds_config(**cfg), "ds.json"))


def write(tmp_path: Path, name: str, content) -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


# ------------------------------------------------------------------------------------------------
# freeze parsing


def test_parse_freeze_understands_pip_freeze_lines():
    text = """\
# a comment

DeepSpeed==0.18.9
Foo_Bar.baz==1.2.3  # inline comment
transformers===4.45.2
trl @ file:///wheels/trl-0.20.0-py3-none-any.whl
openrlhf @ file:///src/openrlhf
-e git+https://github.com/org/repo.git@abc123#egg=my_pkg
# Editable install with no version control (forklens==0.1.0)
-e /work/main
torch==2.5.1 \\
    --hash=sha256:deadbeef
--extra-index-url https://example.org/simple
numpy==2.0.0 ; python_version >= "3.9"
"""
    env = parse_freeze(text, source="f.txt")
    assert env.get("deepspeed").version == "0.18.9"
    assert env.get("DeepSpeed").source == "f.txt line 3"
    assert env.get("foo-bar-baz").version == "1.2.3"  # PEP 503: _ and . become -
    assert env.get("FOO_BAR.BAZ") is env.get("foo-bar-baz")
    assert env.get("transformers").version == "4.45.2"
    assert env.get("trl").version == "0.20.0"  # from the wheel file name
    openrlhf = env.get("openrlhf")
    assert openrlhf.version is None and "file:///src/openrlhf" in openrlhf.note
    assert "version unknown" in openrlhf.describe()
    assert env.get("my-pkg").version is None
    assert env.get("forklens").version == "0.1.0"  # from pip's editable comment
    assert env.get("torch").version == "2.5.1"
    assert env.get("numpy").version == "2.0.0"


@pytest.mark.parametrize(
    "line",
    ["==1.0", "deepspeed==", "deepspeed==not a version", "just some words", "deepspeed==0.18.9 ==1"],
)
def test_malformed_freeze_line_names_the_line(line):
    with pytest.raises(FreezeFormatError, match=r"f\.txt line 3: cannot parse"):
        parse_freeze(f"# header\ntorch==2.5.1\n{line}\n", source="f.txt")


def test_freeze_conflicting_duplicate_is_an_error():
    with pytest.raises(FreezeFormatError, match=r"line 3: deepspeed is listed twice .*0\.18\.9 at line 1"):
        parse_freeze("deepspeed==0.18.9\ntorch==2.5.1\nDeepSpeed==0.19.0\n", source="f.txt")


def test_freeze_errors_are_forklens_errors():
    assert issubclass(FreezeFormatError, ForklensError)
    assert issubclass(ConfigFileError, ForklensError)
    assert issubclass(InputFileNotFound, ForklensError)


def test_installed_environment_uses_importlib_metadata():
    dists = [
        SimpleNamespace(metadata={"Name": "DeepSpeed"}, version="0.18.9"),
        SimpleNamespace(metadata={"Name": "trl"}, version="0.20.0"),
    ]
    env = environment_from_installed(dists)
    assert env.get("deepspeed").version == "0.18.9"
    assert env.get("trl").source == "installed environment"


# ------------------------------------------------------------------------------------------------
# rule 1: DeepSpeed ZeRO-1/2 CPU offload + gradient accumulation


def test_deepspeed_0_18_9_zero2_cpu_offload_ga4_is_flagged_high():
    result = ds_result("0.18.9", stage=2, device="cpu", ga=4)
    assert result.status == "flagged"
    (finding,) = result.findings
    assert finding.severity == "high"
    assert finding.id == "DS-OFFLOAD-GA-DROP"
    assert any("deepspeed 0.18.9" in line for line in finding.evidence)
    assert any("zero_optimization.offload_optimizer.device" in line for line in finding.evidence)
    assert any("gradient_accumulation_steps = 4" in line for line in finding.evidence)
    assert "https://github.com/deepspeedai/DeepSpeed/pull/7967" in finding.references
    assert "2 of 4" in finding.consequence


@pytest.mark.parametrize(
    "version, cfg, expected",
    [
        ("0.19.0", dict(stage=2, device="cpu", ga=4), "clear"),  # fixed release
        ("0.18.9", dict(stage=2, device="cpu", ga=1), "clear"),  # no accumulation
        ("0.18.9", dict(stage=2, device="none", ga=4), "clear"),  # no offload
        ("0.18.9", dict(stage=3, device="cpu", ga=4), "clear"),  # ZeRO-3 unaffected
        ("0.18.9", dict(stage=0, device="cpu", ga=4), "clear"),
        ("0.15.1", dict(stage=1, device="cpu", ga=8), "clear"),  # before PR #6550
        ("0.15.2", dict(stage=1, device="cpu", ga=8), "flagged"),
        ("0.18.9", dict(stage=1, device="CPU", ga=8), "flagged"),
    ],
)
def test_deepspeed_rule_boundaries(version, cfg, expected):
    assert ds_result(version, **cfg).status == expected


def test_deepspeed_k2_is_info_and_does_not_block():
    result = ds_result("0.18.9", ga=2)
    assert result.findings[0].severity == "info"
    report = run_audit(env_of(deepspeed="0.18.9"), resolve_setup(ds_config(ga=2), "ds.json"))
    assert not report.blocking


def test_deepspeed_unknown_accumulation_or_version_is_low():
    assert ds_result("0.18.9", ga="auto").findings[0].severity == "low"
    env = parse_freeze("deepspeed @ git+https://github.com/deepspeedai/DeepSpeed@main\n")
    result = check_deepspeed_offload_accumulation(env, resolve_setup(ds_config(), "ds.json"))
    assert result.findings[0].severity == "low"
    assert "version unknown" in result.findings[0].title


def test_deepspeed_auto_accumulation_resolved_from_trainer_args():
    setup = resolve_setup(
        ds_config(ga="auto"), "ds.json", {"gradient_accumulation_steps": 4}, "args.yaml"
    )
    assert setup.gradient_accumulation_steps.value == 4
    assert setup.gradient_accumulation_steps.source == "args.yaml: gradient_accumulation_steps"
    finding = check_deepspeed_offload_accumulation(env_of(deepspeed="0.18.9"), setup).findings[0]
    assert finding.severity == "high"
    assert any('ds.json has "auto"' in line for line in finding.evidence)


def test_deepspeed_legacy_cpu_offload_key_and_openrlhf_style_args():
    legacy = {"gradient_accumulation_steps": 8, "zero_optimization": {"stage": 2, "cpu_offload": True}}
    env = env_of(deepspeed="0.17.0")
    result = check_deepspeed_offload_accumulation(env, resolve_setup(legacy, "ds.json"))
    assert result.findings[0].severity == "high"
    openrlhf_args = {
        "zero_stage": 2, "adam_offload": True, "train_batch_size": 64,
        "micro_train_batch_size": 2, "world_size": 8,
    }
    setup = resolve_setup(None, None, openrlhf_args, "args.yaml")
    assert setup.gradient_accumulation_steps.value == 4
    assert check_deepspeed_offload_accumulation(env, setup).findings[0].severity == "high"


def test_deepspeed_not_installed_is_not_applicable():
    result = check_deepspeed_offload_accumulation(env_of(torch="2.5.1"), resolve_setup(ds_config(), "ds.json"))
    assert result.status == "not applicable"


_PHASES = {"dev0": -2, "rc1": -1, "": 0, "post1": 1}


@settings(max_examples=300, deadline=None)
@given(
    minor=st.integers(13, 21),
    micro=st.integers(0, 12),
    suffix=st.sampled_from(sorted(_PHASES)),
    k=st.integers(1, 64),
)
def test_deepspeed_rule_matches_bounds_for_any_version(minor, micro, suffix, k):
    sep = "." if suffix in ("dev0", "post1") else ""
    version = f"0.{minor}.{micro}{sep}{suffix}" if suffix else f"0.{minor}.{micro}"
    key = (minor, micro, _PHASES[suffix])
    in_range = (15, 2, 0) <= key < (19, 0, 0)  # independent oracle for >=0.15.2,<0.19.0
    result = ds_result(version, ga=k)
    if not in_range or k == 1:
        assert result.status == "clear", version
    else:
        assert result.status == "flagged", version
        assert result.findings[0].severity == ("info" if k == 2 else "high")


# ------------------------------------------------------------------------------------------------
# rule 2: transformers gradient-accumulation loss


def hf(version, ga):
    setup = resolve_setup(None, None, {"gradient_accumulation_steps": ga}, "args.yaml")
    return check_transformers_accumulation_loss(env_of(transformers=version), setup)


def test_transformers_rule_both_ways():
    flagged = hf("4.45.2", 8)
    assert flagged.status == "flagged" and flagged.findings[0].severity == "medium"
    assert "https://github.com/huggingface/transformers/pull/34191" in flagged.findings[0].references
    assert hf("4.46.0", 8).status == "clear"
    assert hf("4.45.2", 1).status == "clear"
    unknown_ga = check_transformers_accumulation_loss(env_of(transformers="4.45.2"), resolve_setup())
    assert unknown_ga.status == "not applicable"


@given(st.sampled_from(["4.46.0rc1", "4.46.0.dev0", "4.45.99", "4.30.0.post1", "3.5.1"]))
def test_transformers_prereleases_before_fix_are_flagged(version):
    assert hf(version, 4).status == "flagged"


@given(st.sampled_from(["4.46.0", "4.46.0.post1", "4.46.3", "4.57.1", "5.0.0rc1", "5.24.0"]))
def test_transformers_fixed_versions_are_clear(version):
    assert hf(version, 4).status == "clear"


# ------------------------------------------------------------------------------------------------
# rule 3: TRL dapo normaliser


def trl(args, version="0.24.0"):
    return check_trl_dapo_normalization(env_of(trl=version), resolve_setup(None, None, args, "args.yaml"))


def test_trl_dapo_with_steps_per_generation_different_from_accumulation_is_flagged():
    result = trl({"loss_type": "dapo", "gradient_accumulation_steps": 2, "steps_per_generation": 4})
    assert result.status == "flagged"
    finding = result.findings[0]
    assert finding.severity == "low"  # fix release not established
    assert any("2/4 = 0.5" in line for line in finding.evidence)
    assert any("could not be established" in line for line in finding.evidence)
    assert "https://github.com/huggingface/trl/pull/6024" in finding.references


@pytest.mark.parametrize(
    "args",
    [
        {"loss_type": "dapo", "gradient_accumulation_steps": 4, "steps_per_generation": 4},
        {"loss_type": "dapo", "gradient_accumulation_steps": 4},  # default steps_per_generation = GA
        {"loss_type": "grpo", "gradient_accumulation_steps": 2, "steps_per_generation": 4},
        {"loss_type": "dr_grpo", "gradient_accumulation_steps": 2, "steps_per_generation": 8},
    ],
)
def test_trl_clear_cases(args):
    assert trl(args).status == "clear"


def test_trl_generation_batch_size_derivation():
    args = {
        "loss_type": "cispo", "gradient_accumulation_steps": 2, "generation_batch_size": 64,
        "per_device_train_batch_size": 8, "num_processes": 2,
    }
    assert trl(args).status == "flagged"  # 64 / (8*2) = 4 != 2
    assert trl({**args, "generation_batch_size": 32}).status == "clear"  # 32 / 16 = 2
    without_world = {k: v for k, v in args.items() if k != "num_processes"}
    assert trl(without_world).status == "not applicable"
    assert trl({"gradient_accumulation_steps": 2, "steps_per_generation": 4}).status == "not applicable"


# ------------------------------------------------------------------------------------------------
# rule 4: OpenRLHF loss aggregation


def orl(args):
    return check_openrlhf_loss_aggregation(env_of(openrlhf="0.8.5"), resolve_setup(None, None, args, "a.yaml"))


def test_openrlhf_rule_both_ways():
    flagged = orl({"train_batch_size": 128, "micro_train_batch_size": 4})
    assert flagged.status == "flagged" and flagged.findings[0].severity == "low"
    assert any("could be established" in line for line in flagged.findings[0].evidence)
    assert orl({"gradient_accumulation_steps": 4}).status == "flagged"
    assert orl({"train_batch_size": 4, "micro_train_batch_size": 4}).status == "clear"
    assert orl({}).status == "not applicable"
    assert check_openrlhf_loss_aggregation(env_of(torch="2.5.1"), resolve_setup()).status == "not applicable"


# ------------------------------------------------------------------------------------------------
# config files and errors


def test_load_inputs_follows_trainer_args_deepspeed_path(tmp_path):
    freeze = write(tmp_path, "freeze.txt", "deepspeed==0.18.9\n")
    (tmp_path / "configs").mkdir()
    write(tmp_path, "configs/ds.json", ds_config(ga="auto"))
    args = write(tmp_path, "args.yaml", "gradient_accumulation_steps: 4\ndeepspeed: configs/ds.json\n")
    env, setup = load_inputs(requirements=freeze, trainer_args=args)
    assert setup.deepspeed_config_source == str(tmp_path / "configs" / "ds.json")
    assert run_audit(env, setup).findings[0].severity == "high"


def test_inline_deepspeed_dict_in_trainer_args(tmp_path):
    args = write(tmp_path, "args.json", {"gradient_accumulation_steps": 4, "deepspeed": ds_config(ga="auto")})
    _, setup = load_inputs(requirements=write(tmp_path, "f.txt", "deepspeed==0.18.9\n"), trainer_args=args)
    assert setup.zero_stage.value == 2 and setup.offload_optimizer_device.value == "cpu"


def test_missing_files_raise_input_file_not_found(tmp_path):
    with pytest.raises(InputFileNotFound, match="requirements file not found: .*nope.txt"):
        load_inputs(requirements=tmp_path / "nope.txt")
    with pytest.raises(InputFileNotFound, match="DeepSpeed config not found"):
        load_inputs(requirements=write(tmp_path, "f.txt", ""), deepspeed_config=tmp_path / "ds.json")
    args = write(tmp_path, "args.yaml", "deepspeed: missing.json\n")
    with pytest.raises(InputFileNotFound, match="deepspeed names a DeepSpeed config that does not exist"):
        load_inputs(requirements=write(tmp_path, "f.txt", ""), trainer_args=args)


def test_malformed_json_reports_line(tmp_path):
    bad = write(tmp_path, "ds.json", '{\n  "zero_optimization": {\n    "stage": 2,\n  }\n}\n')
    with pytest.raises(ConfigFileError, match=r"malformed JSON in DeepSpeed config at line 4"):
        load_inputs(requirements=write(tmp_path, "f.txt", ""), deepspeed_config=bad)


def test_malformed_yaml_reports_line(tmp_path):
    bad = write(tmp_path, "args.yaml", "gradient_accumulation_steps: 4\nloss_type: [dapo\nfoo: 1\n")
    with pytest.raises(ConfigFileError, match=r"malformed YAML in trainer arguments at line \d"):
        load_inputs(requirements=write(tmp_path, "f.txt", ""), trainer_args=bad)


@pytest.mark.parametrize(
    "content, message",
    [
        ("- a\n- b\n", "must be a mapping"),
        ("", "is empty"),
        ("gradient_accumulation_steps: four\n", "gradient_accumulation_steps: expected an integer"),
        ("gradient_accumulation_steps: 0\n", "must be at least 1"),
        ("gradient_accumulation_steps: true\n", "expected an integer"),
        ("loss_type: 3\n", "loss_type: expected a string"),
        ("zero_stage: 5\n", "zero_stage: expected 0, 1, 2 or 3"),
    ],
)
def test_bad_trainer_args_values(tmp_path, content, message):
    args = write(tmp_path, "args.yaml", content)
    with pytest.raises(ConfigFileError, match=message):
        load_inputs(requirements=write(tmp_path, "f.txt", ""), trainer_args=args)


def test_bad_deepspeed_values(tmp_path):
    f = write(tmp_path, "f.txt", "")
    bad_ga = write(tmp_path, "a.json", {"gradient_accumulation_steps": "many"})
    with pytest.raises(ConfigFileError, match=r'a\.json: gradient_accumulation_steps: expected an integer or "auto"'):
        load_inputs(requirements=f, deepspeed_config=bad_ga)
    bad_device = write(tmp_path, "b.json", {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": 1}}})
    with pytest.raises(ConfigFileError, match="offload_optimizer.device: expected a device name"):
        load_inputs(requirements=f, deepspeed_config=bad_device)


def test_mismatched_accumulation_is_noted(tmp_path):
    setup = resolve_setup(ds_config(ga=4), "ds.json", {"gradient_accumulation_steps": 8}, "a.yaml")
    assert setup.gradient_accumulation_steps.value == 4
    assert any("differs" in note for note in setup.notes)


# ------------------------------------------------------------------------------------------------
# CLI


def cli(*argv):
    return main(["audit", *map(str, argv)])


def test_cli_flags_and_exits_1(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # keep long temporary paths on one line
    freeze = write(tmp_path, "freeze.txt", "deepspeed==0.18.9\n")
    ds = write(tmp_path, "ds.json", DS_ZERO2_CPU)
    assert cli("--requirements", freeze, "--deepspeed-config", ds) == 1
    out = capsys.readouterr().out
    assert "DS-OFFLOAD-GA-DROP" in out and "HIGH" in out and "freeze.txt line 1" in out


def test_cli_json_output(tmp_path, capsys):
    freeze = write(tmp_path, "freeze.txt", "deepspeed==0.18.9\ntransformers==4.45.2\n")
    ds = write(tmp_path, "ds.json", ds_config(ga="auto"))
    args = write(tmp_path, "args.yaml", "gradient_accumulation_steps: 4\n")
    code = cli("--requirements", freeze, "--deepspeed-config", ds, "--trainer-args", args, "--json")
    assert code == 1
    data = json.loads(capsys.readouterr().out)
    assert [f["id"] for f in data["findings"]] == ["DS-OFFLOAD-GA-DROP", "HF-GA-LOSS-NORM"]
    assert set(data["findings"][0]) == {"id", "severity", "title", "evidence", "consequence", "fix", "references"}
    checked = data["checked"]
    assert checked["packages"]["deepspeed"]["version"] == "0.18.9"
    assert checked["packages"]["trl"] is None
    assert checked["settings"]["gradient_accumulation_steps"]["value"] == 4
    assert checked["rules"]["TRL-DAPO-NORM"]["status"] == "not applicable"


@pytest.mark.parametrize("version, ga", [("0.19.0", 4), ("0.18.9", 2)])
def test_cli_exits_0_without_medium_findings(tmp_path, capsys, version, ga):
    freeze = write(tmp_path, "freeze.txt", f"deepspeed=={version}\n")
    ds = write(tmp_path, "ds.json", ds_config(ga=ga))
    assert cli("--requirements", freeze, "--deepspeed-config", ds) == 0


def test_cli_bad_input_exits_2_without_traceback(tmp_path, capsys):
    freeze = write(tmp_path, "freeze.txt", "torch==2.5.1\nthis is not a requirement\n")
    assert cli("--requirements", freeze) == 2
    err = capsys.readouterr().err
    assert "forklens audit: error:" in err and "line 2" in err and "Traceback" not in err
    assert cli("--requirements", tmp_path / "missing.txt") == 2
    assert "requirements file not found" in capsys.readouterr().err
    bad = write(tmp_path, "ds.json", "{not json")
    assert cli("--requirements", write(tmp_path, "ok.txt", ""), "--deepspeed-config", bad) == 2
    assert "malformed JSON" in capsys.readouterr().err


def test_cli_defaults_to_installed_environment(capsys):
    code = cli("--json")
    data = json.loads(capsys.readouterr().out)
    blocking = any(severity_rank(f["severity"]) >= severity_rank(BLOCKING_SEVERITY) for f in data["findings"])
    assert code == (1 if blocking else 0)  # exit 1 exactly when a finding of medium or above is reported
    assert data["checked"]["packages_source"].startswith("installed environment")
