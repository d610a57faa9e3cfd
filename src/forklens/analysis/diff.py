"""Token-level diff of a base and an RL model (``forklens diff``; docs/diff.md).

Responses (by default the RL model's greedy completions) are teacher-forced through both models.
At every response token t (EOS included, padding excluded) we measure:

* the **RL token**: the RL model's argmax at t (ties: the lowest token id, as ``torch.argmax``);
* ``rank_under_base``: 1-based rank of the RL token under the base distribution, computed exactly
  over the whole vocabulary as ``1 + #{v : base_logit[v] > base_logit[rl_token]}`` on the float32
  base logits. Ties therefore share the best rank: a token tied with the base's top logit has rank 1;
* ``class``: ``unshifted`` (rank 1), ``reranked`` (2..K) or ``shifted`` (> K), K = ``top_k``;
* base and RL entropies in nats over the full vocabulary at temperature 1;
* ``KL(base || rl) = sum_v p_b(v) (log p_b(v) - log p_r(v))`` (terms with p_b(v) = 0 count 0).

The code is split in three layers:

1. :func:`chunk_pair_stats` (pure, on one chunk of logits) and :func:`score_pairs`, which runs both
   model bodies once per batch and applies both LM heads chunk by chunk, so full float32 logits
   for both models never exist at once (peak ~ ``chunk_tokens x vocab x 8`` floats), in
   :mod:`forklens.analysis.diff_scores`;
2. :func:`token_rows` (scored tensors -> per-token rows) and :func:`summarize` (rows -> summary),
   both pure, in :mod:`forklens.analysis.diff_summary`;
3. :func:`run_diff`: prompts -> responses -> scores -> rows -> summary, sharded over
   ``torch.distributed`` ranks when initialised, with outputs written by rank 0.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence


from forklens import dist as fdist
from forklens.analysis.diff_scores import MIN_LIST_K, PairScores, chunk_pair_stats, head_vocab, score_pairs
from forklens.analysis.diff_summary import CLASSES, TOP_DECILE_RULE, classify, summarize, token_rows
from forklens.analysis.prompts import load_responses
from forklens.errors import ConfigError, DataError, ModelLoadError
from forklens.policy.scaffold import Scaffold
from forklens.policy.tokens import TokenTexts
from forklens.tasks.dataset import prompt_text
from forklens.tasks.answers import is_correct

__all__ = [
    "RESPONSE_SOURCES",
    "CLASSES",
    "PairScores",
    "chunk_pair_stats",
    "score_pairs",
    "classify",
    "token_rows",
    "summarize",
    "check_tokenizers_match",
    "default_verifier",
    "run_diff",
    "write_outputs",
]

RESPONSE_SOURCES = ("rl-greedy", "rl-sample", "base-sample")
TIE_RULE = ("rank = 1 + number of vocabulary entries whose float32 base logit is strictly greater than "
            "the base logit of the RL token; tied tokens share the better rank")


# ----------------------------------------------------------------------------------------------
# Checks and the default verifier
# ----------------------------------------------------------------------------------------------


def _special(tok) -> dict[str, Any]:
    out = {}
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        out[name] = (getattr(tok, name, None), getattr(tok, f"{name}_id", None))
    out["all_special_tokens"] = sorted(str(t) for t in getattr(tok, "all_special_tokens", []))
    return out


def check_tokenizers_match(base_tok, rl_tok, *, base_name: str = "base", rl_name: str = "RL",
                           chat_template: bool = False) -> None:
    """Raise :class:`ModelLoadError` naming the first difference between the two tokenizers."""
    vb, vr = base_tok.get_vocab(), rl_tok.get_vocab()
    if vb != vr:
        ib = {i: t for t, i in vb.items()}
        ir = {i: t for t, i in vr.items()}
        for i in sorted(set(ib) | set(ir)):
            if ib.get(i) != ir.get(i):
                raise ModelLoadError(
                    f"the base and RL tokenizers differ: token id {i} is {ib.get(i, '<absent>')!r} in "
                    f"{base_name} but {ir.get(i, '<absent>')!r} in {rl_name} (vocabulary sizes {len(vb)} "
                    f"and {len(vr)}); forklens diff needs the same tokenizer for both models"
                )
    sb, sr = _special(base_tok), _special(rl_tok)
    for key in sb:
        if sb[key] != sr[key]:
            raise ModelLoadError(
                f"the base and RL tokenizers differ in {key}: {sb[key]!r} in {base_name} but {sr[key]!r} in "
                f"{rl_name}; forklens diff needs the same tokenizer for both models"
            )
    if chat_template and getattr(base_tok, "chat_template", None) != getattr(rl_tok, "chat_template", None):
        raise ModelLoadError(
            f"the chat templates of {base_name} and {rl_name} differ; with --chat-template both must match"
        )


def default_verifier(record: dict[str, Any], completion: str) -> bool:
    """The answer check for a prompts file: :func:`forklens.tasks.answers.is_correct` on the record's answer."""
    return is_correct(record["answer"], completion)


# ----------------------------------------------------------------------------------------------
# 3. The pipeline
# ----------------------------------------------------------------------------------------------


def _normalise_prompts(prompts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out, seen = [], set()
    if not prompts:
        raise DataError("no prompts to diff: the prompt list is empty")
    for i, rec in enumerate(prompts):
        if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), (str, list)):
            raise DataError(f"prompt record {i} needs a \"prompt\" field (a string or chat messages), got {rec!r:.80}")
        rec = dict(rec)
        rec["id"] = str(rec["id"]) if rec.get("id") is not None else str(i)
        if rec["id"] in seen:
            raise DataError(f"prompt id {rec['id']!r} appears twice")
        seen.add(rec["id"])
        if rec.get("answer") is not None:
            rec["answer"] = str(rec["answer"])
        out.append(rec)
    return out


def _where(rec: dict[str, Any]) -> str:
    return f"prompt {rec['id']!r}" + (f" (line {rec['line']})" if rec.get("line") else "")


class _Progress:
    """A rich progress bar on rank 0 when asked (or when stderr is a terminal); no-op otherwise."""

    def __init__(self, enabled: bool):
        self.bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), console=Console(stderr=True))

    def __enter__(self):
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def task(self, description: str, total: int) -> Callable[[int], None] | None:
        if self.bar is None:
            return None
        tid = self.bar.add_task(description, total=total)
        return lambda k: self.bar.advance(tid, k)


TOKENS_FORMATS = ("jsonl", "parquet")


def run_diff(base, rl, prompts: list[dict], *, responses: str = "rl-greedy", n: int = 1,
             temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 64, top_k: int = 5,
             chat_template: bool = False, seed: int = 0,
             verifier: Callable[[dict, str], bool] | None = None, out_dir: str | Path | None = None,
             block_size: int = 16, batch_tokens: int = 8192, chunk_tokens: int | None = None,
             progress: bool | None = None, max_report_responses: int = 200,
             tokens_format: str = "jsonl", base_scaffold: Scaffold | None = None,
             rl_scaffold: Scaffold | None = None) -> dict[str, Any]:
    """Diff ``rl`` against ``base`` (two :class:`~forklens.policy.Policy`) on ``prompts``; return the summary.

    ``prompts``: dicts with ``prompt`` and optional ``id`` / ``answer``. ``responses``: ``rl-greedy``
    (default), ``rl-sample``, ``base-sample`` or the path of a responses JSONL file. Generation runs in
    blocks of ``block_size`` prompts, block b seeded with ``seed * 1000003 + b``; under
    ``torch.distributed`` block b goes to rank ``b % world_size``, so outputs do not depend on the
    number of processes. Rank 0 gathers the rows, writes ``tokens.jsonl`` (``tokens.parquet`` with
    ``tokens_format='parquet'``, which needs pyarrow),
    ``responses.jsonl``, ``summary.json`` and ``report.html`` into ``out_dir`` when given; every rank
    returns the summary.

    ``base_scaffold`` / ``rl_scaffold`` (:class:`~forklens.policy.scaffold.Scaffold`: a skill text and
    a prompt template) wrap each prompt for that side only: both sides then score the same response
    tokens, each in its own context (base vs base+skill, base+skill vs RL, ...). Generated responses
    come from the generating side's scaffolded prompt; ``correct`` judges the response text.
    """
    if top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {top_k}")
    if tokens_format not in TOKENS_FORMATS:
        raise ConfigError(f"--tokens-format must be one of {', '.join(TOKENS_FORMATS)}, got {tokens_format!r}")
    if tokens_format == "parquet":
        _pyarrow()  # fail before any model work
    if n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}")
    if block_size < 1:
        raise ConfigError(f"block_size must be >= 1, got {block_size}")
    source = str(responses)
    from_file = source not in RESPONSE_SOURCES
    if from_file:
        if not Path(source).is_file():
            raise ConfigError(f"--responses must be one of {', '.join(RESPONSE_SOURCES)} or an existing "
                              f"JSONL file; {source!r} is neither")
    else:
        if max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
        if source == "rl-greedy" and n != 1:
            raise ConfigError("greedy responses are deterministic: --n > 1 would score n identical copies; "
                              "use --responses rl-sample (or base-sample) for several samples per prompt")
        if source != "rl-greedy" and not temperature > 0:
            raise ConfigError(f"--temperature must be > 0 for {source}, got {temperature}")
        if not 0 < top_p <= 1:
            raise ConfigError(f"--top-p must be in (0, 1], got {top_p}")

    check_tokenizers_match(base.tokenizer, rl.tokenizer, base_name=f"base ({base.path})",
                           rl_name=f"RL ({rl.path})", chat_template=chat_template)
    vb, vr = head_vocab(base.model), head_vocab(rl.model)
    if vb != vr:
        raise ModelLoadError(f"the base output layer has {vb} rows but the RL one has {vr}; the models must "
                             "share a vocabulary")

    records = _normalise_prompts(prompts)
    contexts = [c for c in (base.context, rl.context) if c is not None]
    context = min(contexts) if contexts else None
    scaffolds = {"base": base_scaffold or Scaffold(), "rl": rl_scaffold or Scaffold()}
    ids_of: dict[str, list[list[int]]] = {"base": [], "rl": []}
    for rec in records:
        for side, scaffold in scaffolds.items():
            ids = rl.encode_prompt(scaffold.apply(rec["prompt"]), chat_template)
            where = _where(rec) + ("" if scaffold.is_identity else f" with the {side} scaffold")
            if not ids:
                raise DataError(f"{where} is empty after tokenization: nothing predicts the first response token")
            if context is not None and len(ids) >= context:
                raise DataError(f"{where} is {len(ids)} tokens, which leaves no room for a response in the "
                                f"context of {context} tokens")
            if context is not None and not from_file and len(ids) + max_new_tokens > context:
                raise DataError(f"{where} is {len(ids)} tokens; with --max-new-tokens {max_new_tokens} it "
                                f"exceeds the context of {context} tokens (lower --max-new-tokens or shorten it)")
            ids_of[side].append(ids)
    prompt_ids = ids_of["base"]
    same_prompts = ids_of["base"] == ids_of["rl"]

    dist = fdist.group()  # only a real process group shards the prompts
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist else (0, 1)
    n_blocks = -(-len(records) // block_size)
    mine = [b for b in range(n_blocks) if b % world == rank]
    my_prompts = [i for b in mine for i in range(b * block_size, min(len(records), (b + 1) * block_size))]

    # --- responses: (prompt index, sample id, response ids, finished, text)
    jobs: list[tuple[int, int, list[int], bool, str]] = []
    if from_file:
        matched = load_responses(source, records)
        counter: dict[int, int] = {}
        for idx, text, finished in matched:
            sid = counter.get(idx, 0)
            counter[idx] = sid + 1
            y = rl.encode_response(text, add_eos=finished)
            if not y:
                raise DataError(f"{source}: the response #{sid} for {_where(records[idx])} is empty and not "
                                "finished (no EOS): there is no token to score")
            longest = max(len(ids_of["base"][idx]), len(ids_of["rl"][idx]))
            if context is not None and longest + len(y) > context:
                raise DataError(f"{source}: {_where(records[idx])} with its response #{sid} is "
                                f"{longest + len(y)} tokens, longer than the context of {context}")
            jobs.append((idx, sid, y, finished, text))
        mine_set = set(my_prompts)
        jobs = [j for j in jobs if j[0] in mine_set]
    show = progress if progress is not None else (rank == 0 and sys.stderr.isatty())
    show = bool(show) and rank == 0
    with _Progress(show) as bars:
        if not from_file:
            gen_side = "rl" if source.startswith("rl") else "base"
            gen = rl if gen_side == "rl" else base
            greedy = source == "rl-greedy"
            tick = bars.task(f"generating ({source})", len(my_prompts) * n)
            for b in mine:
                idxs = list(range(b * block_size, min(len(records), (b + 1) * block_size)))
                s = gen.sample([ids_of[gen_side][i] for i in idxs], n=n, temperature=0.0 if greedy else temperature,
                               top_p=1.0 if greedy else top_p, max_new_tokens=max_new_tokens,
                               seed=(seed * 1_000_003 + b) % 2**63, progress=tick)
                for k in range(len(s.response_ids)):
                    idx = idxs[s.group[k]]
                    jobs.append((idx, k % n, list(s.response_ids[k]), bool(s.finished[k]), s.texts[k]))
        jobs = [j for j in jobs if j[2]]  # a response with no token (cannot happen with max_new_tokens >= 1)
        tick = bars.task("scoring (base and RL)", len(jobs))
        scores = score_pairs(base, rl, [prompt_ids[j[0]] for j in jobs], [j[2] for j in jobs],
                             list_k=max(top_k, MIN_LIST_K), batch_tokens=batch_tokens,
                             chunk_tokens=chunk_tokens, progress=tick,
                             rl_prompt_ids=None if same_prompts else [ids_of["rl"][j[0]] for j in jobs])

    check = verifier or default_verifier
    texts = TokenTexts(rl.tokenizer)  # byte fragments as \xNN, never U+FFFD

    rows: list[dict[str, Any]] = []
    resp_meta: list[dict[str, Any]] = []
    for (idx, sid, y, finished, text), sc in zip(jobs, scores):
        rec = records[idx]
        correct = bool(check(rec, text)) if rec.get("answer") is not None else None
        rows += token_rows(sc, prompt_id=rec["id"], prompt_index=idx, sample_id=sid, top_k=top_k,
                           token_text=texts.display, correct=correct, span_texts=texts.spans(y))
        resp_meta.append({"prompt_id": rec["id"], "prompt_index": idx, "sample_id": sid,
                          "prompt": prompt_text(rec["prompt"]),
                          "answer": rec.get("answer"), "response": text, "n_tokens": len(y),
                          "finished": finished, "correct": correct})

    if dist is not None and world > 1:
        gathered = [None] * world if rank == 0 else None
        dist.gather_object((rows, resp_meta), gathered, dst=0)
        if rank == 0:
            rows = [r for part in gathered for r in part[0]]
            resp_meta = [m for part in gathered for m in part[1]]
    summary: dict[str, Any] | None = None
    if rank == 0:
        rows.sort(key=lambda r: (r["prompt_index"], r["sample_id"], r["position"]))
        resp_meta.sort(key=lambda m: (m["prompt_index"], m["sample_id"]))
        summary = summarize(rows, top_k=top_k)
        summary.update({
            "n_prompts": len(records),
            "n_truncated": sum(1 for m in resp_meta if not m["finished"]),
            "base_model": base.path,
            "rl_model": rl.path,
            "responses": "file" if from_file else source,
            "responses_file": source if from_file else None,
            "decoding": None if from_file else {
                "generator": "rl" if source.startswith("rl") else "base",
                "greedy": source == "rl-greedy",
                "temperature": 0.0 if source == "rl-greedy" else float(temperature),
                "top_p": 1.0 if source == "rl-greedy" else float(top_p),
                "n": n, "max_new_tokens": max_new_tokens, "seed": seed, "block_size": block_size,
            },
            "chat_template": bool(chat_template),
            "scaffolds": {side: sc.describe() for side, sc in scaffolds.items()},
            "top_k": top_k,
            "verifier": None if not any(r.get("answer") is not None for r in records) else (
                "default (forklens.tasks.answers: boxed, last number or last line equals the answer)" if verifier is None
                else (getattr(verifier, "__name__", "") if not getattr(verifier, "__name__", "<").startswith("<")
                      else "custom")),
            "definitions": {"tie_rule": TIE_RULE, "top_entropy_decile": TOP_DECILE_RULE,
                            "disagreement": "a position whose rank_under_base > 1",
                            "entropy": "nats, full vocabulary, temperature 1, raw logits"},
        })
        if out_dir is not None:
            write_outputs(out_dir, summary, rows, resp_meta, max_report_responses=max_report_responses,
                          tokens_format=tokens_format)
    if dist is not None and world > 1:
        box = [summary]
        dist.broadcast_object_list(box, src=0)
        summary = box[0]
    return summary  # type: ignore[return-value]


def _json_dump(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False)


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("--tokens-format parquet needs pyarrow: pip install 'forklens[parquet]' "
                          "(or use the default, jsonl)") from None
    return pa, pq


def write_outputs(out_dir: str | Path, summary: dict[str, Any], rows: list[dict[str, Any]],
                  responses: list[dict[str, Any]], *, max_report_responses: int = 200,
                  tokens_format: str = "jsonl") -> dict[str, Path]:
    """Write the tokens table (``tokens.jsonl``, or ``tokens.parquet``), responses.jsonl, summary.json
    and report.html; return their paths. The format never depends on what happens to be installed."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    if tokens_format == "parquet":
        pa, pq = _pyarrow()
        paths["tokens"] = out / "tokens.parquet"
        pq.write_table(pa.Table.from_pylist(list(rows)), paths["tokens"])
    else:
        paths["tokens"] = out / "tokens.jsonl"
        _write_jsonl(paths["tokens"], rows)
    paths["responses"] = out / "responses.jsonl"
    _write_jsonl(paths["responses"], responses)
    summary["files"] = {k: p.name for k, p in paths.items()} | {"summary": "summary.json",
                                                              "report": "report.html"}
    paths["summary"] = out / "summary.json"
    paths["summary"].write_text(json.dumps(summary, indent=2, ensure_ascii=False, allow_nan=False) + "\n",
                                encoding="utf-8")
    from forklens.report.html import render_diff_report

    paths["report"] = out / "report.html"
    paths["report"].write_text(render_diff_report(summary, rows, responses, max_responses=max_report_responses),
                               encoding="utf-8")
    return paths


def _write_jsonl(path: Path, items: Iterable[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for item in items:
            fh.write(_json_dump(item) + "\n")
