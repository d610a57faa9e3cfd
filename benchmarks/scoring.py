"""Teacher-forced scoring throughput of a base + RL pair (what `forklens diff` runs) as model FLOP
utilisation: achieved FLOP/s over the peak float32 matmul FLOP/s measured in the same run.

Model: a ~20M-parameter Llama (hidden 512, 4 layers, vocabulary 8,192), two copies with different
seeds. Input: ``--sequences`` sequences of ``--length`` tokens (half prompt, half response). FLOPs
counted: 2 x (non-embedding parameters) per token through each body, plus 2 x hidden x vocab per
response token through each LM head (the head runs on response positions only), plus attention
(4 x layers x length x hidden per token, causal half). Peak: the median of repeated 2048 x 2048 x
2048 float32 matmuls on the same threads. Scoring with the eager statistics, scoring with the compiled
fused statistics (:mod:`forklens.analysis.diff_fused`) and the matmul are timed ``--repeats`` times
(>= 5), interleaved: the JSON records min/median/max (``repeats``) and the stamp; the headline (eager,
the CPU default at this size) and ``details.mfu_fused`` use the medians.

Writes ``benchmarks/results/scoring.json``: ``{"stamp", "repeats", "forklens": FLOP/s, "peer": peak FLOP/s,
"unit": "FLOP/s", "ratio": MFU, "details": {...}}``.

    python benchmarks/scoring.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch

from common import MIN_REPEATS, machine, repeats_arg, spread, write_result
from sampling import MODELS, build


def main() -> None:
    from forklens.analysis.diff import score_pairs
    from forklens.policy import Policy
    from forklens.organisms.base import build_char_tokenizer

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sequences", type=int, default=32)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--repeats", type=repeats_arg, default=10, help=f"timed repeats (>= {MIN_REPEATS})")
    ap.add_argument("--quick", action="store_true", help=f"the minimum {MIN_REPEATS} repeats")
    args = ap.parse_args()
    repeats = MIN_REPEATS if args.quick else args.repeats
    spec = MODELS["llama-20M"]
    tok = build_char_tokenizer("abc")  # only used for pad/eos ids; scoring takes token ids
    base, rl = build(spec), build(spec)
    torch.manual_seed(1)
    for p in rl.parameters():
        p.data.add_(0.01 * torch.randn_like(p))
    pb, pr = Policy(base, tok), Policy(rl, tok)
    g = torch.Generator().manual_seed(0)
    half = args.length // 2
    prompts = [torch.randint(3, spec["vocab_size"], (half,), generator=g).tolist() for _ in range(args.sequences)]
    responses = [torch.randint(3, spec["vocab_size"], (args.length - half,), generator=g).tolist()
                 for _ in range(args.sequences)]

    sides = {"scoring_s": lambda: score_pairs(pb, pr, prompts, responses, fused=False),
             "scoring_fused_s": lambda: score_pairs(pb, pr, prompts, responses, fused=True),
             "matmul_2048_s": lambda: a @ b}
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    times: dict[str, list[float]] = {k: [] for k in sides}
    for fn in sides.values():
        fn()  # warm-up (and the fused kernel's compile)
    for _ in range(repeats):  # interleaved, so that load on shared cores hits every side alike
        for k, fn in sides.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    spreads = {k: spread(v) for k, v in times.items()}
    h, L, V = spec["hidden_size"], spec["num_hidden_layers"], spec["vocab_size"]
    body = sum(p.numel() for p in base.parameters()) - 2 * V * h  # without embeddings and head
    tokens = args.sequences * args.length
    resp_tokens = args.sequences * (args.length - half)
    flops_one = 2 * body * tokens + 2 * h * V * resp_tokens + 2 * L * tokens * args.length * h
    peak = 2 * 2048**3 / spreads["matmul_2048_s"]["median"]
    achieved = 2 * flops_one / spreads["scoring_s"]["median"]
    fused = 2 * flops_one / spreads["scoring_fused_s"]["median"]
    details = {"sequences": args.sequences, "length": args.length, "seconds": spreads["scoring_s"]["median"],
               "seconds_fused": spreads["scoring_fused_s"]["median"], "flops": 2 * flops_one,
               "peak_matmul_flops_per_s": peak, "mfu_eager": achieved / peak, "mfu_fused": fused / peak,
               "body_params": body, "machine": machine(),
               "sides": "forklens = score_pairs with the eager few-pass statistics (the CPU default at this size); "
                        "mfu_fused = with the compiled fused statistics (FORKLENS_FUSED_STATS=1), compiled in the warm-up"}
    print(f"scoring {achieved / 1e9:.1f} GFLOP/s (fused statistics {fused / 1e9:.1f}), matmul peak {peak / 1e9:.1f} "
          f"GFLOP/s, MFU {achieved / peak:.2%} (fused {fused / peak:.2%})")
    write_result("scoring", achieved, peak, "FLOP/s", details, spreads)

if __name__ == "__main__":
    main()
