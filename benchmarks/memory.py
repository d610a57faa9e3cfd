"""Peak memory of `forklens diff` scoring: chunked (forklens) vs naive full logits (peer), side by side.

Both measurements teacher-force one response of ``--tokens`` tokens (default 4,096) through two tiny
Llama models (a base and an "RL" model, different seeds) whose output layer has ``--vocab`` rows
(default 131,072 = 128k), and compute the same per-token statistics (rank of the RL argmax under the
base, both entropies, KL(base || RL), top-5 of both):

* ``forklens``: :func:`forklens.analysis.diff.score_pairs`, which applies both LM heads to chunks of
  positions and keeps only the per-position statistics;
* ``peer``: the naive approach, ``model(input_ids).logits`` for both models (full float32
  ``[tokens x vocab]`` each), then the same statistics on the full tensors, freeing what it can.

Each runs in its own fresh subprocess; peak memory is that process's peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``), which includes the interpreter, torch and the two
models (reported separately as ``baseline_rss``). The answers of both are compared. Each side runs
``--repeats`` times (>= 5), each in a fresh process: the headline is the median peak, and the JSON records
min/median/max (``repeats``) and the stamp.

Usage::

    python benchmarks/memory.py                 # 128k vocab x 4,096 tokens (needs ~10 GiB free RAM for the naive run)
    python benchmarks/memory.py --vocab 32768 --tokens 1024   # a quick run

Writes ``benchmarks/results/memory.json``: ``{"stamp", "repeats", "forklens": bytes, "peer": bytes, "unit": "bytes",
"ratio": forklens / peer, "details": {...}}`` (the convention of every benchmark here).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import MIN_REPEATS, repeats_arg, spread, write_json

RESULTS = Path(__file__).resolve().parent / "results" / "memory.json"
GiB = 2**30


def _rss_now() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


class _Tok:
    """The two attributes :class:`forklens.policy.Policy` needs from a tokenizer for scoring."""

    eos_token_id = 0
    pad_token_id = 0


def _models(vocab: int, tokens: int, hidden: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from forklens.policy import Policy

    pols = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=tokens + 8,
                          pad_token_id=0, bos_token_id=1, eos_token_id=0, tie_word_embeddings=False)
        model = LlamaForCausalLM(cfg).eval()
        with torch.no_grad():
            model.lm_head.weight.mul_(8.0)  # peakier distributions than a fresh init
        pols.append(Policy(model, _Tok(), path=f"tiny-llama-seed{seed}"))
    return pols


def _naive(base, rl, ids, n_prompt: int):
    """Full float32 logits of both models, statistics on the full tensors."""
    import torch

    with torch.no_grad():
        sl = slice(n_prompt - 1, ids.shape[1] - 1)
        lb = base.model(input_ids=ids, use_cache=False).logits[0, sl].float()
        lr = rl.model(input_ids=ids, use_cache=False).logits[0, sl].float()
        rl_token = lr.argmax(-1)
        rank = 1 + (lb > lb.gather(-1, rl_token[:, None])).sum(-1)
        logp_b = torch.log_softmax(lb, -1)
        del lb
        logp_r = torch.log_softmax(lr, -1)
        del lr
        p_b = logp_b.exp()
        h_b = -(p_b * logp_b).sum(-1)
        kl = (p_b * (logp_b - logp_r)).sum(-1)
        del p_b
        h_r = -(logp_r.exp() * logp_r).sum(-1)
        top_b = logp_b.topk(5, -1).indices
        top_r = logp_r.topk(5, -1).indices
    return {"rank": rank, "base_entropy": h_b, "rl_entropy": h_r, "kl": kl, "top_b": top_b, "top_r": top_r}


def _chunked(base, rl, ids, n_prompt: int):
    from forklens.analysis.diff import score_pairs

    p, y = ids[0, :n_prompt].tolist(), ids[0, n_prompt:].tolist()
    s = score_pairs(base, rl, [p], [y], list_k=5)[0]
    return {"rank": s.rank_under_base, "base_entropy": s.base_entropy, "rl_entropy": s.rl_entropy, "kl": s.kl,
            "top_b": s.base_topk_ids, "top_r": s.rl_topk_ids}


def child(mode: str, vocab: int, tokens: int, hidden: int, threads: int | None) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    base, rl = _models(vocab, tokens, hidden)
    gen = torch.Generator().manual_seed(0)
    n_prompt = 8
    ids = torch.randint(2, vocab, (1, n_prompt + tokens), generator=gen)
    baseline = _rss_now()
    baseline_peak = _peak_rss()
    t0 = time.perf_counter()
    out = (_chunked if mode == "chunked" else _naive)(base, rl, ids, n_prompt)
    seconds = time.perf_counter() - t0
    peak = _peak_rss()
    return {
        "mode": mode,
        "peak_rss": peak,
        "baseline_rss": baseline,
        "peak_before_scoring": baseline_peak,
        "peak_above_baseline": peak - baseline,
        "seconds": seconds,
        "checksum": {
            "rank_sum": int(out["rank"].sum()),
            "unshifted": int((out["rank"] == 1).sum()),
            "base_entropy_sum": float(out["base_entropy"].double().sum()),
            "rl_entropy_sum": float(out["rl_entropy"].double().sum()),
            "kl_sum": float(out["kl"].double().sum()),
            "top5_base_hash": int((out["top_b"].long() * torch.arange(1, 6)).sum()),
            "top5_rl_hash": int((out["top_r"].long() * torch.arange(1, 6)).sum()),
        },
    }


def _run_child(mode: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--vocab", str(args.vocab), "--tokens", str(args.tokens),
           "--hidden", str(args.hidden)] + (["--threads", str(args.threads)] if args.threads else [])
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run failed (exit {proc.returncode}; killed for memory if -9):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=131072)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--repeats", type=repeats_arg, default=MIN_REPEATS,
                        help=f"fresh processes per side (>= {MIN_REPEATS})")
    parser.add_argument("--child", choices=["chunked", "naive"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.vocab, args.tokens, args.hidden, args.threads)))
        return 0

    chunked_runs = [_run_child("chunked", args) for _ in range(args.repeats)]
    naive_runs = [_run_child("naive", args) for _ in range(args.repeats)]
    repeats = {f"{side}_{key}": spread([r[key] for r in runs])
               for side, runs in (("forklens", chunked_runs), ("peer", naive_runs))
               for key in ("peak_rss", "peak_above_baseline", "seconds")}
    chunked = min(chunked_runs, key=lambda r: abs(r["peak_rss"] - repeats["forklens_peak_rss"]["median"]))
    naive = min(naive_runs, key=lambda r: abs(r["peak_rss"] - repeats["peer_peak_rss"]["median"]))
    ca, na = chunked["checksum"], naive["checksum"]
    same = (ca["rank_sum"] == na["rank_sum"] and ca["unshifted"] == na["unshifted"]
            and abs(ca["base_entropy_sum"] - na["base_entropy_sum"]) <= 1e-4 * abs(na["base_entropy_sum"])
            and abs(ca["kl_sum"] - na["kl_sum"]) <= 1e-3 * max(1.0, abs(na["kl_sum"])))
    full_logits = 2 * args.tokens * args.vocab * 4
    same = same and all(r["checksum"] == ca for r in chunked_runs) and all(r["checksum"] == na for r in naive_runs)
    result = {
        "forklens": repeats["forklens_peak_rss"]["median"],
        "peer": repeats["peer_peak_rss"]["median"],
        "unit": "bytes",
        "ratio": repeats["forklens_peak_rss"]["median"] / repeats["peer_peak_rss"]["median"],
        "details": {
            "what": "peak RSS of a fresh process teacher-forcing one response through a base and an RL model and "
                    "computing rank_under_base, both entropies, KL(base||rl) and both top-5 at every token",
            "ratio_definition": "forklens / peer (fraction of the naive approach's peak memory)",
            "forklens_method": "forklens.analysis.diff.score_pairs: LM heads applied in chunks of positions",
            "peer_method": "model(input_ids).logits for both models (full float32 [tokens x vocab]), "
                           "statistics on the full tensors",
            "vocab": args.vocab,
            "tokens": args.tokens,
            "hidden_size": args.hidden,
            "layers": 1,
            "full_fp32_logits_both_models_bytes": full_logits,
            "target_forklens_peak_bytes": 2 * GiB,
            "forklens_within_target": repeats["forklens_peak_rss"]["max"] <= 2 * GiB,
            "same_answers": same,
            "forklens_run": chunked,  # the run closest to the median peak, in full
            "peer_run": naive,
        },
    }
    write_json("memory", result, repeats, out=args.out)
    print(f"vocab {args.vocab:,} x {args.tokens:,} tokens (full fp32 logits of both models: {full_logits / GiB:.2f} GiB)")
    for name, r in (("forklens (chunked)", chunked), ("peer (naive)", naive)):
        print(f"  {name:20s} peak RSS {r['peak_rss'] / GiB:6.2f} GiB  (baseline {r['baseline_rss'] / GiB:.2f} GiB, "
              f"+{r['peak_above_baseline'] / GiB:.2f} GiB)  {r['seconds']:.1f} s")
    print(f"  ratio forklens/peer {result['ratio']:.3f} (naive needs {1 / result['ratio']:.1f}x); same answers: {same}; within 2 GiB: "
          f"{result['details']['forklens_within_target']}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
