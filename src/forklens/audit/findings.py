"""What an audit rule returns: a :class:`RuleResult` (flagged, clear or not applicable) holding at
most one :class:`Finding`, and the severity scale findings use."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["SEVERITIES", "Finding", "RuleResult", "severity_rank"]

SEVERITIES = ("info", "low", "medium", "high")


def severity_rank(severity: str) -> int:
    """0 for info ... 3 for high."""
    return SEVERITIES.index(severity)


@dataclass
class Finding:
    """One flagged problem. ``evidence`` lists the package versions and config keys that triggered it."""

    id: str
    severity: str
    title: str
    evidence: list[str]
    consequence: str
    fix: str
    references: list[str]

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "severity": self.severity,
            "title": self.title,
            "evidence": list(self.evidence),
            "consequence": self.consequence,
            "fix": self.fix,
            "references": list(self.references),
        }


@dataclass
class RuleResult:
    """What a rule concluded: ``status`` is ``flagged``, ``clear`` or ``not applicable``."""

    rule_id: str
    status: str
    reason: str
    findings: list[Finding] = field(default_factory=list)

    @classmethod
    def clear(cls, rule_id: str, reason: str) -> RuleResult:
        return cls(rule_id, "clear", reason)

    @classmethod
    def not_applicable(cls, rule_id: str, reason: str) -> RuleResult:
        return cls(rule_id, "not applicable", reason)

    @classmethod
    def flagged(cls, finding: Finding, reason: str = "") -> RuleResult:
        return cls(finding.id, "flagged", reason or finding.title, [finding])

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason}
