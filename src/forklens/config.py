"""Dataclass configs with help text, loaded from YAML plus ``key=value`` overrides.

Every config is a (possibly nested) dataclass whose fields carry ``metadata={"help": ...}``. A YAML
file sets any subset of fields; ``--set a.b=value`` overrides win over the file. Unknown keys are
errors that name the file (or override), the key, and the closest valid keys.

Fields also declare their valid range (``field(1, ge=1)``, ``gt=0``, ``le=1``, ``lt=1``; elementwise
for lists) and degenerate-but-legal values (``warn={1: "why"}``). :func:`load_config` ends with
:func:`validate`, which checks every range and every ``Literal``-typed field of the resolved config
and names the key, the value, what was expected and where the value came from (file, override or
default); each degenerate value gets one :class:`~forklens.errors.ForklensWarning`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from importlib import resources
import warnings
from pathlib import Path
from typing import Any, TypeVar

import yaml

from forklens.errors import ConfigError, ForklensWarning

T = TypeVar("T")

BOUNDS = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
          "le": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}
ORIGINS = "_config_origins"  # attribute of a loaded config: dotted key -> where its value came from


def field(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING,
          ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
          warn: dict[Any, str] | None = None):
    """A dataclass field with help text (shown by ``forklens ... --help-config``), its valid range
    (``ge``/``gt``/``le``/``lt``, checked by :func:`validate`) and degenerate values to warn about
    (``warn={value: reason}``)."""
    meta: dict[str, Any] = {"help": help}
    meta.update({k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None})
    if warn:
        meta["warn"] = dict(warn)
    kwargs: dict[str, Any] = {"metadata": meta}
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


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config", base: T | None = None,
              origins: dict[str, str] | None = None, prefix: str = "", source: str | None = None) -> T:
    """Build ``cls`` from a nested dict, starting from ``base`` (or the defaults). ``origins`` (when
    given) records ``where`` for every dotted key set."""
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
            setattr(obj, key, from_dict(typ, value or {}, f"{where}.{key}", getattr(obj, key), origins,
                                        f"{prefix}{key}.", source or where))
        else:
            setattr(obj, key, _coerce(value, typ, f"{where}: {key}"))
            if origins is not None:
                origins[prefix + key] = source or where
    return obj


def apply_override(obj: Any, assignment: str, origins: dict[str, str] | None = None) -> None:
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
            if origins is not None:
                origins[".".join(p.strip() for p in parts)] = f"override {assignment!r}"
        else:
            target = getattr(target, part)
            if not dataclasses.is_dataclass(target):
                raise ConfigError(f"override {assignment!r}: {part} is not a section")


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
                base: T | None = None) -> T:
    """Defaults (or ``base``), then the YAML file at ``path``, then each override in order; then
    :func:`validate`. Where each key's value came from is kept (for ``base`` too) for the messages."""
    cfg = base if base is not None else cls()
    origins: dict[str, str] = dict(getattr(cfg, ORIGINS, None) or {})
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
        cfg = from_dict(cls, data, str(path), cfg, origins)
    for assignment in overrides or []:
        apply_override(cfg, assignment, origins)
    object.__setattr__(cfg, ORIGINS, origins)
    validate(cfg, origins)
    return cfg


def packaged_config(name: str) -> Path:
    """Path of a YAML recipe shipped with forklens (``forklens/configs/NAME.yaml``)."""
    return Path(str(resources.files("forklens") / "configs" / f"{name}.yaml"))
def _literal_choices(typ: Any) -> tuple | None:
    """The allowed values of a ``Literal`` (or ``Optional[Literal]``, or a list of them) annotation, else None."""
    if typing.get_origin(typ) in (list, tuple) and typing.get_args(typ):
        return _literal_choices(typing.get_args(typ)[0])
    if typing.get_origin(typ) is typing.Literal:
        return typing.get_args(typ)
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        for a in typing.get_args(typ):
            if typing.get_origin(a) is typing.Literal:
                return typing.get_args(a) + ((None,) if type(None) in typing.get_args(typ) else ())
    return None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate(cfg: Any, origins: dict[str, str] | None = None, prefix: str = "") -> None:
    """Check every field of ``cfg`` (recursively): ``Literal`` values, declared ranges (elementwise for
    lists). Raises :class:`ConfigError` naming the key, the value, what was expected and where the value
    came from; warns once (:class:`ForklensWarning`) for each declared degenerate value."""
    origins = origins if origins is not None else getattr(cfg, ORIGINS, None) or {}
    hints = _field_types(type(cfg))
    for f in dataclasses.fields(cfg):
        key, value, typ = prefix + f.name, getattr(cfg, f.name), hints[f.name]
        if dataclasses.is_dataclass(value):
            validate(value, origins, key + ".")
            continue
        where = origins.get(key, "default")
        help_text = f.metadata.get("help", "")
        choices = _literal_choices(typ)
        items = value if isinstance(value, (list, tuple)) else [value]
        if choices is not None and any(v not in choices for v in items):
            raise ConfigError(f"{where}: {key}={value!r} is not valid; expected one of "
                              f"{', '.join(map(repr, choices))} ({help_text})")
        for name, (op, ok) in BOUNDS.items():
            bound = f.metadata.get(name)
            if bound is None:
                continue
            bad = [v for v in items if _is_number(v) and (v != v or not ok(v, bound))]  # NaN fails every bound
            if bad:
                raise ConfigError(f"{where}: {key}={value!r} is out of range; expected {op} {bound}"
                                  f"{' (every element)' if isinstance(value, (list, tuple)) else ''} ({help_text})")
        for bad_value, why in (f.metadata.get("warn") or {}).items():
            if value == bad_value and not isinstance(value, bool):
                warnings.warn(f"{key}={value!r} ({where}): {why}", ForklensWarning, stacklevel=2)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def describe(cls: type, prefix: str = "", defaults: Any = None) -> list[tuple[str, str, str]]:
    """(key, default, help) rows for every field, nested sections flattened with dots. The defaults are
    those of ``defaults`` (e.g. a recipe's resolved config) or, without it, of ``cls()`` (whose nested
    sections carry the parent's defaults, not the section class's own)."""
    rows = []
    defaults = defaults if defaults is not None else cls()
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        if dataclasses.is_dataclass(typ):
            rows.extend(describe(typ, f"{prefix}{f.name}.", getattr(defaults, f.name)))
        else:
            rows.append((prefix + f.name, repr(getattr(defaults, f.name)), f.metadata.get("help", "")))
    return rows
