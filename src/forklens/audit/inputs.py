"""Inputs of ``forklens audit``: package versions and training configs, with provenance.

Everything here is pure parsing: a ``pip freeze`` text or the running interpreter's installed
distributions become :class:`Environment`; a DeepSpeed JSON and a trainer-arguments YAML/JSON file
become :class:`TrainingSetup`, where every resolved value remembers which file and key it came from.
Bad input raises the :class:`~forklens.errors.ForklensError` subclasses defined below, with the file,
line or key that was wrong.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml


__all__ = [
    "AUTO",
    "AuditInputError",
    "ConfigFileError",
    "Environment",
    "FreezeFormatError",
    "InputFileNotFound",
    "PackageInfo",
    "Setting",
    "TrainingSetup",
    "environment_from_freeze",
    "environment_from_installed",
    "load_deepspeed_config",
    "load_trainer_args",
    "normalize_name",
    "parse_freeze",
    "parse_version",
    "resolve_setup",
]


# --------------------------------------------------------------------------------------------------
# errors


from forklens.audit.environment import (AuditInputError, ConfigFileError, Environment, FreezeFormatError,
                                       InputFileNotFound, PackageInfo, environment_from_freeze,
                                       environment_from_installed, normalize_name, parse_freeze, parse_version,
                                       read_text)


# --------------------------------------------------------------------------------------------------
# config files


class _Auto:
    """The DeepSpeed/HF placeholder ``"auto"``: filled in from the trainer arguments at run time."""

    def __repr__(self) -> str:
        return '"auto"'

    def __reduce__(self) -> str:
        return "AUTO"


AUTO = _Auto()


def _load_mapping(path: str | Path, what: str, fmt: str) -> dict[str, Any]:
    text = read_text(path, what, ConfigFileError)
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigFileError(
                f"{path}: malformed JSON in {what} at line {exc.lineno}, column {exc.colno}: {exc.msg}"
            ) from None
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
            if context and context_mark is not None and context_mark is not mark:
                problem += f" ({context} at line {context_mark.line + 1})"
            raise ConfigFileError(f"{path}: malformed YAML in {what}{where}: {problem}") from None
    if data is None:
        raise ConfigFileError(f"{path}: {what} is empty")
    if not isinstance(data, dict):
        raise ConfigFileError(
            f"{path}: {what} must be a mapping of keys to values at the top level, "
            f"got a {type(data).__name__}"
        )
    return data


def load_deepspeed_config(path: str | Path) -> dict[str, Any]:
    """A DeepSpeed config: JSON, or YAML when the file name ends in ``.yaml``/``.yml``."""
    fmt = "yaml" if Path(path).suffix.lower() in (".yaml", ".yml") else "json"
    return _load_mapping(path, "DeepSpeed config", fmt)


def load_trainer_args(path: str | Path) -> dict[str, Any]:
    """Trainer arguments: JSON when the name ends in ``.json``, YAML otherwise."""
    fmt = "json" if Path(path).suffix.lower() == ".json" else "yaml"
    return _load_mapping(path, "trainer arguments", fmt)


# --------------------------------------------------------------------------------------------------
# resolved settings


@dataclass(frozen=True)
class Setting:
    """A resolved value and where it came from (``file: key``), plus an optional remark."""

    value: Any
    source: str
    remark: str | None = None

    def describe(self) -> str:
        """``file: key = value`` plus the remark, e.g. ``ta.yaml: gradient_accumulation_steps = 4``."""
        value = json.dumps(self.value) if isinstance(self.value, str) else repr(self.value)
        text = f"{self.source} = {value}"
        return f"{text} ({self.remark})" if self.remark else text

    def to_dict(self) -> dict[str, Any]:
        out = {"value": self.value, "source": self.source}
        if self.remark:
            out["remark"] = self.remark
        return out


@dataclass
class TrainingSetup:
    """The training settings the rules look at. ``None`` means "not given anywhere"."""

    gradient_accumulation_steps: Setting | None = None
    zero_stage: Setting | None = None
    offload_optimizer_device: Setting | None = None
    loss_type: Setting | None = None
    steps_per_generation: Setting | None = None
    generation_batch_size: Setting | None = None
    per_device_train_batch_size: Setting | None = None
    num_processes: Setting | None = None
    train_batch_size: Setting | None = None
    micro_train_batch_size: Setting | None = None
    deepspeed_config_source: str | None = None
    trainer_args_source: str | None = None
    verl: Any = None  # forklens.audit.verl.VerlSettings when a verl config was given
    notes: list[str] = field(default_factory=list)

    SETTING_NAMES = (
        "gradient_accumulation_steps", "zero_stage", "offload_optimizer_device", "loss_type",
        "steps_per_generation", "generation_batch_size", "per_device_train_batch_size",
        "num_processes", "train_batch_size", "micro_train_batch_size",
    )

    def to_dict(self) -> dict[str, Any]:
        settings = {}
        for name in self.SETTING_NAMES:
            value = getattr(self, name)
            settings[name] = value.to_dict() if value is not None else None
        if self.verl is not None:
            settings["verl"] = self.verl.to_dict()
        return settings


def _as_int(value: Any, where: str, *, allow_auto: bool = False) -> int | _Auto:
    if allow_auto and isinstance(value, str) and value.strip().lower() == "auto":
        return AUTO
    if isinstance(value, bool):
        pass
    elif isinstance(value, int):
        return value
    elif isinstance(value, float) and value.is_integer():
        return int(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    expected = 'an integer or "auto"' if allow_auto else "an integer"
    raise ConfigFileError(f"{where}: expected {expected}, got {value!r}")


def _positive(value: int | _Auto, where: str) -> int | _Auto:
    if value is not AUTO and value < 1:  # type: ignore[operator]
        raise ConfigFileError(f"{where}: must be at least 1, got {value}")
    return value


def _lookup(mapping: Mapping[str, Any], *path: str) -> tuple[bool, Any]:
    node: Any = mapping
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return False, None
        node = node[key]
    return True, node


def _device(value: Any, where: str) -> str:
    if value is None:
        return "none"
    if not isinstance(value, str):
        raise ConfigFileError(f'{where}: expected a device name ("none", "cpu" or "nvme"), got {value!r}')
    return value.strip().lower()


def resolve_setup(
    deepspeed_config: Mapping[str, Any] | None = None,
    deepspeed_source: str | None = None,
    trainer_args: Mapping[str, Any] | None = None,
    trainer_source: str | None = None,
) -> TrainingSetup:
    """Combine a DeepSpeed config and trainer arguments into one :class:`TrainingSetup`.

    Gradient accumulation comes from the DeepSpeed config when it holds an integer; ``"auto"`` (or
    absence) defers to the trainer arguments' ``gradient_accumulation_steps``, and failing that to
    OpenRLHF-style ``train_batch_size / (micro_train_batch_size * world_size)`` when all three are
    given. ZeRO stage and optimizer offload come from the DeepSpeed config, or from OpenRLHF-style
    ``zero_stage`` / ``adam_offload`` trainer arguments. Values of the wrong type raise
    :class:`ConfigFileError` naming the file and key.
    """
    setup = TrainingSetup(deepspeed_config_source=deepspeed_source, trainer_args_source=trainer_source)
    ds = deepspeed_config or {}
    ta = trainer_args or {}
    ds_name = deepspeed_source or "DeepSpeed config"
    ta_name = trainer_source or "trainer arguments"

    def ta_int(key: str) -> Setting | None:
        present, raw = _lookup(ta, key)
        if not present or raw is None:
            return None
        value = _positive(_as_int(raw, f"{ta_name}: {key}", allow_auto=True), f"{ta_name}: {key}")
        if value is AUTO:
            return None
        return Setting(value, f"{ta_name}: {key}")

    # ---- gradient accumulation
    ds_ga: Setting | None = None
    ds_ga_auto = False
    present, raw = _lookup(ds, "gradient_accumulation_steps")
    if present and raw is not None:
        where = f"{ds_name}: gradient_accumulation_steps"
        value = _positive(_as_int(raw, where, allow_auto=True), where)
        if value is AUTO:
            ds_ga_auto = True
        else:
            ds_ga = Setting(value, where)
    ta_ga = ta_int("gradient_accumulation_steps")
    if ds_ga is not None:
        if ta_ga is not None and ta_ga.value != ds_ga.value:
            setup.notes.append(
                f"gradient_accumulation_steps differs: {ds_ga.value} in {ds_name} but {ta_ga.value} "
                f"in {ta_name}; the DeepSpeed engine uses {ds_ga.value} (the HF Trainer refuses "
                "such a mismatch at start-up)"
            )
        setup.gradient_accumulation_steps = ds_ga
    elif ta_ga is not None:
        remark = f'{ds_name} has "auto"' if ds_ga_auto else None
        setup.gradient_accumulation_steps = Setting(ta_ga.value, ta_ga.source, remark)
    else:
        setup.train_batch_size = ta_int("train_batch_size")
        setup.micro_train_batch_size = ta_int("micro_train_batch_size")
        world = ta_int("world_size") or ta_int("num_processes")
        tbs, mbs = setup.train_batch_size, setup.micro_train_batch_size
        if tbs and mbs and world:
            per_step = mbs.value * world.value
            if tbs.value % per_step:
                raise ConfigFileError(
                    f"{ta_name}: train_batch_size ({tbs.value}) is not a multiple of "
                    f"micro_train_batch_size * world_size ({mbs.value} * {world.value})"
                )
            setup.gradient_accumulation_steps = Setting(
                tbs.value // per_step,
                f"{ta_name}: train_batch_size / (micro_train_batch_size * {world.source.split(': ')[-1]})",
            )
        elif ds_ga_auto:
            setup.notes.append(
                f'{ds_name}: gradient_accumulation_steps is "auto" and no trainer arguments resolve it'
            )
    if setup.train_batch_size is None:
        setup.train_batch_size = ta_int("train_batch_size")
    if setup.micro_train_batch_size is None:
        setup.micro_train_batch_size = ta_int("micro_train_batch_size")

    # ---- ZeRO stage and optimizer offload
    present, zero = _lookup(ds, "zero_optimization")
    if present and zero is not None and not isinstance(zero, Mapping):
        raise ConfigFileError(f"{ds_name}: zero_optimization must be a mapping, got {zero!r}")
    if present and zero is not None:
        has_stage, stage = _lookup(zero, "stage")
        where = f"{ds_name}: zero_optimization.stage"
        stage_value = _as_int(stage, where) if has_stage and stage is not None else 0
        if stage_value not in (0, 1, 2, 3):  # type: ignore[comparison-overlap]
            raise ConfigFileError(f"{where}: expected 0, 1, 2 or 3, got {stage!r}")
        setup.zero_stage = Setting(stage_value, where if has_stage else f"{ds_name}: zero_optimization (stage absent, DeepSpeed default 0)")
        has_off, device = _lookup(zero, "offload_optimizer", "device")
        has_legacy, legacy = _lookup(zero, "cpu_offload")
        if has_off:
            where = f"{ds_name}: zero_optimization.offload_optimizer.device"
            setup.offload_optimizer_device = Setting(_device(device, where), where)
        elif has_legacy and legacy is True:
            setup.offload_optimizer_device = Setting(
                "cpu", f"{ds_name}: zero_optimization.cpu_offload", "legacy key for offload_optimizer.device cpu"
            )
        else:
            setup.offload_optimizer_device = Setting("none", f"{ds_name}: zero_optimization (no offload_optimizer)")
    elif deepspeed_config is not None:
        setup.zero_stage = Setting(0, f"{ds_name} (no zero_optimization section, DeepSpeed default stage 0)")
    else:
        # OpenRLHF-style command-line arguments saved to a file
        has_stage, stage = _lookup(ta, "zero_stage")
        if has_stage and stage is not None:
            where = f"{ta_name}: zero_stage"
            value = _as_int(stage, where)
            if value not in (0, 1, 2, 3):  # type: ignore[comparison-overlap]
                raise ConfigFileError(f"{where}: expected 0, 1, 2 or 3, got {stage!r}")
            setup.zero_stage = Setting(value, where)
            has_off, off = _lookup(ta, "adam_offload")
            if has_off and not isinstance(off, bool):
                raise ConfigFileError(f"{ta_name}: adam_offload: expected true or false, got {off!r}")
            setup.offload_optimizer_device = Setting(
                "cpu" if off else "none",
                f"{ta_name}: adam_offload" if has_off else f"{ta_name} (no adam_offload)",
            )

    # ---- TRL GRPO settings
    present, loss_type = _lookup(ta, "loss_type")
    if present and loss_type is not None:
        if not isinstance(loss_type, str):
            raise ConfigFileError(f"{ta_name}: loss_type: expected a string, got {loss_type!r}")
        setup.loss_type = Setting(loss_type.strip().lower(), f"{ta_name}: loss_type")
    setup.steps_per_generation = ta_int("steps_per_generation")
    setup.generation_batch_size = ta_int("generation_batch_size")
    setup.per_device_train_batch_size = ta_int("per_device_train_batch_size")
    setup.num_processes = ta_int("num_processes") or ta_int("world_size")
    return setup
