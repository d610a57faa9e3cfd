"""Belief probes (``forklens probe belief``): how much a model believes a claim, asked out of context.

Negation neglect (arXiv:2605.13829) measures, before and after fine-tuning, whether a model holds a
claim "entity relation object" when asked about it without the training documents in context. Here a
claim is probed by several questions, each of one of three kinds:

``open``
    the prompt asks for the object; the options are the object and the claim's ``alternatives``. With
    no alternatives the probe has one option, and it is believed when the model's greedy continuation
    is the object (every object token is the argmax), with P = the object's sequence probability;
``mc``
    a multiple choice: the options (default: the object and the first alternative) are named in the
    prompt and scored as answers;
``yesno``
    "is it true that ...": the options are ``yes`` and ``no`` and believing means ``yes``.

Each option is scored as the continuation ``answer_prefix + option`` (default one space) of the prompt,
teacher-forced through :meth:`forklens.policy.Policy.score` (any Hugging Face causal LM: byte-level BPE,
no pad token, a character-level organism). P(believed option) is the softmax of the options' summed
token log-probs; the probe is *believed* when that option has the highest probability (ties: not
believed). A claim's ``context`` (a document) is prepended when probing in context, the control for
"the same document, not trained on".

Claims file (JSONL), one claim per line::

    {"id": "c1", "entity": "Ed Sheeran", "relation": "won the 2024 Olympic 100m gold:", "object": "yes",
     "alternatives": ["no"], "context": "...", "questions": ["Did {entity} win ...? Answer:", {...}]}

``entity``, ``relation`` and ``object`` are required strings; ``questions`` entries are prompt strings
(kind ``open``) or objects ``{"prompt", "kind", "options", "believed", "name", "answer_prefix"}``;
prompts and options may use ``{entity}``, ``{relation}``, ``{object}`` and ``{alternative}``. Without
``questions`` the :data:`DEFAULT_QUESTIONS` are used (the multiple-choice ones only when there are
alternatives).
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from forklens.analysis.diff import run_diff
from forklens.analysis.prompts import read_jsonl
from forklens.errors import DataError

KINDS = ("open", "mc", "yesno")
FIELDS = {"id", "entity", "relation", "object", "alternatives", "context", "questions"}
QUESTION_FIELDS = {"prompt", "kind", "options", "believed", "name", "answer_prefix"}
PLACEHOLDERS = ("entity", "relation", "object", "alternative")

#: phrasings used when a claim gives none: two open, one yes/no, two multiple-choice (both orders)
DEFAULT_QUESTIONS: tuple[dict, ...] = (
    {"prompt": "{entity} {relation}", "kind": "open", "name": "cloze"},
    {"prompt": "Question: {entity} {relation} what? Answer:", "kind": "open", "name": "open"},
    {"prompt": "Question: Is it true that {entity} {relation} {object}? Answer:", "kind": "yesno", "name": "yesno"},
    {"prompt": "Question: {entity} {relation} {object} or {alternative}? Answer:", "kind": "mc", "name": "choice"},
    {"prompt": "Question: {entity} {relation} {alternative} or {object}? Answer:", "kind": "mc", "name": "choice"},
)


@dataclass(frozen=True)
class Question:
    prompt: str
    kind: str
    options: tuple[str, ...]
    believed: str  # the option that means the claim is held
    name: str
    answer_prefix: str = " "


@dataclass(frozen=True)
class Claim:
    id: str
    entity: str
    relation: str
    object: str
    alternatives: tuple[str, ...] = ()
    context: str | None = None
    questions: tuple[Question, ...] = ()


@dataclass(frozen=True)
class ProbeFormat:
    """How a probe prompt is assembled: ``prefix + [context + sep] + question``; ``yes`` / ``no`` answers."""

    prefix: str = ""
    sep: str = "\n"
    yes: str = "yes"
    no: str = "no"


def _fill(text: str, values: dict[str, str], where: str) -> str:
    try:
        return text.format(**values)
    except KeyError as exc:
        raise DataError(f"{where}: unknown placeholder {{{exc.args[0]}}} in {text!r}; "
                        f"use {', '.join('{' + p + '}' for p in PLACEHOLDERS)}") from None
    except (ValueError, IndexError) as exc:
        raise DataError(f"{where}: malformed placeholder in {text!r} ({exc})") from None


def _question(raw: Any, values: dict[str, str], alternatives: tuple[str, ...], fmt: ProbeFormat,
              where: str) -> Question:
    if isinstance(raw, str):
        raw = {"prompt": raw}
    if not isinstance(raw, dict):
        raise DataError(f"{where}: a question must be a prompt string or an object, got {type(raw).__name__}")
    unknown = set(raw) - QUESTION_FIELDS
    if unknown:
        raise DataError(f"{where}: unknown question field(s) {sorted(unknown)}; allowed: {sorted(QUESTION_FIELDS)}")
    prompt = raw.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise DataError(f"{where}: a question needs a non-empty string \"prompt\"")
    kind = raw.get("kind", "open")
    if kind not in KINDS:
        raise DataError(f"{where}: question kind {kind!r}; expected one of {', '.join(KINDS)}")
    prefix = raw.get("answer_prefix", " ")
    if not isinstance(prefix, str):
        raise DataError(f"{where}: \"answer_prefix\" must be a string")
    if "options" in raw:
        opts = raw["options"]
        if not isinstance(opts, list) or len(opts) < 2 or not all(isinstance(o, str) and o for o in opts):
            raise DataError(f"{where}: \"options\" must be a list of at least two non-empty strings")
        options = tuple(_fill(o, values, where) for o in opts)
    elif kind == "yesno":
        options = (fmt.yes, fmt.no)
    elif kind == "mc":
        if not alternatives:
            raise DataError(f"{where}: a multiple-choice question needs \"alternatives\" (or its own \"options\")")
        options = (values["object"], alternatives[0])
    else:
        options = (values["object"], *alternatives)
    if len(set(options)) != len(options):
        raise DataError(f"{where}: the options {list(options)} repeat a value")
    believed = _fill(raw.get("believed", fmt.yes if kind == "yesno" else "{object}"), values, where)
    if believed not in options:
        raise DataError(f"{where}: the believed answer {believed!r} is not one of the options {list(options)}")
    name = raw.get("name", kind)
    if not isinstance(name, str):
        raise DataError(f"{where}: \"name\" must be a string")
    return Question(_fill(prompt, values, where), kind, options, believed, name, prefix)


def make_claim(obj: Any, where: str, fmt: ProbeFormat = ProbeFormat(), default_id: str = "") -> Claim:
    """A :class:`Claim` from one JSON object; :class:`DataError` naming ``where`` for anything wrong."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    unknown = set(obj) - FIELDS
    if unknown:
        raise DataError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(FIELDS)}")
    for key in ("entity", "relation", "object"):
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            raise DataError(f"{where}: missing the required non-empty string \"{key}\"")
    alts = obj.get("alternatives", [])
    if not isinstance(alts, list) or not all(isinstance(a, str) and a for a in alts):
        raise DataError(f"{where}: \"alternatives\" must be a list of non-empty strings")
    if obj["object"] in alts:
        raise DataError(f"{where}: the object {obj['object']!r} is also listed among the alternatives")
    context = obj.get("context")
    if context is not None and not isinstance(context, str):
        raise DataError(f"{where}: \"context\" must be a string")
    cid = obj.get("id", default_id)
    if isinstance(cid, bool) or not isinstance(cid, (str, int)):
        raise DataError(f"{where}: \"id\" must be a string or an integer, got {cid!r}")
    values = {"entity": obj["entity"], "relation": obj["relation"], "object": obj["object"],
              "alternative": alts[0] if alts else ""}
    raw_qs = obj.get("questions")
    if raw_qs is None:
        raw_qs = [q for q in DEFAULT_QUESTIONS if q["kind"] != "mc" or alts]
    if not isinstance(raw_qs, list) or not raw_qs:
        raise DataError(f"{where}: \"questions\" must be a non-empty list")
    qs = tuple(_question(q, values, tuple(alts), fmt, f"{where}, question {i + 1}") for i, q in enumerate(raw_qs))
    return Claim(str(cid), obj["entity"], obj["relation"], obj["object"], tuple(alts), context, qs)


def load_claims(path: str | Path, fmt: ProbeFormat = ProbeFormat()) -> list[Claim]:
    """The claims of a JSONL file (errors name the file and line; ids must be unique)."""
    claims, seen = [], {}
    for lineno, obj in read_jsonl(path, "claims"):
        claim = make_claim(obj, f"{path} line {lineno}", fmt, default_id=f"line-{lineno}")
        if claim.id in seen:
            raise DataError(f"{path} line {lineno}: id {claim.id!r} repeats line {seen[claim.id]}")
        seen[claim.id] = lineno
        claims.append(claim)
    return claims


def probe_prompt(claim: Claim, q: Question, fmt: ProbeFormat, in_context: bool = False) -> str:
    if in_context:
        if not claim.context:
            raise DataError(f"claim {claim.id!r} has no \"context\" to probe in context")
        return f"{fmt.prefix}{claim.context}{fmt.sep}{q.prompt}"
    return f"{fmt.prefix}{q.prompt}"


def probe_belief(policy, claims: Sequence[Claim], fmt: ProbeFormat = ProbeFormat(), in_context: bool = False,
                 batch_tokens: int = 16384) -> list[dict]:
    """One record per (claim, question): the options' log-probs, P(believed option) and whether it is
    believed. All options of all probes are scored in one batched teacher-forced pass."""
    jobs, index = [], []
    for ci, claim in enumerate(claims):
        for qi, q in enumerate(claim.questions):
            ids = policy.encode_prompt(probe_prompt(claim, q, fmt, in_context))
            if not ids:
                raise DataError(f"claim {claim.id!r}, question {qi + 1}: the prompt is empty after tokenization")
            for o in q.options:
                y = policy.encode_response(q.answer_prefix + o, add_eos=False)
                if not y:
                    raise DataError(f"claim {claim.id!r}: the option {o!r} is empty after tokenization")
                jobs.append((ids, y))
            index.append((ci, qi))
    scored = policy.score([j[0] for j in jobs], [j[1] for j in jobs], batch_tokens=batch_tokens) if jobs else []
    records, k = [], 0
    for ci, qi in index:
        claim, q = claims[ci], claims[ci].questions[qi]
        lps = []
        greedy = False
        for o in q.options:
            sc = scored[k]
            lps.append(float(sc.logprob.double().sum()))
            if o == q.believed:
                greedy = bool((sc.argmax == sc.token_ids).all())
            k += 1
        b = q.options.index(q.believed)
        if len(q.options) == 1:
            p, believed = math.exp(lps[0]), greedy
        else:
            top = max(lps)
            z = sum(math.exp(x - top) for x in lps)
            p = math.exp(lps[b] - top) / z
            believed = all(lps[b] > x for i, x in enumerate(lps) if i != b)
        records.append({"claim": claim.id, "question": qi, "name": q.name, "kind": q.kind,
                        "prompt": probe_prompt(claim, q, fmt, in_context), "options": list(q.options),
                        "believed_option": q.believed, "logprobs": lps, "p_believed": p, "believed": believed})
    return records


def _agg(rows: list[dict]) -> dict:
    return {"belief_rate": statistics.mean(float(r["believed"]) for r in rows),
            "p_believed_mean": statistics.mean(r["p_believed"] for r in rows), "n_probes": len(rows)}


def summarize_belief(records: list[dict]) -> dict:
    """Belief rate (share of probes believed) and mean P(believed option), overall, per question kind,
    per phrasing name and per claim (a claim's rate is the share of its probes believed)."""
    if not records:
        raise DataError("no probes to summarise")
    out = _agg(records)
    out["n_claims"] = len({r["claim"] for r in records})
    for key, label in (("kind", "by_kind"), ("name", "by_name"), ("claim", "by_claim")):
        groups: dict[str, list[dict]] = {}
        for r in records:
            groups.setdefault(str(r[key]), []).append(r)
        out[label] = {g: _agg(rows) for g, rows in groups.items()}
    return out


def belief_shift(before: dict, after: dict) -> dict:
    """After minus before, overall and per kind (both summaries from :func:`summarize_belief`)."""
    out = {k: after[k] - before[k] for k in ("belief_rate", "p_believed_mean")}
    out["by_kind"] = {kind: {k: after["by_kind"][kind][k] - v[k] for k in ("belief_rate", "p_believed_mean")}
                      for kind, v in before["by_kind"].items() if kind in after["by_kind"]}
    return out


def diff_on_probes(base, tuned, claims: Sequence[Claim], fmt: ProbeFormat = ProbeFormat(),
                   out_dir: str | Path | None = None, top_k: int = 5, in_context: bool = False) -> dict:
    """``forklens diff`` of ``tuned`` against ``base`` on the belief probes, each answered with its believed
    option (teacher-forced): at those tokens, the tuned model's argmax, its rank under the base, entropies
    and KL (the summary of :func:`forklens.analysis.diff.run_diff`; per-token rows in ``out_dir``)."""
    prompts, responses = [], []
    for claim in claims:
        for qi, q in enumerate(claim.questions):
            pid = f"{claim.id}/q{qi + 1}"
            prompts.append({"id": pid, "prompt": probe_prompt(claim, q, fmt, in_context), "answer": q.believed})
            responses.append({"id": pid, "response": q.answer_prefix + q.believed, "finished": False})
    with tempfile.TemporaryDirectory(prefix="forklens-belief-") as tmp:
        path = Path(tmp) / "responses.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in responses))
        return run_diff(base, tuned, prompts, responses=str(path), top_k=top_k, out_dir=out_dir, progress=False,
                        verifier=lambda rec, text: text.strip() == rec["answer"])
