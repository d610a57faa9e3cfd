"""Docs tables rendered from artifacts, and the check that the docs still say what the artifacts say.

A markdown file marks a rendered block with ``<!-- results:NAME -->`` ... ``<!-- /results:NAME -->``.
``results/tables.yaml`` says what goes in each block::

    demo-quick:
      artifact: results/demo-quick          # a stamped artifact folder (or artifact.json)
      header: [measure, mean (95% CI), per seed]
      rows:
        - [base accuracy, "{summary.aggregate.[base.accuracy]:ci:pct1}", "{summary.per_seed.[base.accuracy]:list:pct1}"]
    gpu-sampling:
      artifact: benchmarks/results/gpu/gpu_check.json
      unstamped: true                        # a JSON written before the harness (no commit/time in it)
      text: "... {checks.sampling_speed.[llama-20M].ratio:x2} ..."   # a sentence instead of a table

Placeholders are ``{dotted.path:format}`` into the artifact (``{"stamp", "summary"}``, or the raw JSON of
an unstamped one); keys with dots are bracketed. Formats: ``pct0``/``pct1``/``pct2`` (fraction as
percent), ``f0``..``f4``, ``sci`` (1.66e12), ``int`` (12,345), ``x2`` (4.10x), ``gib`` (bytes as
GiB, 2 decimals), ``str`` (as written), ``yesno`` (a boolean); ``ci:F`` renders an interval ``{mean, low, high}`` as ``mean [low, high]``;
``list:F`` joins a list with `` / ``; ``range:F`` gives ``min-max`` of a list. Below every table
a provenance line names the artifact, its commit, time, hardware and command. A spec with
``predictions: results/predictions/NAME.yaml`` instead renders each pre-registered prediction beside
its outcome in the artifact (:mod:`forklens.report.predictions`).

:func:`check_text` returns every block that differs from its rendering, and (``strict``) every
table outside a block and every paragraph with a measured-looking number that cites no existing
artifact path: that is what makes a hand-edited number in docs/results.md fail the test suite.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from forklens.report.artifacts import ARTIFACT_FILE, ArtifactError, load_artifact, lookup, validate_stamp
from forklens.report.predictions import load_predictions, table_cell, verdict, verdict_table

BLOCK = re.compile(r"<!-- results:(?P<name>[A-Za-z0-9._-]+) -->\n(?P<body>.*?)<!-- /results:(?P=name) -->",
                   re.DOTALL)
OPEN = re.compile(r"<!-- (/?)results:([A-Za-z0-9._-]+) -->")
PLACEHOLDER = re.compile(r"\{([^{}:]+)((?::[A-Za-z0-9]+)+)\}")
MEASURED = re.compile(r"\d+\.\d+|\d\s?%|\d+(?:\.\d+)?x\b|\d(?:\.\d+)?e[+-]?\d+|±")
CITATION = re.compile(r"(?:benchmarks/)?results/[A-Za-z0-9_./-]+\.(?:json|jsonl|txt|png|svg|yaml)|results/[A-Za-z0-9_.-]+/")
NOT_MEASURED = "<!-- not measured -->"
CODE_SPAN = re.compile(r"`[^`\n]*`")
ARXIV_ID = re.compile(r"arXiv[:\s]?\d{4}\.\d{4,5}(?:v\d+)?")


def _fixed(digits: int) -> Callable[[float], str]:
    return lambda v: f"{float(v):,.{digits}f}" if abs(float(v)) >= 1e4 else f"{float(v):.{digits}f}"


def _sci(v: float) -> str:
    mantissa, exp = f"{float(v):.2e}".split("e")
    return f"{mantissa}e{int(exp)}"


SCALAR_FORMATS: dict[str, Callable[[Any], str]] = {
    "pct0": lambda v: f"{100 * float(v):.0f}%", "pct1": lambda v: f"{100 * float(v):.1f}%",
    "pct2": lambda v: f"{100 * float(v):.2f}%", "f0": _fixed(0), "f1": _fixed(1), "f2": _fixed(2),
    "f3": _fixed(3), "f4": _fixed(4), "sci": _sci, "int": lambda v: f"{int(round(float(v))):,}",
    "x2": lambda v: f"{float(v):.2f}x", "gib": lambda v: f"{float(v) / 2**30:.2f} GiB",
}


class SpecError(ArtifactError):
    """A table spec that names a missing artifact, field or format."""


@dataclass
class Spec:
    name: str
    artifact: Path
    unstamped: bool
    header: list[str] | None
    rows: list[list[str]] | None
    text: str | None
    note: str | None
    predictions: Path | None = None
    claims: list[dict] | None = None  # a claims table: one row per claim, from several predictions files


def load_specs(path: str | Path, root: str | Path | None = None) -> dict[str, Spec]:
    """Read the table specs; artifact paths are relative to ``root`` (default: the specs file's parent's
    parent, i.e. the repository holding ``results/tables.yaml``)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no table specs file")
    root = Path(root) if root is not None else path.resolve().parent.parent
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML ({exc})") from None
    specs = {}
    for name, entry in data.items():
        where = f"{path}: table {name!r}"
        if isinstance(entry, dict) and "claims" in entry:
            specs[name] = _claims_spec(name, entry, where, root)
            continue
        if not isinstance(entry, dict) or "artifact" not in entry:
            raise SpecError(f"{where}: expected a mapping with 'artifact'")
        unknown = set(entry) - {"artifact", "unstamped", "header", "rows", "text", "note", "predictions"}
        if unknown:
            raise SpecError(f"{where}: unknown key(s) {sorted(unknown)}")
        if sum(k in entry for k in ("rows", "text", "predictions")) != 1:
            raise SpecError(f"{where}: give exactly one of 'rows' (a table, with 'header'), 'text' or 'predictions'")
        if "rows" in entry:
            header = entry.get("header")
            if not isinstance(header, list) or not all(isinstance(r, list) and len(r) == len(header)
                                                       for r in entry["rows"]):
                raise SpecError(f"{where}: 'header' must be a list and every row a list of the same length")
        specs[name] = Spec(name, root / entry["artifact"], bool(entry.get("unstamped", False)),
                           entry.get("header"), entry.get("rows"), entry.get("text"), entry.get("note"),
                           root / entry["predictions"] if "predictions" in entry else None)
    return specs


#: ``organism``: predictions that check the organism itself can carry the claim (e.g. "the base follows
#: negation in context"); unless every one is supported, the row's verdict is "not evidence".
#: ``control_predictions``: the control variant's own predictions file (judged on its own artifact); the
#: ``control`` ids are then looked up there instead of in ``predictions``
CLAIM_KEYS = {"claim", "predictions", "precondition", "control", "organism", "control_predictions"}


def _claims_spec(name: str, entry: dict, where: str, root: Path) -> Spec:
    unknown = set(entry) - {"claims", "note"}
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {sorted(unknown)} (a claims table has 'claims' and 'note')")
    rows = entry["claims"]
    if not isinstance(rows, list) or not rows:
        raise SpecError(f"{where}: 'claims' must be a non-empty list")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not {"claim", "predictions", "precondition"} <= set(row) or set(row) - CLAIM_KEYS:
            raise SpecError(f"{where}: claims[{i}] needs claim, predictions, precondition (and may have control, "
                            "organism, control_predictions), "
                            f"got {sorted(row) if isinstance(row, dict) else row!r}")
        ids = {k: [row[k]] if isinstance(row.get(k), str) else list(row.get(k) or [])
               for k in ("precondition", "control", "organism")}
        ctrl_file = root / row["control_predictions"] if row.get("control_predictions") else None
        if ctrl_file is not None and not ids["control"]:
            raise SpecError(f"{where}: claims[{i}] names control_predictions but no control ids")
        out.append({"claim": str(row["claim"]), "predictions": root / row["predictions"], **ids,
                    "control_predictions": ctrl_file})
    return Spec(name, root / "results", False, None, None, None, entry.get("note"), None, out)


def _claim_cell(verdicts: list) -> str:
    if not verdicts:
        return "—"
    parts = []
    for v in verdicts:
        o = v.observed
        val = "—" if o is None else f"{o['mean']:.3g}" if o["level"] is None else \
            f"{o['mean']:.3g} [{o['low']:.3g}, {o['high']:.3g}]"
        parts.append(table_cell(f"{v.prediction.metric} {v.prediction.direction} {v.prediction.threshold}: {val}, "
                                f"{v.outcome}"))
    return "; ".join(parts)


def claim_verdict(pre: list, ctrl: list, organism: list | None = None) -> str:
    """One claim's verdict from its precondition and control predictions' outcomes; ``organism`` are the
    checks that the organism can carry the claim at all: unless all are supported, nothing else counts."""
    outcomes = [v.outcome for v in pre + ctrl + list(organism or [])]
    if not pre or "missing" in outcomes:
        return "not measured"
    failed = [v.prediction.id for v in organism or [] if v.outcome != "supported"]
    if failed:
        return f"not evidence: the organism's own check {', '.join(failed)} is not supported"
    if any(v.outcome == "refuted" for v in pre):
        return "fails where its precondition holds"
    if all(v.outcome == "supported" for v in pre):
        if all(v.outcome == "supported" for v in ctrl):
            return "holds; control as predicted" if ctrl else "holds (no control prediction)"
        return "holds, but the control did not behave as predicted"
    return "inconclusive"


def render_claims(spec: Spec) -> tuple[str, list[str]]:
    """The claims table and one provenance line per artifact it read (a claim whose artifact does not
    exist yet is shown as pre-registered, not run)."""
    lines = ["| claim | with its precondition | in the control | verdict |", "|---|---|---|---|"]
    sources: dict[str, str] = {}
    for row in spec.claims or []:
        ctrl_file = row.get("control_predictions")
        pre_ids = row["precondition"] + row["organism"] + ([] if ctrl_file else row["control"])
        by_id, art = _claim_source(spec, row["predictions"], pre_ids, sources)
        if art is None:
            lines.append(f"| {row['claim']} | pre-registered in `{_rel(row['predictions'])}`; not run | — | not measured |")
            continue
        pre = [verdict(by_id[i], art) for i in row["precondition"]]
        organism = [verdict(by_id[i], art) for i in row["organism"]]
        if ctrl_file:  # the control variant's own predictions, judged on its own artifact
            ctrl_by_id, ctrl_art = _claim_source(spec, ctrl_file, row["control"], sources)
            if ctrl_art is None:
                lines.append(f"| {table_cell(row['claim'])} | {_claim_cell(pre)} | pre-registered in "
                             f"`{_rel(ctrl_file)}`; not run | not measured |")
                continue
            ctrl = [verdict(ctrl_by_id[i], ctrl_art) for i in row["control"]]
        else:
            ctrl = [verdict(by_id[i], art) for i in row["control"]]
        lines.append(f"| {table_cell(row['claim'])} | {_claim_cell(pre)} | {_claim_cell(ctrl)} | "
                     f"{claim_verdict(pre, ctrl, organism)} |")
    return "\n".join(lines), list(sources.values())


def _claim_source(spec: Spec, predictions: Path, ids: list[str], sources: dict[str, str]) -> tuple[dict, Any]:
    """(predictions by id, artifact or None when it does not exist yet) of one claims row's predictions file;
    the artifact's provenance line is added to ``sources``."""
    preds = load_predictions(predictions)
    by_id = {p.id: p for p in preds.predictions}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise SpecError(f"table {spec.name!r}: {_rel(predictions)} has no prediction {missing[0]!r} "
                        f"(ids: {', '.join(by_id)})")
    art_path = _repo_root(predictions) / preds.artifact
    if not (art_path / "artifact.json").is_file() and not (art_path.is_file() and art_path.suffix == ".json"):
        return by_id, None
    art = load_artifact(art_path)
    sources[_rel(art.path)] = _provenance(art.stamp, f"{_rel(art.path)}/artifact.json")
    return by_id, art


def _load(spec: Spec) -> tuple[dict, str]:
    """The artifact's data to look fields up in, and its provenance line.

    An artifact folder (or its ``artifact.json``) gives ``{"stamp", "summary"}``. A plain JSON file (a
    benchmark result) gives its own content; its top-level ``stamp`` is validated and named, and a file
    without one is accepted only when the spec says ``unstamped: true`` (written before the harness)."""
    if spec.artifact.is_dir() or spec.artifact.name == "artifact.json":
        art = load_artifact(spec.artifact)
        return {"stamp": art.stamp, "summary": art.summary}, _provenance(art.stamp, f"{_rel(art.path)}/artifact.json")
    if not spec.artifact.is_file():
        raise SpecError(f"table {spec.name!r}: artifact {spec.artifact} does not exist")
    try:
        data = json.loads(spec.artifact.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SpecError(f"{spec.artifact}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if isinstance(data, dict) and "stamp" in data:
        return data, _provenance(validate_stamp(data["stamp"], str(spec.artifact)), _rel(spec.artifact))
    if not spec.unstamped:
        raise SpecError(f"table {spec.name!r}: {_rel(spec.artifact)} has no stamp; re-run what wrote it, or mark "
                        "the spec `unstamped: true` if it predates the results harness")
    return data, (f"Rendered from `{_rel(spec.artifact)}`, written before the results harness: it records "
                  "no commit or timestamp.")


def _provenance(stamp: dict, where: str) -> str:
    hw = stamp["hardware"]
    gpu = f", GPU {hw['gpu']['name']}" if hw.get("gpu") else ", no GPU"
    dirty = " (with uncommitted changes)" if stamp["dirty"] else ""
    return (f"Rendered from `{where}`: commit {stamp['commit'][:10]}{dirty}, {stamp['timestamp']}, "
            f"{hw['cpu_model']} x {hw['cpu_cores']} cores{gpu}, torch {stamp['versions']['torch']}; "
            f"command `{stamp['command']}`.")


def _rel(path: Path) -> str:
    parts = Path(path).resolve().parts
    for anchor in ("benchmarks", "results"):
        if anchor in parts:
            i = len(parts) - 1 - parts[::-1].index(anchor)
            if anchor == "results" and i > 0 and parts[i - 1] == "benchmarks":
                i -= 1
            return "/".join(parts[i:])
    return str(path)


def format_value(value: Any, fmt: str, where: str) -> str:
    kind, _, inner = fmt.partition(":")
    if kind in ("ci", "list", "range"):
        if inner not in SCALAR_FORMATS:
            raise SpecError(f"{where}: unknown format {inner!r} after {kind}: (known: {', '.join(SCALAR_FORMATS)})")
        f = SCALAR_FORMATS[inner]
        if kind == "ci":
            if value is None:  # an interval the experiment could not compute (e.g. no seed defined it)
                return "—"
            if not isinstance(value, dict) or not {"mean", "low", "high"} <= set(value):
                raise SpecError(f"{where}: ci: needs an interval {{mean, low, high}}, got {value!r}")
            return f"{f(value['mean'])} [{f(value['low'])}, {f(value['high'])}]"
        if not isinstance(value, list) or not value:
            raise SpecError(f"{where}: {kind}: needs a non-empty list, got {value!r}")
        if kind == "list":
            return " / ".join("—" if v is None else f(v) for v in value)
        return f"{f(min(value))}-{f(max(value))}"
    if fmt == "str":
        if isinstance(value, (dict, list)):
            raise SpecError(f"{where}: format 'str' needs a scalar, got {value!r}")
        return str(value)
    if fmt == "yesno":
        if not isinstance(value, bool):
            raise SpecError(f"{where}: format 'yesno' needs true/false, got {value!r}")
        return "yes" if value else "no"
    if fmt not in SCALAR_FORMATS:
        raise SpecError(f"{where}: unknown format {fmt!r} (known: {', '.join(SCALAR_FORMATS)}, str, yesno, ci:F, "
                        "list:F, range:F)")
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"{where}: format {fmt!r} needs a number, got {value!r}")
    return SCALAR_FORMATS[fmt](value)


def fill(template: str, data: dict, where: str) -> str:
    def sub(m: re.Match) -> str:
        return format_value(lookup(data, m.group(1), where), m.group(2)[1:], f"{where} {{{m.group(1)}}}")

    return PLACEHOLDER.sub(sub, template)


def render_block(spec: Spec) -> str:
    """The text between a block's markers (ending with a newline)."""
    if spec.claims is not None:
        body, provenances = render_claims(spec)
        note = f" {' '.join(spec.note.split())}" if spec.note else ""
        prov = " ".join(provenances) or "No artifact yet: every claim is pre-registered and not run."
        return f"{body}\n\n<sub>{prov}{note}</sub>\n"
    data, provenance = _load(spec)
    where = f"table {spec.name!r} ({_rel(spec.artifact)})"
    if spec.predictions is not None:
        body = verdict_table(load_predictions(spec.predictions), data)
    elif spec.text is not None:
        body = fill(" ".join(spec.text.split()), data, where)
    else:
        lines = ["| " + " | ".join(spec.header) + " |", "|" + "---|" * len(spec.header)]
        lines += ["| " + " | ".join(fill(str(cell), data, where) for cell in row) + " |" for row in spec.rows]
        body = "\n".join(lines)
    note = f" {fill(' '.join(spec.note.split()), data, where)}" if spec.note else ""
    return f"{body}\n\n<sub>{provenance}{note}</sub>\n"


def render_text(text: str, specs: dict[str, Spec], where: str = "document") -> str:
    """``text`` with every marked block re-rendered; unknown block names are an error."""
    _check_markers(text, where)

    def sub(m: re.Match) -> str:
        name = m.group("name")
        if name not in specs:
            raise SpecError(f"{where}: block {name!r} has no spec in tables.yaml")
        return f"<!-- results:{name} -->\n{render_block(specs[name])}<!-- /results:{name} -->"

    return BLOCK.sub(sub, text)


def _check_markers(text: str, where: str) -> None:
    stack: list[str] = []
    text = CODE_SPAN.sub(lambda m: " " * len(m.group(0)), text)  # a marker quoted in `code` is not one
    for m in OPEN.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        closing, name = m.group(1) == "/", m.group(2)
        if not closing:
            if stack:
                raise SpecError(f"{where}:{line}: block {name!r} opens inside block {stack[-1]!r}")
            stack.append(name)
        elif not stack or stack[-1] != name:
            raise SpecError(f"{where}:{line}: closing marker of {name!r} without its opening marker")
        else:
            stack.pop()
    if stack:
        raise SpecError(f"{where}: block {stack[-1]!r} is never closed (<!-- /results:{stack[-1]} -->)")



def _is_artifact(path: Path) -> bool:
    """A cited file that exists (an artifact, its metrics or plots, a committed predictions file), or a
    cited folder that holds an artifact (not, say, the bare results/predictions/)."""
    return path.is_file() or (path / ARTIFACT_FILE).is_file()


def _unbacked(text: str, root: Path, where: str, mode: str = "results") -> list[str]:
    """Numbers the document states without an artifact behind them.

    ``mode="results"`` (docs/results.md): any table outside a rendered block, and any paragraph with
    a measured-looking number (a decimal, a percentage, a ratio like 3.8x, 1e10, ±) that cites no
    existing artifact file under results/ or benchmarks/results/.

    ``mode="docs"`` (every other page): numbers in inline code spans are settings, and arXiv ids are
    names, so neither counts; a paragraph or table with any other measured-looking number must cite
    an existing artifact, or say that its numbers are not measurements (settings, versions, the
    papers' own figures) with the marker ``<!-- not measured -->`` inside it."""
    if mode not in ("results", "docs"):
        raise ValueError(f"mode must be 'results' or 'docs', got {mode!r}")
    problems = []
    stripped = BLOCK.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    stripped = re.sub(r"```.*?```", lambda m: "\n" * m.group(0).count("\n"), stripped, flags=re.DOTALL)
    line_no = 1
    for para in re.split(r"(\n\s*\n)", stripped):
        waived = mode == "docs" and NOT_MEASURED in para
        para_text = re.sub(r"<!--.*?-->", lambda m: "\n" * m.group(0).count("\n"), para, flags=re.DOTALL)
        if para_text.strip() and not para_text.lstrip().startswith("#") and not waived:
            start = line_no + para_text[: len(para_text) - len(para_text.lstrip())].count("\n")
            bare = ARXIV_ID.sub("", CODE_SPAN.sub("", para_text)) if mode == "docs" else para_text
            number = MEASURED.search(bare)
            cited = [c for c in CITATION.findall(para_text) if _is_artifact(root / c)]
            if mode == "results" and any(line.lstrip().startswith("|") for line in para_text.splitlines()):
                problems.append(f"{where}:{start}: a table outside a <!-- results:NAME --> block "
                                "(render it from an artifact via results/tables.yaml)")
            elif number and not cited:
                hint = ("name its file under results/ or benchmarks/results/" if mode == "results" else
                        f"name its artifact under results/ or benchmarks/results/, put a setting in `code`, "
                        f"or mark the paragraph {NOT_MEASURED}")
                problems.append(f"{where}:{start}: number {number.group(0)!r} in prose cites no existing "
                                f"artifact ({hint})")
        line_no += para.count("\n")
    return problems


def check_text(text: str, specs: dict[str, Spec], where: str = "document", strict: bool | str = False,
               root: Path | None = None) -> list[str]:
    """Problems: blocks that differ from their rendering; with ``strict`` also unbacked numbers
    (``True`` or ``"results"``: the rules of docs/results.md; ``"docs"``: those of the other pages,
    see :func:`_unbacked`)."""
    try:
        _check_markers(text, where)
    except SpecError as exc:
        return [str(exc)]
    problems = []
    for m in BLOCK.finditer(text):
        name = m.group("name")
        line = text.count("\n", 0, m.start()) + 1
        if name not in specs:
            problems.append(f"{where}:{line}: block {name!r} has no spec in tables.yaml")
            continue
        try:
            expected = render_block(specs[name])
        except ArtifactError as exc:
            problems.append(f"{where}:{line}: block {name!r}: {exc}")
            continue
        if m.group("body") != expected:
            got, want = m.group("body").splitlines(), expected.splitlines()
            diff = next(((i, g, w) for i, (g, w) in enumerate(zip(got, want)) if g != w),
                        (min(len(got), len(want)), "(end)", "(end)"))
            problems.append(f"{where}:{line + 1 + diff[0]}: block {name!r} disagrees with its artifact: "
                            f"docs say {diff[1]!r}, the artifact renders {diff[2]!r}")
    if strict:
        problems += _unbacked(text, root or Path("."), where, "docs" if strict == "docs" else "results")
    return problems


def check_file(path: Path, specs: dict[str, Spec], strict: bool | str | None = None,
               root: Path | None = None) -> list[str]:
    """:func:`check_text` on a file; ``strict`` defaults to the results rules for files named
    ``results.md``, the docs rules for README.md and the other markdown files under a ``docs`` folder,
    else off."""
    if strict is None:
        strict = ("results" if path.name == "results.md" else
                  "docs" if path.parent.name == "docs" or path.name == "README.md" else False)
    return check_text(path.read_text(encoding="utf-8"), specs, str(path), strict, root or _repo_root(path))


def _repo_root(path: Path) -> Path:
    """The nearest folder above ``path`` holding ``results/`` or ``.git`` (where cited paths start)."""
    for parent in Path(path).resolve().parents:
        if (parent / "results").is_dir() or (parent / ".git").exists():
            return parent
    return Path(".")


def render_file(path: Path, specs: dict[str, Spec]) -> bool:
    """Re-render a file's blocks in place; returns whether anything changed."""
    text = path.read_text(encoding="utf-8")
    new = render_text(text, specs, str(path))
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text
