"""Pre-registered predictions: a YAML file per experiment, committed before its results, and the
verdict of each prediction against the experiment's artifact.

Format (``results/predictions/<experiment>.yaml``)::

    experiment: fork-vs-rl
    artifact: results/fork-vs-rl          # where the experiment's stamped artifact will be
    predictions:
      - id: cheaper-with-search
        claim: Fork-contrast reaches the target with fewer FLOPs than GRPO, search cost included.
        metric: flops_to_target_ratio
        field: summary.comparison.ratios.[fork-contrast/grpo].with_search   # an interval in the artifact
        direction: "<"                     # "<", ">" or "between"
        threshold: 1.0                     # for "between": [low, high]
        ci: 95                             # the interval level the rule is judged on (omit: a plain number)

Decision rule, on the artifact's interval ``{mean, low, high, level}`` at level ``ci``:

- ``<``: *supported* when ``high < threshold``, *refuted* when ``low >= threshold``, else *inconclusive*;
- ``>``: *supported* when ``low > threshold``, *refuted* when ``high <= threshold``, else *inconclusive*;
- ``between [a, b]``: *supported* when ``a <= low`` and ``high <= b``, *refuted* when the interval lies
  wholly outside ``[a, b]``, else *inconclusive*.

Without ``ci`` the field is one number (a count, say) and the interval is that number, so the verdict
is supported or refuted.

A missing field (the experiment could not compute it, e.g. no seed reached the target) is the
verdict *missing*, shown as such; it is never counted as supported.

Censored intervals (``lower_bound: true``, e.g. ``flops_to_target_ratio_lb`` of
:func:`forklens.analysis.curves.flops_ratio_lb`): a seed that never reached the target counts with its
whole budget, a lower bound of its value, and a seed whose reference never reached it has no value.
When every seed has an exact value the ordinary rule applies. Otherwise only what a lower bound can
show is concluded: ``>`` is *supported* when ``low > threshold``, every censored seed's own bound
(``censored_min``) already exceeds the threshold and no seed lacks a value; ``<`` is *refuted* when
``low >= threshold`` and no seed lacks a value; ``between [a, b]`` is *refuted* when ``low > b`` and no
seed lacks a value; everything else is *inconclusive* (a lower bound can never refute ``>``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from forklens.report.artifacts import Artifact, ArtifactError, lookup

DIRECTIONS = ("<", ">", "between")
KEYS = {"id", "claim", "metric", "field", "direction", "threshold", "ci", "note"}


class PredictionError(ArtifactError):
    """A predictions file that is malformed."""


@dataclass(frozen=True)
class Prediction:
    id: str
    claim: str
    metric: str
    field: str
    direction: str
    threshold: float | tuple[float, float]
    ci: float | None  # None: the field is a single number, judged as it is
    note: str | None = None

    def rule(self) -> str:
        on = f"{self.ci:g}% CI" if self.ci is not None else "point value"
        if self.direction == "between":
            lo, hi = self.threshold
            return f"{self.metric} in [{lo:g}, {hi:g}] ({on})"
        return f"{self.metric} {self.direction} {self.threshold:g} ({on})"


@dataclass(frozen=True)
class PredictionsFile:
    path: Path
    experiment: str
    artifact: str
    predictions: tuple[Prediction, ...]


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PredictionError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def load_predictions(path: str | Path) -> PredictionsFile:
    """Read and validate a predictions file; errors name the file, the prediction and the key."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PredictionError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise PredictionError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict) or not {"experiment", "artifact", "predictions"} <= set(data):
        raise PredictionError(f"{path}: expected keys experiment, artifact, predictions")
    if not isinstance(data["predictions"], list) or not data["predictions"]:
        raise PredictionError(f"{path}: 'predictions' must be a non-empty list")
    out, seen = [], set()
    for i, entry in enumerate(data["predictions"]):
        where = f"{path}: predictions[{i}]"
        if not isinstance(entry, dict):
            raise PredictionError(f"{where}: expected a mapping")
        missing = {"id", "claim", "metric", "field", "direction", "threshold"} - set(entry)
        if missing:
            raise PredictionError(f"{where}: missing key(s) {sorted(missing)}")
        unknown = set(entry) - KEYS
        if unknown:
            raise PredictionError(f"{where}: unknown key(s) {sorted(unknown)} (known: {sorted(KEYS)})")
        where = f"{path}: prediction {entry['id']!r}"
        if entry["id"] in seen:
            raise PredictionError(f"{where}: duplicate id")
        seen.add(entry["id"])
        if entry["direction"] not in DIRECTIONS:
            raise PredictionError(f"{where}: direction must be one of {DIRECTIONS}, got {entry['direction']!r}")
        if entry["direction"] == "between":
            t = entry["threshold"]
            if not isinstance(t, list) or len(t) != 2:
                raise PredictionError(f"{where}: 'between' needs threshold [low, high], got {t!r}")
            threshold = (_number(t[0], where + " threshold[0]"), _number(t[1], where + " threshold[1]"))
            if threshold[0] > threshold[1]:
                raise PredictionError(f"{where}: threshold low {threshold[0]} > high {threshold[1]}")
        else:
            threshold = _number(entry["threshold"], where + " threshold")
        ci = _number(entry["ci"], where + " ci") if entry.get("ci") is not None else None
        if ci is not None and not 0 < ci < 100:
            raise PredictionError(f"{where}: ci must be a percentage in (0, 100), got {ci}")
        out.append(Prediction(str(entry["id"]), str(entry["claim"]).strip(), str(entry["metric"]),
                              str(entry["field"]), entry["direction"], threshold, ci, entry.get("note")))
    return PredictionsFile(path, str(data["experiment"]), str(data["artifact"]), tuple(out))


@dataclass(frozen=True)
class Verdict:
    prediction: Prediction
    outcome: str  # supported | refuted | inconclusive | missing
    observed: dict | None
    reason: str


def verdict(prediction: Prediction, artifact: Artifact | dict) -> Verdict:
    """Judge one prediction against an artifact (or its ``{"stamp", "summary"}`` data)."""
    data = {"stamp": artifact.stamp, "summary": artifact.summary} if isinstance(artifact, Artifact) else artifact
    try:
        value = lookup(data, prediction.field, f"prediction {prediction.id!r}")
    except ArtifactError as exc:
        return Verdict(prediction, "missing", None, str(exc))
    if value is None:
        return Verdict(prediction, "missing", None, f"{prediction.field} is null in the artifact")
    if prediction.ci is None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PredictionError(f"prediction {prediction.id!r}: {prediction.field} must be a number "
                                  f"(the rule has no ci), got {value!r}")
        value = {"mean": float(value), "low": float(value), "high": float(value), "level": None}
    elif not isinstance(value, dict) or not {"mean", "low", "high", "level"} <= set(value):
        raise PredictionError(f"prediction {prediction.id!r}: {prediction.field} must be an interval "
                              f"{{mean, low, high, level}}, got {value!r}")
    elif abs(100 * value["level"] - prediction.ci) > 1e-9:
        raise PredictionError(f"prediction {prediction.id!r}: the rule is judged at {prediction.ci:g}% but the "
                              f"artifact's interval is at {100 * value['level']:g}%")
    lo, hi = value["low"], value["high"]
    t = prediction.threshold
    if value.get("lower_bound") and (value.get("n_censored") or value.get("n_reference_unreached")):
        return _censored_verdict(prediction, value)
    if prediction.direction == "<":
        outcome = "supported" if hi < t else "refuted" if lo >= t else "inconclusive"
    elif prediction.direction == ">":
        outcome = "supported" if lo > t else "refuted" if hi <= t else "inconclusive"
    else:
        a, b = t
        outcome = "supported" if a <= lo and hi <= b else "refuted" if hi < a or lo > b else "inconclusive"
    return Verdict(prediction, outcome, value, f"interval [{lo:g}, {hi:g}] vs rule {prediction.rule()}")


def _censored_verdict(prediction: Prediction, value: dict) -> Verdict:
    """The verdict on a censored lower-bound interval (see the module docstring)."""
    lo, t = value["low"], prediction.threshold
    whole = not value.get("n_reference_unreached")  # every seed has a value (exact or a lower bound)
    cmin = value.get("censored_min")
    if prediction.direction == ">":
        outcome = "supported" if whole and lo > t and (cmin is None or cmin > t) else "inconclusive"
    elif prediction.direction == "<":
        outcome = "refuted" if whole and lo >= t else "inconclusive"
    else:
        outcome = "refuted" if whole and lo > t[1] else "inconclusive"
    return Verdict(prediction, outcome, value,
                   f"lower bound [{lo:g}, {value['high']:g}] with {value.get('n_censored', 0)} censored seed(s) "
                   f"(smallest bound {cmin}) and {value.get('n_reference_unreached', 0)} without a value, "
                   f"vs rule {prediction.rule()}")


def verdict_table(predictions: PredictionsFile, artifact: Artifact | dict, fmt=lambda v: f"{v:.3g}") -> str:
    """A markdown table: each prediction's claim and rule beside the observed interval and verdict."""
    lines = ["| prediction | rule | observed (mean [CI]) | verdict |", "|---|---|---|---|"]
    for p in predictions.predictions:
        v = verdict(p, artifact)
        if v.observed is None:
            obs = "—"
        elif v.observed["level"] is None:
            obs = fmt(v.observed["mean"])
        else:
            obs = f"{fmt(v.observed['mean'])} [{fmt(v.observed['low'])}, {fmt(v.observed['high'])}]"
        lines.append(f"| {table_cell(p.claim)} | {table_cell(p.rule())} | {obs} | {v.outcome} |")
    return "\n".join(lines)


def table_cell(text: str) -> str:
    """``text`` safe inside a markdown table cell: every unescaped ``|`` (as in ``P(a|q)``) escaped."""
    return re.sub(r"(?<!\\)\|", r"\\|", text)
