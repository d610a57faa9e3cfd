"""Audit a training environment and its configs for known *silent* training-stack bugs.

Pure functions, no printing::

    from forklens.audit import load_inputs, run_audit
    env, setup = load_inputs(requirements="freeze.txt", deepspeed_config="ds.json")
    report = run_audit(env, setup)
    report.findings        # list[Finding]
    report.to_dict()       # {"findings": [...], "checked": {...}}

The rules and the version bounds they use live in :mod:`forklens.audit.rules`; parsing of
``pip freeze`` files and configs in :mod:`forklens.audit.inputs`. ``docs/audit.md`` explains each
rule and cites the upstream pull requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from forklens.audit.inputs import (
    AUTO,
    AuditInputError,
    ConfigFileError,
    Environment,
    FreezeFormatError,
    InputFileNotFound,
    PackageInfo,
    Setting,
    TrainingSetup,
    environment_from_freeze,
    environment_from_installed,
    load_deepspeed_config,
    load_trainer_args,
    normalize_name,
    parse_freeze,
    parse_version,
    resolve_setup,
)
from forklens.audit.rules import RULES, SEVERITIES, Finding, RuleResult, relevant_packages, severity_rank
from forklens.audit.verl import load_verl_config, resolve_verl_settings

__all__ = [
    "AUTO",
    "AuditInputError",
    "AuditReport",
    "ConfigFileError",
    "Environment",
    "Finding",
    "FreezeFormatError",
    "InputFileNotFound",
    "PackageInfo",
    "RuleResult",
    "SEVERITIES",
    "Setting",
    "TrainingSetup",
    "environment_from_freeze",
    "environment_from_installed",
    "load_deepspeed_config",
    "load_inputs",
    "load_trainer_args",
    "normalize_name",
    "parse_freeze",
    "parse_version",
    "resolve_setup",
    "run_audit",
    "severity_rank",
]

BLOCKING_SEVERITY = "medium"


@dataclass
class AuditReport:
    """Findings (most severe first) and what was checked."""

    findings: list[Finding]
    results: list[RuleResult]
    environment: Environment
    setup: TrainingSetup
    notes: list[str] = field(default_factory=list)

    @property
    def blocking(self) -> bool:
        """True when a finding of severity medium or high is present (the CLI then exits 1)."""
        threshold = severity_rank(BLOCKING_SEVERITY)
        return any(severity_rank(f.severity) >= threshold for f in self.findings)

    def checked(self) -> dict[str, Any]:
        return {
            "packages_source": self.environment.source,
            "packages": {
                name: (info.to_dict() if info is not None else None)
                for name, info in relevant_packages(self.environment).items()
            },
            "deepspeed_config": self.setup.deepspeed_config_source,
            "trainer_args": self.setup.trainer_args_source,
            "verl_config": self.setup.verl.source if self.setup.verl is not None else None,
            "settings": self.setup.to_dict(),
            "rules": {result.rule_id: result.to_dict() for result in self.results},
            "notes": list(self.notes),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"findings": [f.to_dict() for f in self.findings], "checked": self.checked()}


def run_audit(env: Environment, setup: TrainingSetup) -> AuditReport:
    """Apply every rule; findings are sorted most severe first, then by id."""
    results = [rule(env, setup) for rule in RULES]
    findings = [finding for result in results for finding in result.findings]
    findings.sort(key=lambda f: (-severity_rank(f.severity), f.id))
    return AuditReport(findings, results, env, setup, notes=[*env.notes, *setup.notes])


def _deepspeed_from_trainer_args(
    trainer_args: Mapping[str, Any], trainer_path: Path
) -> tuple[dict[str, Any] | None, str | None]:
    """The DeepSpeed config a trainer-arguments file names under ``deepspeed`` (a path or a mapping)."""
    if "deepspeed" not in trainer_args or trainer_args["deepspeed"] in (None, ""):
        return None, None
    value = trainer_args["deepspeed"]
    if isinstance(value, Mapping):
        return dict(value), f"{trainer_path}: deepspeed"
    if not isinstance(value, str):
        raise ConfigFileError(
            f"{trainer_path}: deepspeed: expected a path to a DeepSpeed config or a mapping, got {value!r}"
        )
    candidates = [Path(value)] if Path(value).is_absolute() else [trainer_path.parent / value, Path(value)]
    for candidate in candidates:
        if candidate.is_file():
            return load_deepspeed_config(candidate), str(candidate)
    tried = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise InputFileNotFound(
        f"{trainer_path}: deepspeed names a DeepSpeed config that does not exist (tried {tried})"
    )


def load_inputs(
    requirements: str | Path | None = None,
    deepspeed_config: str | Path | None = None,
    trainer_args: str | Path | None = None,
    verl_config: str | Path | None = None,
) -> tuple[Environment, TrainingSetup]:
    """Read the inputs of an audit.

    ``requirements``: a ``pip freeze`` file; ``None`` audits the running interpreter's packages.
    ``deepspeed_config``: a DeepSpeed JSON; when ``None``, a ``deepspeed`` key in the trainer
    arguments (a path, relative to that file or to the working directory, or an inline mapping) is
    used instead. ``trainer_args``: a YAML or JSON file of trainer arguments. ``verl_config``: a
    verl Hydra YAML, or a launch script whose ``a.b.c=value`` overrides are read.
    """
    env = environment_from_freeze(requirements) if requirements is not None else environment_from_installed()
    ta = load_trainer_args(trainer_args) if trainer_args is not None else None
    ds = load_deepspeed_config(deepspeed_config) if deepspeed_config is not None else None
    ds_source = str(deepspeed_config) if deepspeed_config is not None else None
    notes: list[str] = []
    if ta is not None:
        if ds is None:
            ds, ds_source = _deepspeed_from_trainer_args(ta, Path(trainer_args))  # type: ignore[arg-type]
        elif ta.get("deepspeed") not in (None, ""):
            notes.append(
                f"{trainer_args}: its 'deepspeed' entry is ignored because --deepspeed-config was given"
            )
    setup = resolve_setup(ds, ds_source, ta, str(trainer_args) if trainer_args is not None else None)
    setup.notes[:0] = notes
    if verl_config is not None:
        setup.verl = resolve_verl_settings(load_verl_config(verl_config), str(verl_config))
    return env, setup
