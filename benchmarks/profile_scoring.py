"""Profile of teacher-forced base + RL scoring (``score_pairs``): the top operators by device time.

Uses the model of ``scaling.py`` (CPU: ~20M Llama fp32; GPU: ~0.5B Qwen2-shaped bf16), 16
sequences of 1,024 tokens (half response). Prints the torch profiler table and writes it to
``benchmarks/results/profile_scoring_<cpu|cuda>.txt``.

    python benchmarks/profile_scoring.py [--chunk-mib 256]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from common import RESULTS
from scaling import build_model, rand_prompts, sync


def main() -> None:
    from forklens.analysis.diff import score_pairs
    from forklens.policy import Policy
    from forklens.organisms.base import build_char_tokenizer

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunk-mib", type=int, default=256)
    ap.add_argument("--sequences", type=int, default=16)
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    model = build_model(cuda)
    pol = Policy(model, build_char_tokenizer("abc"))
    vocab = model.config.vocab_size
    pr, rs = rand_prompts(vocab, args.sequences, 512), rand_prompts(vocab, args.sequences, 512, seed=1)
    run = lambda: score_pairs(pol, pol, pr, rs, max_chunk_bytes=args.chunk_mib * 2**20)  # noqa: E731
    run()
    sync()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        run()
        sync()
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=25)
    print(table)
    tag = "cuda" if cuda else "cpu"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"profile_scoring_{tag}_{args.chunk_mib}mib.txt").write_text(table)


if __name__ == "__main__":
    main()
