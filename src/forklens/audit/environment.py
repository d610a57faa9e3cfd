"""Package versions for ``forklens audit``: a ``pip freeze`` text or the running interpreter's installed
distributions become an :class:`Environment`; and the audit's input error types (each names the file,
line or key that was wrong)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from forklens.errors import ConfigError, DataError


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


def read_text(path: str | Path, what: str, error: type[Exception]) -> str:
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
    text = read_text(path, "requirements file", FreezeFormatError)
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
