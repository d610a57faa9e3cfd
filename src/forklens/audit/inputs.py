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
from typing import Any, Iterable, Mapping

import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from forklens.errors import ConfigError, DataError

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


class AuditInputError(ConfigError):
    """Base class of the audit's input errors (a ConfigError, so the CLI exits 2 without traceback)."""


class InputFileNotFound(AuditInputError):
    """A path given on the command line (or referenced from a config) does not exist."""


class ConfigFileError(AuditInputError):
    """A DeepSpeed config or trainer-arguments file that is malformed or holds a bad value."""


class FreezeFormatError(DataError):
    """A ``pip freeze`` / requirements line that cannot be parsed."""


# --------------------------------------------------------------------------------------------------
# packages


def normalize_name(name: str) -> str:
    """PEP 503 normalisation: ``DeepSpeed``, ``deep_speed`` and ``deep.speed`` all become ``deep-speed``."""
    return canonicalize_name(name)


def parse_version(text: str | None) -> Version | None:
    """A :class:`packaging.version.Version`, or ``None`` when missing or not a PEP 440 version."""
    if text is None:
        return None
    try:
        return Version(text)
    except InvalidVersion:
        return None


@dataclass(frozen=True)
class PackageInfo:
    """One distribution: normalised name, raw version string (``None`` when unknown), where it came from."""

    name: str
    version: str | None
    source: str
    note: str | None = None

    @property
    def parsed_version(self) -> Version | None:
        return parse_version(self.version)

    def describe(self) -> str:
        """Human text such as ``deepspeed 0.18.9 (requirements.txt line 3)``."""
        if self.version is None:
            text = f"{self.name}, version unknown"
            text += f" ({self.note})" if self.note else ""
        elif self.parsed_version is None:
            text = f"{self.name} {self.version} (not a PEP 440 version, cannot compare)"
        else:
            text = f"{self.name} {self.version}"
        return f"{text}, from {self.source}"

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "source": self.source, "note": self.note}


@dataclass
class Environment:
    """The packages of the training environment and a description of where the list came from."""

    packages: dict[str, PackageInfo]
    source: str
    notes: list[str] = field(default_factory=list)

    def get(self, name: str) -> PackageInfo | None:
        return self.packages.get(normalize_name(name))


_WHEEL_RE = re.compile(r"([^/\\]+?)-(\d[^-]*)(?:-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")
_EDITABLE_COMMENT_RE = re.compile(r"#\s*Editable\b.*?\(\s*([A-Za-z0-9._-]+)\s*==\s*([^\s)]+)\s*\)")
_EGG_RE = re.compile(r"[#&]egg=([A-Za-z0-9._-]+?)(?:-(\d[^&#]*))?(?:[&#]|$)")
_HASH_RE = re.compile(r"\s--hash[=\s]\S+")
# pip treats "#" preceded by whitespace as the start of a comment
_INLINE_COMMENT_RE = re.compile(r"(^|\s)#.*$")
_IGNORED_OPTIONS = (
    "-r", "--requirement", "-c", "--constraint", "-i", "--index-url", "--extra-index-url",
    "--no-index", "-f", "--find-links", "--trusted-host", "--pre", "--no-binary", "--only-binary",
    "--prefer-binary", "--require-hashes", "--use-feature", "--hash",
)


def _version_from_url(url: str) -> str | None:
    match = _WHEEL_RE.search(url.split("#", 1)[0].split("?", 1)[0])
    return match.group(2) if match else None


def parse_freeze(text: str, source: str = "<freeze>") -> Environment:
    """Parse ``pip freeze`` output (or a pinned requirements file) into an :class:`Environment`.

    Understood: ``pkg==ver`` / ``pkg===ver``, ``pkg @ URL`` (version taken from a wheel file name,
    otherwise unknown), ``-e`` lines (name from ``#egg=`` or from pip's preceding ``# Editable
    install ... (pkg==ver)`` comment), comments, blank lines, ``--hash`` options, environment
    markers and pip option lines (ignored). A line that is none of these raises
    :class:`FreezeFormatError` naming the line number; a package listed twice with different
    versions does too.
    """
    packages: dict[str, PackageInfo] = {}
    first_line: dict[str, int] = {}
    notes: list[str] = []
    pending_editable: tuple[str, str] | None = None
    lines = text.splitlines()
    lineno = 0
    while lineno < len(lines):
        lineno += 1
        raw = lines[lineno - 1]
        start = lineno
        # backslash continuation (requirements files)
        while raw.rstrip().endswith("\\") and lineno < len(lines):
            lineno += 1
            raw = raw.rstrip()[:-1] + " " + lines[lineno - 1]
        where = f"{source} line {start}"
        stripped = raw.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            match = _EDITABLE_COMMENT_RE.search(stripped)
            pending_editable = (match.group(1), match.group(2)) if match else None
            continue
        line = _INLINE_COMMENT_RE.sub("", stripped).strip()
        line = _HASH_RE.sub("", " " + line).strip()
        if not line:
            continue

        info: PackageInfo | None
        if line.startswith(("-e", "--editable")):
            target = re.sub(r"^(-e|--editable)(=|\s+)?", "", line).strip()
            if not target:
                raise FreezeFormatError(f"{where}: '-e' without a path or URL: {raw.strip()!r}")
            egg = _EGG_RE.search(target)
            if egg:
                name, version = egg.group(1), egg.group(2)
            elif pending_editable:
                name, version = pending_editable
            else:
                notes.append(f"{where}: editable install {target!r} names no package; skipped")
                pending_editable = None
                continue
            info = PackageInfo(
                normalize_name(name), version, where,
                None if version else f"editable install from {target}",
            )
        elif line.startswith("-"):
            option = line.split()[0].split("=")[0]
            if option not in _IGNORED_OPTIONS:
                notes.append(f"{where}: unknown pip option {option!r} ignored")
            pending_editable = None
            continue
        else:
            try:
                req = Requirement(line)
            except InvalidRequirement as exc:
                reason = str(exc).splitlines()[0]
                raise FreezeFormatError(
                    f"{where}: cannot parse {raw.strip()!r} as 'package==version' "
                    f"(or 'package @ URL'): {reason}"
                ) from None
            name = normalize_name(req.name)
            specs = list(req.specifier)
            if req.url:
                version = _version_from_url(req.url)
                note = None if version else f"installed from {req.url}; version unknown"
                info = PackageInfo(name, version, where, note)
            elif len(specs) == 1 and specs[0].operator in ("==", "===") and "*" not in specs[0].version:
                info = PackageInfo(name, specs[0].version, where)
            elif not specs:
                info = PackageInfo(name, None, where, "no version given")
            else:
                info = PackageInfo(name, None, where, f"not pinned to one version ({req.specifier})")
        pending_editable = None

        previous = packages.get(info.name)
        if previous is not None and previous.version != info.version:
            raise FreezeFormatError(
                f"{where}: {info.name} is listed twice with different versions "
                f"({previous.version or 'unknown'} at line {first_line[info.name]}, "
                f"{info.version or 'unknown'} here)"
            )
        if previous is None:
            first_line[info.name] = start
        packages[info.name] = info
    return Environment(packages=packages, source=source, notes=notes)


def _read_text(path: str | Path, what: str, error: type[Exception]) -> str:
    path = Path(path)
    if not path.exists():
        raise InputFileNotFound(f"{what} not found: {path}")
    if path.is_dir():
        raise InputFileNotFound(f"{what} is a directory, expected a file: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: {what} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise InputFileNotFound(f"{what} cannot be read: {path}: {exc.strerror}") from None


def environment_from_freeze(path: str | Path) -> Environment:
    """Read and parse a ``pip freeze`` file."""
    text = _read_text(path, "requirements file", FreezeFormatError)
    return parse_freeze(text, source=str(path))


def environment_from_installed(distributions: Iterable[Any] | None = None) -> Environment:
    """The packages installed in the running interpreter (``importlib.metadata``)."""
    from importlib import metadata

    dists = metadata.distributions() if distributions is None else distributions
    packages: dict[str, PackageInfo] = {}
    for dist in dists:
        name = dist.metadata["Name"] if dist.metadata is not None else None
        if not name:
            continue
        key = normalize_name(name)
        packages.setdefault(key, PackageInfo(key, dist.version, "installed environment"))
    return Environment(packages=packages, source="installed environment (importlib.metadata)")


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
    text = _read_text(path, what, ConfigFileError)
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
