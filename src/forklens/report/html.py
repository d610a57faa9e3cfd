"""Self-contained HTML reports, rendered from the JSON a command already wrote (never recomputed).

:func:`render_diff_report` turns the ``forklens diff`` summary, per-token rows and response metadata
into one HTML file that works offline: the CSS and JS under ``report/templates/`` are inlined, charts
are inline SVG drawn here, and the tooltip data is embedded as JSON. Every piece of model text is
HTML-escaped, and whitespace / control characters are shown visibly (``␣``, ``↵``, ``⇥``, ...).
"""

from __future__ import annotations

import html
import json
import math
import re
import unicodedata
from importlib import resources
from typing import Any, Mapping, Sequence

__all__ = ["esc", "render_diff_report", "svg_bar_chart", "svg_grouped_histogram", "visible_text"]

CLASS_COLORS = {"unshifted": "#6b7280", "reranked": "#d97706", "shifted": "#dc2626"}
AGREE_COLOR = "#2563eb"
DISAGREE_COLOR = "#d97706"
ENTROPY_RGB = (37, 99, 235)
MAX_SHADE = 0.55


def esc(text: Any) -> str:
    """HTML-escape text for element content and double- or single-quoted attributes."""
    return html.escape(str(text), quote=True)


_SPECIAL_WS = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍", "\x7f": "␡"}


def visible_text(text: str) -> str:
    """Token text with whitespace and invisible characters replaced by visible symbols (not escaped)."""
    if text == "":
        return "∅"
    out = []
    for ch in text:
        if ch in _SPECIAL_WS:
            out.append(_SPECIAL_WS[ch])
        elif ord(ch) < 32:
            out.append(chr(0x2400 + ord(ch)))  # control pictures
        else:
            cat = unicodedata.category(ch)
            if cat == "Zs":
                out.append("⍽")
            elif cat in ("Cc", "Cf", "Zl", "Zp", "Co", "Cn"):
                out.append(f"⟨U+{ord(ch):04X}⟩")
            else:
                out.append(ch)
    return "".join(out)


def _json_for_script(obj: Any) -> str:
    """JSON safe inside ``<script type="application/json">`` (no ``</script>``, no ``<!--``)."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
            return f"{x:.{digits}g}"
        return f"{x:.{digits}f}"
    return str(x)


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def _template(name: str) -> str:
    return (resources.files("forklens.report") / "templates" / name).read_text(encoding="utf-8")


def _fill(template: str, values: Mapping[str, str]) -> str:
    """Replace ``{{ name }}`` markers in one pass (inserted text is never re-scanned)."""
    def sub(m: re.Match) -> str:
        key = m.group(1)
        if key not in values:
            raise KeyError(f"template marker {{{{ {key} }}}} has no value")
        return values[key]

    return re.sub(r"\{\{\s*([a-z_]+)\s*\}\}", sub, template)


# ----------------------------------------------------------------------------------------------
# SVG charts
# ----------------------------------------------------------------------------------------------


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * exp:
            return m * exp
    return 10 * exp


def _svg_open(width: int, height: int, title: str, desc: str, ident: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
        f'role="img" aria-labelledby="{ident}-t {ident}-d" class="chart">',
        f'<title id="{ident}-t">{esc(title)}</title>',
        f'<desc id="{ident}-d">{esc(desc)}</desc>',
    ]


def svg_bar_chart(labels: Sequence[str], values: Sequence[float], colors: Sequence[str], *, title: str,
                  desc: str, xlabel: str, ylabel: str, ident: str, width: int = 520, height: int = 300,
                  annotate: Sequence[str] | None = None) -> str:
    """A vertical bar chart as an inline SVG string."""
    ml, mr, mt, mb = 56, 12, 28, 48
    pw, ph = width - ml - mr, height - mt - mb
    top = _nice_max(max(values, default=0))
    parts = _svg_open(width, height, title, desc, ident)
    parts.append(f'<text x="{width / 2:.1f}" y="16" text-anchor="middle" class="ct">{esc(title)}</text>')
    for i in range(5):
        v = top * i / 4
        y = mt + ph - ph * i / 4
        parts.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{ml - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{esc(_fmt(v, 2) if v % 1 else _fmt(int(v)))}</text>')
    n = max(1, len(values))
    slot = pw / n
    for i, (lab, v, c) in enumerate(zip(labels, values, colors)):
        h = ph * (v / top) if top else 0
        x = ml + i * slot + slot * 0.15
        parts.append(f'<rect x="{x:.1f}" y="{mt + ph - h:.1f}" width="{slot * 0.7:.1f}" height="{h:.1f}" '
                     f'fill="{c}"><title>{esc(lab)}: {esc(_fmt(v))}</title></rect>')
        parts.append(f'<text x="{x + slot * 0.35:.1f}" y="{mt + ph + 16:.1f}" text-anchor="middle" class="tick">{esc(lab)}</text>')
        note = annotate[i] if annotate else _fmt(v)
        if v:
            parts.append(f'<text x="{x + slot * 0.35:.1f}" y="{mt + ph - h - 4:.1f}" text-anchor="middle" class="val">{esc(note)}</text>')
    parts.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{mt + ph}" y2="{mt + ph}" class="axis"/>')
    parts.append(f'<text x="{ml + pw / 2:.1f}" y="{height - 8}" text-anchor="middle" class="lab">{esc(xlabel)}</text>')
    parts.append(f'<text transform="translate(14 {mt + ph / 2:.1f}) rotate(-90)" text-anchor="middle" class="lab">{esc(ylabel)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_grouped_histogram(edges: Sequence[float], series: Sequence[tuple[str, Sequence[float], str]], *,
                          title: str, desc: str, xlabel: str, ylabel: str, ident: str,
                          markers: Sequence[tuple[str, float | None, str]] = (), width: int = 520,
                          height: int = 300) -> str:
    """Side-by-side bars per bin for each ``(name, heights, color)`` series, plus vertical markers."""
    ml, mr, mt, mb = 56, 12, 44, 48
    pw, ph = width - ml - mr, height - mt - mb
    top = _nice_max(max((v for _, vals, _ in series for v in vals), default=0))
    lo, hi = edges[0], edges[-1]
    span = (hi - lo) or 1.0
    def xpos(v):
        return ml + pw * (v - lo) / span
    parts = _svg_open(width, height, title, desc, ident)
    parts.append(f'<text x="{width / 2:.1f}" y="16" text-anchor="middle" class="ct">{esc(title)}</text>')
    lx = ml
    for name, _, color in series:
        parts.append(f'<rect x="{lx}" y="25" width="12" height="12" fill="{color}"/>'
                     f'<text x="{lx + 16}" y="35" class="tick">{esc(name)}</text>')
        lx += 24 + 7 * len(name)
    for name, value, color in markers:
        if value is None:
            continue
        parts.append(f'<line x1="{lx}" x2="{lx + 14}" y1="31" y2="31" stroke="{color}" stroke-width="2" stroke-dasharray="4 2"/>'
                     f'<text x="{lx + 18}" y="35" class="tick">{esc(name)}</text>')
        lx += 30 + 7 * len(name)
    for i in range(5):
        v = top * i / 4
        y = mt + ph - ph * i / 4
        parts.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{ml - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{v:.2g}</text>')
    k = max(1, len(series))
    for b in range(len(edges) - 1):
        x0, x1 = xpos(edges[b]), xpos(edges[b + 1])
        w = (x1 - x0) * 0.9 / k
        for s, (name, vals, color) in enumerate(series):
            v = vals[b]
            h = ph * v / top if top else 0
            parts.append(f'<rect x="{x0 + (x1 - x0) * 0.05 + s * w:.1f}" y="{mt + ph - h:.1f}" width="{w:.1f}" '
                         f'height="{h:.1f}" fill="{color}"><title>{esc(name)}, {edges[b]:.2f}–{edges[b + 1]:.2f} '
                         f'nats: {v:.3f}</title></rect>')
    for name, value, color in markers:
        if value is None:
            continue
        x = xpos(value)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{mt}" y2="{mt + ph}" stroke="{color}" stroke-width="2" '
                     f'stroke-dasharray="4 2"><title>{esc(name)}: {value:.3f}</title></line>')
    for i in range(6):
        v = lo + span * i / 5
        parts.append(f'<text x="{xpos(v):.1f}" y="{mt + ph + 16:.1f}" text-anchor="middle" class="tick">{v:.2f}</text>')
    parts.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{mt + ph}" y2="{mt + ph}" class="axis"/>')
    parts.append(f'<text x="{ml + pw / 2:.1f}" y="{height - 8}" text-anchor="middle" class="lab">{esc(xlabel)}</text>')
    parts.append(f'<text transform="translate(14 {mt + ph / 2:.1f}) rotate(-90)" text-anchor="middle" class="lab">{esc(ylabel)}</text>')
    parts.append("</svg>")
    return "".join(parts)


# ----------------------------------------------------------------------------------------------
# The diff report
# ----------------------------------------------------------------------------------------------


def _rank_chart(summary: Mapping[str, Any]) -> str:
    hist = summary.get("rank_histogram") or {}
    k = int(summary.get("top_k") or 5)
    labels = [str(r) for r in range(2, 11)] + [">10"]
    values = [int(hist.get(lab, 0)) for lab in labels]
    colors = [CLASS_COLORS["reranked"] if (lab != ">10" and int(lab) <= k) else CLASS_COLORS["shifted"]
              for lab in labels]
    n_dis = sum(values)
    rank1 = int(hist.get("1", 0))
    if n_dis == 0:
        return (f'<p class="empty">No disagreement positions: the RL token is the base model\'s top token at all '
                f'{rank1:,} positions, so there is no rank histogram to draw.</p>')
    desc = (f"Base rank of the RL model's token at the {n_dis} disagreement positions: "
            + ", ".join(f"rank {lab}: {v}" for lab, v in zip(labels, values))
            + f". Rank 1 (agreement) at {rank1} positions is not drawn.")
    notes = [f"{v:,}" for v in values]
    return svg_bar_chart(labels, values, colors, title="Base rank of the RL token where they disagree",
                         desc=desc, xlabel=f"rank under base (amber: reranked, 2..{k}; red: shifted, >{k})",
                         ylabel="positions", ident="rankchart", annotate=notes)


def _entropy_chart(summary: Mapping[str, Any]) -> str:
    hist = summary.get("entropy_histogram") or {}
    edges = hist.get("edges") or [0.0, 1.0]
    agree, dis = hist.get("agreement") or [], hist.get("disagreement") or []
    na, nd = sum(agree), sum(dis)
    if na + nd == 0:
        return '<p class="empty">No scored positions.</p>'
    fa = [c / na if na else 0.0 for c in agree]
    fd = [c / nd if nd else 0.0 for c in dis]
    desc = (f"Distribution of base entropy (nats) at {na} agreeing and {nd} disagreeing positions; mean "
            f"{_fmt(summary.get('entropy_mean_agreement'))} vs {_fmt(summary.get('entropy_mean_disagreement'))}.")
    return svg_grouped_histogram(
        edges, [(f"agree (n={na:,})", fa, AGREE_COLOR), (f"disagree (n={nd:,})", fd, DISAGREE_COLOR)],
        title="Base entropy at agreeing vs disagreeing positions", desc=desc,
        xlabel="base entropy H_b (nats)", ylabel="fraction of positions", ident="entchart",
        markers=[("mean agree", summary.get("entropy_mean_agreement"), AGREE_COLOR),
                 ("mean disagree", summary.get("entropy_mean_disagreement"), DISAGREE_COLOR)])


_METRICS = [
    ("n_tokens", "tokens scored", "response tokens (EOS included, padding excluded)", _fmt),
    ("n_responses", "responses", "teacher-forced responses", _fmt),
    ("unshifted_frac", "unshifted", "RL token is the base's top token (rank 1)", _pct),
    ("reranked_frac", "reranked", "RL token has base rank 2..K", _pct),
    ("shifted_frac", "shifted", "RL token has base rank > K", _pct),
    ("mean_rank_at_disagreement", "mean rank at disagreement", "mean base rank where rank > 1", _fmt),
    ("entropy_mean_all", "mean base entropy (all)", "nats, full vocabulary, temperature 1", _fmt),
    ("entropy_mean_disagreement", "mean base entropy (disagreement)", "nats, positions with rank > 1", _fmt),
    ("entropy_ratio", "entropy ratio", "disagreement mean / overall mean", _fmt),
    ("disagreement_in_top_entropy_decile", "disagreement in top entropy decile",
     "share of disagreement positions whose base entropy is in the top 10% of all positions", _pct),
    ("kl_mean", "mean KL(base‖RL)", "nats per position", _fmt),
]


def _summary_table(summary: Mapping[str, Any]) -> str:
    splits = summary.get("by_correctness") or {}
    cols = [("all", summary)] + [(name, splits[name]) for name in ("correct", "incorrect") if name in splits]
    head = "".join(f'<th scope="col">{esc(name)}</th>' for name, _ in cols)
    body = []
    for key, label, help_text, fmt in _METRICS:
        cells = "".join(f'<td class="num">{esc(fmt(s.get(key)))}</td>' for _, s in cols)
        body.append(f'<tr><th scope="row"><span class="mlabel">{esc(label)}</span>'
                    f'<span class="mhelp">{esc(help_text)}</span></th>{cells}</tr>')
    cont = summary.get("topk_containment") or {}
    cont_cells = "".join(f'<td class="num">{esc(_pct(cont.get(str(k))))}</td>' for k in range(1, 11))
    containment = (
        '<table class="contain"><caption>Top-k containment: share of disagreement positions whose RL token has '
        'base rank ≤ k</caption><thead><tr><th scope="col">k</th>'
        + "".join(f'<th scope="col">{k}</th>' for k in range(1, 11))
        + f'</tr></thead><tbody><tr><th scope="row">contained</th>{cont_cells}</tr></tbody></table>'
    )
    corr = summary.get("correctness")
    corr_line = ""
    if corr:
        corr_line = (f'<p>Graded {corr["n_graded"]:,} responses: {corr["n_correct"]:,} correct '
                     f'(accuracy {_pct(corr["accuracy"])}).</p>')
    return (f'<table class="metrics"><caption>Summary (K = {esc(summary.get("top_k"))})</caption><thead><tr>'
            f'<th scope="col">metric</th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
            f'{corr_line}{containment}')


def _run_info(summary: Mapping[str, Any]) -> str:
    dec = summary.get("decoding")
    items = [("base model", summary.get("base_model")), ("RL model", summary.get("rl_model")),
             ("responses", summary.get("responses_file") or summary.get("responses"))]
    if dec:
        items.append(("decoding", ", ".join(f"{k}={v}" for k, v in dec.items())))
    items += [("chat template", _fmt(summary.get("chat_template"))), ("K (--top-k)", summary.get("top_k")),
              ("prompts", summary.get("n_prompts")), ("truncated responses", summary.get("n_truncated"))]
    if summary.get("verifier"):
        items.append(("verifier", summary.get("verifier")))
    return "<dl class=\"info\">" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(_fmt(v))}</dd>" for k, v in items) + "</dl>"


def _shade(h: float | None, hmax: float) -> str:
    if h is None or hmax <= 0:
        return "transparent"
    a = MAX_SHADE * max(0.0, min(1.0, h / hmax))
    r, g, b = ENTROPY_RGB
    return f"rgba({r},{g},{b},{a:.3f})"


def _prob(lp: float | None) -> float | None:
    return None if lp is None else math.exp(lp)


def render_diff_report(summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                       responses: Sequence[Mapping[str, Any]], *, max_responses: int = 200,
                       title: str = "forklens diff") -> str:
    """The ``report.html`` page for a diff run, from its summary, token rows and response metadata."""
    shown = list(responses)[:max_responses]
    keys = {(m["prompt_index"], m["sample_id"]) for m in shown}
    by_resp: dict[tuple[int, int], list[Mapping[str, Any]]] = {}
    for r in rows:
        key = (r["prompt_index"], r["sample_id"])
        if key in keys:
            by_resp.setdefault(key, []).append(r)
    hmax = max((r["base_entropy"] for r in rows if r.get("base_entropy") is not None), default=0.0)
    tokens_data: list[dict[str, Any]] = []
    blocks: list[str] = []
    for ri, meta in enumerate(shown):
        key = (meta["prompt_index"], meta["sample_id"])
        toks = sorted(by_resp.get(key, []), key=lambda r: r["position"])
        n_dis = sum(1 for r in toks if r["rank_under_base"] > 1)
        spans = []
        for r in toks:
            i = len(tokens_data)
            vis = visible_text(r["token_text"])  # the token alone (fragments of a character as \xNN)
            span = r.get("span_text", r["token_text"])  # what it adds to the response text ("" mid-character: ◌)
            k5 = 5
            tokens_data.append({
                "t": vis, "r": visible_text(r["rl_token_text"]), "rid": r["rl_token_id"], "tid": r["token_id"],
                "pos": r["position"], "k": r["rank_under_base"], "c": r["class"],
                "hb": r["base_entropy"], "hr": r["rl_entropy"], "kl": r["kl_base_rl"],
                "pb": _prob(r["base_logprob"]), "pr": _prob(r["rl_logprob"]),
                "b": [[visible_text(t), _prob(lp), tid] for t, lp, tid in
                      zip(r["base_topk_texts"][:k5], r["base_topk_logprobs"][:k5], r["base_topk_ids"][:k5])],
                "l": [[visible_text(t), _prob(lp), tid] for t, lp, tid in
                      zip(r["rl_topk_texts"][:k5], r["rl_topk_logprobs"][:k5], r["rl_topk_ids"][:k5])],
            })
            h = r.get("base_entropy")
            label = (f"token {vis}, {r['class']}, base rank {r['rank_under_base']}, base entropy "
                     f"{_fmt(h, 2)} nats")
            spans.append(f'<span class="tok c-{esc(r["class"])}" tabindex="0" data-i="{i}" role="button" '
                         f'aria-label="{esc(label)}" style="background-color:{_shade(h, hmax)}">{esc(visible_text(span) if span else "◌")}</span>')
            spans.append("<br>" * min(span.count("\n"), 3) if "\n" in span else "<wbr>")
        correct = meta.get("correct")
        badge = ""
        if correct is not None:
            badge = ('<span class="badge ok">✓ correct</span>' if correct
                     else '<span class="badge bad">✗ incorrect</span>')
        trunc = "" if meta.get("finished", True) else '<span class="badge trunc">truncated</span>'
        heading_id = f"resp-{ri}"
        answer = "" if meta.get("answer") is None else f'<p class="answer">answer: <code>{esc(meta["answer"])}</code></p>'
        blocks.append(
            f'<section class="response{" has-dis" if n_dis else ""}" aria-labelledby="{heading_id}">'
            f'<h3 id="{heading_id}">prompt <code>{esc(meta["prompt_id"])}</code> · sample {esc(meta["sample_id"])}'
            f' · {len(toks)} tokens · {n_dis} disagreement{"s" if n_dis != 1 else ""} {badge}{trunc}</h3>'
            f'<details><summary>prompt</summary><pre class="prompt">{esc(meta["prompt"])}</pre>{answer}</details>'
            f'<div class="tokens" role="group" aria-label="tokens of response {ri + 1}">{"".join(spans)}</div>'
            f'</section>'
        )
    more = ""
    if len(responses) > len(shown):
        more = (f'<p class="note">Showing the first {len(shown):,} of {len(responses):,} responses; every token '
                f'is in the tokens table ({esc((summary.get("files") or {}).get("tokens", "tokens.jsonl"))}).</p>')
    values = {
        "title": esc(title),
        "css": _template("diff.css"),
        "js": _template("diff.js"),
        "run_info": _run_info(summary),
        "summary_table": _summary_table(summary),
        "rank_chart": _rank_chart(summary),
        "entropy_chart": _entropy_chart(summary),
        "hmax": esc(_fmt(hmax, 2)),
        "top_k": esc(summary.get("top_k")),
        "responses": "".join(blocks) or '<p class="empty">No responses.</p>',
        "more": more,
        "data": _json_for_script({"tokens": tokens_data}),
    }
    return _fill(_template("diff.html"), values)
