"""The per-token statistics of `forklens diff` on one chunk of logits: forklens' few-pass
:func:`~forklens.analysis.diff_scores.chunk_pair_stats` against the elementwise definition
(:func:`~forklens.analysis.diff_scores.chunk_pair_stats_reference`, what forklens ran before), and the
compiled fused kernel (:mod:`forklens.analysis.diff_fused`, ``FORKLENS_FUSED_STATS=1``; its compile is
timed once, apart), side by side in one process, interleaved so that load on shared cores hits all alike.

On a CPU these statistics took longer than the two LM-head matrix products that produce the logits
(20M model, vocabulary 8,192), so they bound scoring MFU. For each vocabulary size: random float32
logits of a base and a perturbed RL model (``--rows`` positions), ``--repeats`` interleaved timings of
each side after a warm-up, and the largest difference between the two sides' outputs.

    python benchmarks/scoring_stats.py [--rows 2048] [--vocabs 8192,32000,131072]

Writes ``benchmarks/results/scoring_stats.json`` (``forklens`` and ``peer``: median seconds at the
first vocabulary size; ``ratio`` forklens / peer; every size, the fused side included, in ``details``).
"""

from __future__ import annotations

import argparse
import time

import torch

from common import MIN_REPEATS, machine, repeats_arg, spread, write_result


def main() -> None:
    from forklens.analysis.diff_scores import chunk_pair_stats, chunk_pair_stats_reference, pair_stats

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--vocabs", default="8192,32000,131072")
    ap.add_argument("--repeats", type=repeats_arg, default=MIN_REPEATS)
    args = ap.parse_args()
    repeats, sizes = {}, {}
    t = time.perf_counter()
    g = torch.Generator().manual_seed(1)
    pair_stats(torch.randn(3, 100, generator=g), torch.randn(3, 100, generator=g), torch.zeros(3, dtype=torch.long), 20,
               fused=True)
    compile_s = time.perf_counter() - t  # one dynamic-shape compile serves every size below
    for vocab in [int(v) for v in args.vocabs.split(",")]:
        g = torch.Generator().manual_seed(0)
        rows = max(1, min(args.rows, (2**31) // (vocab * 4 * 8)))  # keep each side under ~2 GiB of temporaries
        lb = torch.randn(rows, vocab, generator=g) * 2
        lr = lb + torch.randn(rows, vocab, generator=g)
        targets = torch.randint(0, vocab, (rows,), generator=g)
        sides = {"forklens": lambda: chunk_pair_stats(lb, lr, targets, 20),
                 "peer": lambda: chunk_pair_stats_reference(lb, lr, targets, 20),
                 "fused": lambda: pair_stats(lb, lr, targets, 20, fused=True)}
        outs = {name: fn() for name, fn in sides.items()}  # warm-up, and the answers
        times: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(args.repeats):
            for name, fn in sides.items():
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
        for name in sides:
            repeats[f"V{vocab}/{name}_s"] = spread(times[name])
        diff = {side: {k: float((outs[side][k].double() - outs["peer"][k].double()).abs().max())
                       for k in outs["peer"] if outs["peer"][k].is_floating_point()} for side in ("forklens", "fused")}
        med = {name: repeats[f"V{vocab}/{name}_s"]["median"] for name in sides}
        sizes[str(vocab)] = {"rows": rows, "forklens_s": med["forklens"], "peer_s": med["peer"],
                             "fused_s": med["fused"], "ratio": med["forklens"] / med["peer"],
                             "fused_ratio": med["fused"] / med["peer"],
                             "fused_over_forklens": med["fused"] / med["forklens"],
                             "same_ids": {side: all(torch.equal(outs[side][k], outs["peer"][k])
                                                    for k in ("rl_token", "rank_under_base"))
                                          for side in ("forklens", "fused")},
                             "max_abs_difference": diff["forklens"], "fused_max_abs_difference": diff["fused"]}
        print(f"V={vocab:>7,} rows={rows}: forklens {med['forklens']:.3f} s, fused {med['fused']:.3f} s, reference "
              f"{med['peer']:.3f} s; forklens/reference {sizes[str(vocab)]['ratio']:.2f}, "
              f"fused/reference {sizes[str(vocab)]['fused_ratio']:.2f}", flush=True)
    first = next(iter(sizes.values()))
    write_result("scoring_stats", first["forklens_s"], first["peer_s"], "seconds",
                 {"what": "per-token diff statistics (rank, entropies, KL, log-probs, top-20 of both) of one chunk of "
                          "float32 logits; interleaved repeats in one process; 'fused' is the torch.compile kernel "
                          "(forklens.analysis.diff_fused), compiled once before timing",
                  "fused_compile_s": compile_s,
                  "ratio_definition": "forklens / reference (median seconds)", "sizes": sizes,
                  "machine": machine()}, repeats)


if __name__ == "__main__":
    main()
