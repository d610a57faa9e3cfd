"""Dataclass configs with help text, loaded from YAML plus ``key=value`` overrides.

Every config is a (possibly nested) dataclass whose fields carry ``metadata={"help": ...}``. A YAML
file sets any subset of fields; ``--set a.b=value`` overrides win over the file. Unknown keys are
errors that name the file (or override), the key, and the closest valid keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from forklens.errors import ConfigError

T = TypeVar("T")


def field(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING):
    """A dataclass field with help text (shown by ``forklens ... --help-config``)."""
    kwargs: dict[str, Any] = {"metadata": {"help": help}}
    if default_factory is not dataclasses.MISSING:
        kwargs["default_factory"] = default_factory
    else:
        kwargs["default"] = default
    return dataclasses.field(**kwargs)


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Convert ``value`` (from YAML or a string override) to the annotated type ``typ``."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        for a in args:
            try:
                return _coerce(value, a, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: cannot read {value!r} as {typ}")
    if origin is typing.Literal:
        allowed = typing.get_args(typ)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(typ) or (Any,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, inner, where) for v in value]
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if typ in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            number = float(value) if typ is float else int(str(value).replace("_", ""), 0)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {typ.__name__}, got {value!r}") from None
        return number
    if typ is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _unknown(key: str, valid: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=3)
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else f"; valid keys: {', '.join(valid)}"
    return ConfigError(f"{where}: unknown key {key!r}{hint}")


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config", base: T | None = None) -> T:
    """Build ``cls`` from a nested dict, starting from ``base`` (or the defaults)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {type(data).__name__}")
    obj = base if base is not None else cls()
    hints = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key, value in data.items():
        if key not in names:
            raise _unknown(str(key), names, where)
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            setattr(obj, key, from_dict(typ, value or {}, f"{where}.{key}", getattr(obj, key)))
        else:
            setattr(obj, key, _coerce(value, typ, f"{where}: {key}"))
    return obj


def apply_override(obj: Any, assignment: str) -> None:
    """Apply one ``dotted.key=value`` override in place (value parsed as YAML scalar)."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r}: expected KEY=VALUE, e.g. grpo.steps=50")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    target = obj
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(target)]
        if part not in names:
            raise _unknown(part, names, f"override {assignment!r}")
        if i == len(parts) - 1:
            typ = _field_types(type(target))[part]
            if dataclasses.is_dataclass(typ):
                raise ConfigError(f"override {assignment!r}: {key} is a section; set one of its keys")
            try:
                value = yaml.safe_load(raw) if raw.strip() else ""
            except yaml.YAMLError:
                value = raw
            setattr(target, part, _coerce(value, typ, f"override {assignment!r}"))
        else:
            target = getattr(target, part)
            if not dataclasses.is_dataclass(target):
                raise ConfigError(f"override {assignment!r}: {part} is not a section")


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
                base: T | None = None) -> T:
    """Defaults (or ``base``), then the YAML file at ``path``, then each override in order."""
    cfg = base if base is not None else cls()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
        cfg = from_dict(cls, data, str(path), cfg)
    for assignment in overrides or []:
        apply_override(cfg, assignment)
    return cfg


def packaged_config(name: str) -> Path:
    """Path of a YAML recipe shipped with forklens (``forklens/configs/NAME.yaml``)."""
    return Path(str(resources.files("forklens") / "configs" / f"{name}.yaml"))


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) rows for every field, nested sections flattened with dots."""
    rows = []
    defaults = cls()
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        if dataclasses.is_dataclass(typ):
            rows.extend(describe(typ, f"{prefix}{f.name}."))
        else:
            rows.append((prefix + f.name, repr(getattr(defaults, f.name)), f.metadata.get("help", "")))
    return rows
