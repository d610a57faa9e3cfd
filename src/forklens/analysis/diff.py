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
   for both models never exist at once (peak ~ ``chunk_tokens x vocab x 8`` floats);
2. :func:`token_rows` (scored tensors -> per-token rows) and :func:`summarize` (rows -> summary),
   both pure;
3. :func:`run_diff`: prompts -> responses -> scores -> rows -> summary, sharded over
   ``torch.distributed`` ranks when initialised, with outputs written by rank 0.
"""

from __future__ import annotations

import bisect
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from forklens import dist as fdist
from forklens.analysis.prompts import load_responses
from forklens.errors import ConfigError, DataError, ModelLoadError
from forklens.policy.score import body_and_head, head_logits, hidden_states, pack_for_scoring, verify_head
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
CLASSES = ("unshifted", "reranked", "shifted")
CONTAINMENT_KS = tuple(range(1, 11))
TIE_RULE = ("rank = 1 + number of vocabulary entries whose float32 base logit is strictly greater than "
            "the base logit of the RL token; tied tokens share the better rank")
TOP_DECILE_RULE = ("with N positions sorted by base entropy, m = max(1, ceil(N/10)); a position is in the "
                   "top decile when its base entropy is >= the m-th largest entropy (ties included)")
MIN_LIST_K = 5  # top-k lists always hold at least 5 candidates, so the report can show a top-5


# ----------------------------------------------------------------------------------------------
# 1. Scoring: both models, chunked over positions
# ----------------------------------------------------------------------------------------------


@dataclass
class PairScores:
    """Teacher-forced statistics of one response under both models, one entry per response token."""

    token_ids: torch.Tensor  # [T] the response tokens
    rl_token: torch.Tensor  # [T] RL argmax
    rank_under_base: torch.Tensor  # [T] int64, exact rank of rl_token under the base
    base_logprob: torch.Tensor  # [T] base log-prob of rl_token
    rl_logprob: torch.Tensor  # [T] RL log-prob of rl_token
    base_logprob_token: torch.Tensor  # [T] base log-prob of the response token
    rl_logprob_token: torch.Tensor  # [T] RL log-prob of the response token
    base_entropy: torch.Tensor  # [T] nats
    rl_entropy: torch.Tensor  # [T] nats
    kl: torch.Tensor  # [T] KL(base || rl), nats
    base_topk_ids: torch.Tensor  # [T, k]
    base_topk_logprobs: torch.Tensor  # [T, k]
    rl_topk_ids: torch.Tensor  # [T, k]
    rl_topk_logprobs: torch.Tensor  # [T, k]


_STAT_KEYS = ("rl_token", "rank_under_base", "base_logprob", "rl_logprob", "base_logprob_token",
              "rl_logprob_token", "base_entropy", "rl_entropy", "kl", "base_topk_ids",
              "base_topk_logprobs", "rl_topk_ids", "rl_topk_logprobs")


def _plogp(p: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    return torch.where(p > 0, p * logp, torch.zeros((), dtype=p.dtype, device=p.device))


@torch.no_grad()
def chunk_pair_stats(base_logits: torch.Tensor, rl_logits: torch.Tensor, targets: torch.Tensor,
                     list_k: int) -> dict[str, torch.Tensor]:
    """Per-position statistics from one chunk of float32 logits ``[c, V]`` of both models.

    ``targets`` [c] are the response tokens (teacher-forced). Pure: no model, no I/O.
    """
    base_logits = base_logits.float()
    rl_logits = rl_logits.float().to(base_logits.device)
    targets = targets.to(base_logits.device)
    rl_token = rl_logits.argmax(-1)  # first (lowest id) maximum on ties
    ref = base_logits.gather(-1, rl_token[:, None])
    rank = 1 + (base_logits > ref).sum(-1)
    logp_b = torch.log_softmax(base_logits, dim=-1)
    logp_r = torch.log_softmax(rl_logits, dim=-1)
    p_b = logp_b.exp()
    base_entropy = -_plogp(p_b, logp_b).sum(-1)
    kl = _plogp(p_b, logp_b - logp_r).sum(-1)
    del p_b
    rl_entropy = -_plogp(logp_r.exp(), logp_r).sum(-1)
    k = min(list_k, base_logits.shape[-1])
    bv, bi = logp_b.topk(k, dim=-1)
    rv, ri = logp_r.topk(k, dim=-1)
    return {
        "rl_token": rl_token,
        "rank_under_base": rank,
        "base_logprob": logp_b.gather(-1, rl_token[:, None]).squeeze(-1),
        "rl_logprob": logp_r.gather(-1, rl_token[:, None]).squeeze(-1),
        "base_logprob_token": logp_b.gather(-1, targets[:, None]).squeeze(-1),
        "rl_logprob_token": logp_r.gather(-1, targets[:, None]).squeeze(-1),
        "base_entropy": base_entropy,
        "rl_entropy": rl_entropy,
        "kl": kl,
        "base_topk_ids": bi,
        "base_topk_logprobs": bv,
        "rl_topk_ids": ri,
        "rl_topk_logprobs": rv,
    }


def head_vocab(model) -> int:
    return int(body_and_head(model)[2].weight.shape[0])


def default_chunk_bytes(device) -> int:
    """LM-head chunk budget: 256 MiB on CPU (bounded host memory), 1 GiB on a GPU, where the per-token
    statistics over the vocabulary are launch-bound in small chunks (1 GiB scored 1.4x faster than
    256 MiB on an H100 with a 152k vocabulary: benchmarks/scaling.py, docs/results.md)."""
    return (2**30) if torch.device(device).type == "cuda" else 256 * 2**20


def default_chunk_tokens(vocab: int, max_chunk_bytes: int = 256 * 2**20) -> int:
    """Positions per chunk so that ~8 float32 [chunk x vocab] temporaries fit ``max_chunk_bytes``."""
    return max(1, max_chunk_bytes // (vocab * 4 * 8))


@torch.no_grad()
def score_pairs(base, rl, prompt_ids: Sequence[list[int]], response_ids: Sequence[list[int]], *,
                list_k: int = MIN_LIST_K, batch_tokens: int = 8192, chunk_tokens: int | None = None,
                max_chunk_bytes: int | None = None, progress: Callable[[int], None] | None = None
                ) -> list[PairScores]:
    """Teacher-force each prompt+response through both :class:`~forklens.policy.Policy` objects.

    Sequences are sorted by length and batched up to ``batch_tokens`` padded tokens (right padding).
    Each model body runs once per batch; the response positions' hidden states then go through both
    LM heads ``chunk_tokens`` rows at a time, keeping only the per-position statistics.
    """
    if len(prompt_ids) != len(response_ids):
        raise ValueError("prompt_ids and response_ids must have the same length")
    vocab = head_vocab(base.model)
    if chunk_tokens is None:
        chunk_tokens = default_chunk_tokens(vocab, max_chunk_bytes or default_chunk_bytes(base.device))
    results: list[PairScores | None] = [None] * len(prompt_ids)
    models = (base, rl)
    training = [p.model.training for p in models]
    for p in models:
        p.model.eval()
    checked = False
    try:
        for pb in pack_for_scoring(prompt_ids, response_ids, base.pad_id, batch_tokens):
            batch, ids, attn, sel, targets = pb.rows, pb.input_ids, pb.attention_mask, pb.predicts_response, pb.targets
            hidden = []
            for pol in models:
                dev = pol.device
                if not checked:
                    try:
                        verify_head(pol.model, ids.to(dev), attn.to(dev))
                    except ValueError as exc:
                        raise ModelLoadError(f"{pol.path or 'model'}: {exc}") from None
                h = hidden_states(pol.model, ids.to(dev), attn.to(dev))
                hidden.append(h[sel.to(dev)])
                del h
            checked = True
            parts: dict[str, list[torch.Tensor]] = {k: [] for k in _STAT_KEYS}
            n = hidden[0].shape[0]
            for s in range(0, n, chunk_tokens):
                lb = head_logits(base.model, hidden[0][s:s + chunk_tokens])
                lr = head_logits(rl.model, hidden[1][s:s + chunk_tokens])
                stats = chunk_pair_stats(lb, lr, targets[s:s + chunk_tokens], list_k)
                del lb, lr
                for k, v in stats.items():
                    parts[k].append(v.cpu())
            del hidden
            cat = {k: torch.cat(v) for k, v in parts.items()}
            offset = 0
            for j in batch:
                t = len(response_ids[j])
                cut = slice(offset, offset + t)
                results[j] = PairScores(token_ids=torch.tensor(list(response_ids[j]), dtype=torch.long),
                                        **{k: v[cut] for k, v in cat.items()})
                offset += t
            if progress is not None:
                progress(len(batch))
    finally:
        for p, was in zip(models, training):
            p.model.train(was)
    return results  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------
# 2. Rows and summary (pure)
# ----------------------------------------------------------------------------------------------


def classify(rank: int, top_k: int) -> str:
    """``unshifted`` (rank 1), ``reranked`` (2..top_k) or ``shifted`` (> top_k)."""
    if rank <= 1:
        return "unshifted"
    return "reranked" if rank <= top_k else "shifted"


def _num(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def token_rows(scores: PairScores, *, prompt_id: str, prompt_index: int, sample_id: int, top_k: int,
               token_text: Callable[[int], str], correct: bool | None = None) -> list[dict[str, Any]]:
    """One dict per response token of one scored response (see docs/diff.md for the columns)."""
    cols = {k: getattr(scores, k).tolist() for k in ("token_ids", *_STAT_KEYS)}
    rows = []
    for t in range(len(cols["token_ids"])):
        rank = int(cols["rank_under_base"][t])
        rows.append({
            "prompt_id": prompt_id,
            "prompt_index": prompt_index,
            "sample_id": sample_id,
            "position": t,
            "token_id": int(cols["token_ids"][t]),
            "token_text": token_text(int(cols["token_ids"][t])),
            "rl_token_id": int(cols["rl_token"][t]),
            "rl_token_text": token_text(int(cols["rl_token"][t])),
            "rank_under_base": rank,
            "class": classify(rank, top_k),
            "base_logprob": _num(cols["base_logprob"][t]),
            "rl_logprob": _num(cols["rl_logprob"][t]),
            "base_logprob_token": _num(cols["base_logprob_token"][t]),
            "rl_logprob_token": _num(cols["rl_logprob_token"][t]),
            "base_entropy": _num(cols["base_entropy"][t]),
            "rl_entropy": _num(cols["rl_entropy"][t]),
            "kl_base_rl": _num(cols["kl"][t]),
            "base_topk_ids": [int(v) for v in cols["base_topk_ids"][t]],
            "base_topk_texts": [token_text(int(v)) for v in cols["base_topk_ids"][t]],
            "base_topk_logprobs": [_num(v) for v in cols["base_topk_logprobs"][t]],
            "rl_topk_ids": [int(v) for v in cols["rl_topk_ids"][t]],
            "rl_topk_texts": [token_text(int(v)) for v in cols["rl_topk_ids"][t]],
            "rl_topk_logprobs": [_num(v) for v in cols["rl_topk_logprobs"][t]],
            "correct": correct,
        })
    return rows


def _mean(xs: Sequence[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return math.fsum(xs) / len(xs) if xs else None


def _div(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def top_decile_threshold(entropies: Sequence[float]) -> float | None:
    """The m-th largest entropy, m = max(1, ceil(N / 10)) (see ``TOP_DECILE_RULE``)."""
    if not entropies:
        return None
    m = max(1, math.ceil(len(entropies) / 10))
    return sorted(entropies, reverse=True)[m - 1]


def _histogram(values: Sequence[float], edges: Sequence[float]) -> list[int]:
    """Counts per bin ``[edges[b], edges[b+1])``, the last bin closed on the right."""
    counts = [0] * (len(edges) - 1)
    for v in values:
        b = min(bisect.bisect_right(edges, v) - 1, len(counts) - 1)
        if b >= 0 and v <= edges[-1]:
            counts[b] += 1
    return counts


def summarize(rows: Sequence[dict[str, Any]], *, top_k: int, entropy_bins: int = 20,
              split_by_correctness: bool = True) -> dict[str, Any]:
    """Summary statistics from per-token rows (pure). Undefined values are ``None``, never NaN."""
    n = len(rows)
    ranks = [int(r["rank_under_base"]) for r in rows]
    ent = [r["base_entropy"] for r in rows]
    classes = [classify(k, top_k) for k in ranks]
    dis = [i for i in range(n) if ranks[i] > 1]
    agree = [i for i in range(n) if ranks[i] == 1]
    n_dis = len(dis)
    finite_ent = [e for e in ent if e is not None]
    thr = top_decile_threshold(finite_ent)
    responses = {(r["prompt_index"], r["sample_id"]) for r in rows}
    def frac(c):
        return (sum(1 for x in classes if x == c) / n) if n else None
    ent_all = _mean(ent)
    ent_dis = _mean([ent[i] for i in dis])
    elo = min(finite_ent) if finite_ent else 0.0
    ehi = max(finite_ent) if finite_ent else 1.0
    if ehi - elo < 1e-6:
        elo, ehi = max(0.0, elo - 0.5), ehi + 0.5
    edges = [elo + (ehi - elo) * b / entropy_bins for b in range(entropy_bins)] + [ehi]
    rank_hist = {str(k): sum(1 for x in ranks if x == k) for k in range(1, 11)}
    rank_hist[">10"] = sum(1 for x in ranks if x > 10)
    out: dict[str, Any] = {
        "n_tokens": n,
        "n_responses": len(responses),
        "n_disagreement": n_dis,
        "unshifted_frac": frac("unshifted"),
        "reranked_frac": frac("reranked"),
        "shifted_frac": frac("shifted"),
        "class_counts": {c: sum(1 for x in classes if x == c) for c in CLASSES},
        "topk_containment": {str(k): (sum(1 for i in dis if ranks[i] <= k) / n_dis if n_dis else None)
                             for k in CONTAINMENT_KS},
        "mean_rank_at_disagreement": _mean([ranks[i] for i in dis]),
        "entropy_mean_all": ent_all,
        "entropy_mean_agreement": _mean([ent[i] for i in agree]),
        "entropy_mean_disagreement": ent_dis,
        "entropy_ratio": _div(ent_dis, ent_all),
        "top_entropy_decile_threshold": thr,
        "disagreement_in_top_entropy_decile": (
            sum(1 for i in dis if ent[i] is not None and ent[i] >= thr) / n_dis if n_dis and thr is not None
            else None),
        "rl_entropy_mean_all": _mean([r["rl_entropy"] for r in rows]),
        "kl_mean": _mean([r["kl_base_rl"] for r in rows]),
        "kl_mean_disagreement": _mean([rows[i]["kl_base_rl"] for i in dis]),
        "rank_histogram": rank_hist,
        "entropy_histogram": {
            "edges": edges,
            "agreement": _histogram([ent[i] for i in agree if ent[i] is not None], edges),
            "disagreement": _histogram([ent[i] for i in dis if ent[i] is not None], edges),
        },
    }
    graded = {}
    for r in rows:
        if r.get("correct") is not None:
            graded[(r["prompt_index"], r["sample_id"])] = bool(r["correct"])
    if split_by_correctness and graded:
        n_ok = sum(graded.values())
        out["correctness"] = {"n_graded": len(graded), "n_correct": n_ok, "accuracy": n_ok / len(graded)}
        out["by_correctness"] = {
            name: summarize([r for r in rows if r.get("correct") is want], top_k=top_k,
                            entropy_bins=entropy_bins, split_by_correctness=False)
            for name, want in (("correct", True), ("incorrect", False))
        }
    return out


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
        if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str):
            raise DataError(f"prompt record {i} needs a string \"prompt\" field, got {rec!r:.80}")
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


def run_diff(base, rl, prompts: list[dict], *, responses: str = "rl-greedy", n: int = 1,
             temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 64, top_k: int = 5,
             chat_template: bool = False, seed: int = 0,
             verifier: Callable[[dict, str], bool] | None = None, out_dir: str | Path | None = None,
             block_size: int = 16, batch_tokens: int = 8192, chunk_tokens: int | None = None,
             progress: bool | None = None, max_report_responses: int = 200) -> dict[str, Any]:
    """Diff ``rl`` against ``base`` (two :class:`~forklens.policy.Policy`) on ``prompts``; return the summary.

    ``prompts``: dicts with ``prompt`` and optional ``id`` / ``answer``. ``responses``: ``rl-greedy``
    (default), ``rl-sample``, ``base-sample`` or the path of a responses JSONL file. Generation runs in
    blocks of ``block_size`` prompts, block b seeded with ``seed * 1000003 + b``; under
    ``torch.distributed`` block b goes to rank ``b % world_size``, so outputs do not depend on the
    number of processes. Rank 0 gathers the rows, writes ``tokens.jsonl`` (or ``tokens.parquet``),
    ``responses.jsonl``, ``summary.json`` and ``report.html`` into ``out_dir`` when given; every rank
    returns the summary.
    """
    if top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {top_k}")
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
    prompt_ids = []
    for rec in records:
        ids = rl.encode_prompt(rec["prompt"], chat_template)
        if not ids:
            raise DataError(f"{_where(rec)} is empty after tokenization: nothing predicts the first response token")
        if context is not None and len(ids) >= context:
            raise DataError(f"{_where(rec)} is {len(ids)} tokens, which leaves no room for a response in the "
                            f"context of {context} tokens")
        if context is not None and not from_file and len(ids) + max_new_tokens > context:
            raise DataError(f"{_where(rec)} is {len(ids)} tokens; with --max-new-tokens {max_new_tokens} it "
                            f"exceeds the context of {context} tokens (lower --max-new-tokens or shorten it)")
        prompt_ids.append(ids)

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
            if context is not None and len(prompt_ids[idx]) + len(y) > context:
                raise DataError(f"{source}: {_where(records[idx])} with its response #{sid} is "
                                f"{len(prompt_ids[idx]) + len(y)} tokens, longer than the context of {context}")
            jobs.append((idx, sid, y, finished, text))
        mine_set = set(my_prompts)
        jobs = [j for j in jobs if j[0] in mine_set]
    show = progress if progress is not None else (rank == 0 and sys.stderr.isatty())
    show = bool(show) and rank == 0
    with _Progress(show) as bars:
        if not from_file:
            gen = rl if source.startswith("rl") else base
            greedy = source == "rl-greedy"
            tick = bars.task(f"generating ({source})", len(my_prompts) * n)
            for b in mine:
                idxs = list(range(b * block_size, min(len(records), (b + 1) * block_size)))
                s = gen.sample([prompt_ids[i] for i in idxs], n=n, temperature=0.0 if greedy else temperature,
                               top_p=1.0 if greedy else top_p, max_new_tokens=max_new_tokens,
                               seed=(seed * 1_000_003 + b) % 2**63, progress=tick)
                for k in range(len(s.response_ids)):
                    idx = idxs[s.group[k]]
                    jobs.append((idx, k % n, list(s.response_ids[k]), bool(s.finished[k]), s.texts[k]))
        jobs = [j for j in jobs if j[2]]  # a response with no token (cannot happen with max_new_tokens >= 1)
        tick = bars.task("scoring (base and RL)", len(jobs))
        scores = score_pairs(base, rl, [prompt_ids[j[0]] for j in jobs], [j[2] for j in jobs],
                             list_k=max(top_k, MIN_LIST_K), batch_tokens=batch_tokens,
                             chunk_tokens=chunk_tokens, progress=tick)

    check = verifier or default_verifier
    cache: dict[int, str] = {}

    def token_text(i: int) -> str:
        if i not in cache:
            cache[i] = rl.tokenizer.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        return cache[i]

    rows: list[dict[str, Any]] = []
    resp_meta: list[dict[str, Any]] = []
    for (idx, sid, y, finished, text), sc in zip(jobs, scores):
        rec = records[idx]
        correct = bool(check(rec, text)) if rec.get("answer") is not None else None
        rows += token_rows(sc, prompt_id=rec["id"], prompt_index=idx, sample_id=sid, top_k=top_k,
                           token_text=token_text, correct=correct)
        resp_meta.append({"prompt_id": rec["id"], "prompt_index": idx, "sample_id": sid, "prompt": rec["prompt"],
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
            write_outputs(out_dir, summary, rows, resp_meta, max_report_responses=max_report_responses)
    if dist is not None and world > 1:
        box = [summary]
        dist.broadcast_object_list(box, src=0)
        summary = box[0]
    return summary  # type: ignore[return-value]


def _json_dump(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False)


def write_outputs(out_dir: str | Path, summary: dict[str, Any], rows: list[dict[str, Any]],
                  responses: list[dict[str, Any]], *, max_report_responses: int = 200) -> dict[str, Path]:
    """Write the tokens table, responses.jsonl, summary.json and report.html; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        pa = None
    if pa is not None:
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
