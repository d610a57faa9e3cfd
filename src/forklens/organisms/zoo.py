"""The organism zoo: families of model organisms, each with variants where a claim's mechanism can act
(*precondition*) and variants where it cannot (*control*).

A result on an organism is evidence only if the organism could have produced the opposite result
(docs/organisms.md). Every family therefore states what it can and cannot show, and names, per variant,
its role:

``precondition``
    the mechanism a paper names can act here; the claim may hold or fail;
``control``
    the same organism with the mechanism removed; a method that "works" here works for another reason;
``consistency``
    the answer is fixed by construction (e.g. the planted-fork arith organism): a check that the tools
    recover what was planted, not a finding;
``negative-control``
    built so that the tool must say "no" (e.g. a tuned model with a behaviour the base does not contain).

A family module (``forklens.organisms.<family>``) defines its config dataclass and build function and
calls :func:`register`; :data:`FAMILIES` is filled when :mod:`forklens.organisms` is imported.
Variants are dotted ``--set``-style overrides of the family config, so a variant is reproducible from
its name alone and ``forklens organism build --family F --variant V`` builds it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from forklens.config import apply_override, validate
from forklens.errors import ConfigError

Role = Literal["precondition", "control", "consistency", "negative-control"]
ROLES: tuple[str, ...] = ("precondition", "control", "consistency", "negative-control")


@dataclass(frozen=True)
class Variant:
    """One variant of a family: its role, what distinguishes it, and its config overrides."""

    role: Role
    about: str  # one sentence: what this variant has or lacks
    overrides: tuple[str, ...] = ()  # dotted KEY=VALUE overrides of the family config
    claims: tuple[str, ...] = ()  # digest claim ids (e.g. "E011") this variant serves

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"variant role {self.role!r}; expected one of {', '.join(ROLES)}")


@dataclass(frozen=True)
class Family:
    """An organism family: a config dataclass, a build function and named variants."""

    name: str
    summary: str  # one line
    can_show: str  # what a result on this family can be evidence for
    cannot_show: str  # what it cannot (the limits of the analogy)
    config: type  # the family's config dataclass (defaults = its first precondition variant's base)
    build: Callable[..., dict]  # build(cfg, out_dir, use_cache=True, progress=True) -> info dict
    task: Callable[[Any], Any]  # task(cfg) -> the Task its organisms are pretrained and evaluated on
    variants: dict[str, Variant] = field(default_factory=dict)
    claims: tuple[str, ...] = ()  # digest claim ids the family serves

    def variant(self, name: str) -> Variant:
        if name not in self.variants:
            raise ConfigError(f"organism family {self.name!r} has no variant {name!r}; "
                              f"variants: {', '.join(self.variants)}")
        return self.variants[name]

    def variant_config(self, name: str, base: Any = None, overrides: list[str] | None = None) -> Any:
        """The family config of variant ``name``: ``base`` (or the defaults), the variant's overrides,
        then ``overrides``; validated."""
        var = self.variant(name)
        cfg = copy.deepcopy(base) if base is not None else self.config()
        for assignment in (*var.overrides, *(overrides or [])):
            apply_override(cfg, assignment)
        validate(cfg)
        return cfg

    def build_variant(self, name: str, out_dir: str | Path, *, base: Any = None, overrides: list[str] | None = None,
                      use_cache: bool = True, progress: bool = True) -> dict:
        cfg = self.variant_config(name, base, overrides)
        info = self.build(cfg, out_dir, use_cache=use_cache, progress=progress)
        return {**info, "family": self.name, "variant": name, "role": self.variant(name).role}


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add ``family`` to :data:`FAMILIES` (a family name is registered once)."""
    if family.name in FAMILIES and FAMILIES[family.name] is not family:
        raise ValueError(f"organism family {family.name!r} is registered twice")
    if not family.variants:
        raise ValueError(f"organism family {family.name!r} has no variants")
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ConfigError(f"unknown organism family {name!r}; families: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def zoo_table() -> list[dict[str, str]]:
    """One row per (family, variant): what ``forklens organism list`` prints and docs/organisms.md shows."""
    rows = []
    for fam in FAMILIES.values():
        for vname, var in fam.variants.items():
            rows.append({"family": fam.name, "variant": vname, "role": var.role,
                         "claims": ", ".join(var.claims or fam.claims), "about": var.about})
    return rows
