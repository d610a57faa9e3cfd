"""Profile of the forklens sampler (batch 64, 64 new tokens, sampling at temperature 1): the top
operators by time, and the time the model's matrix products alone take for the same decoding steps:
the weight products and the attention products over the KV cache (with their softmax), the floor any
sampler that runs this model in fp32 on this machine pays.

Writes the table and the floor to ``benchmarks/results/profile_sampling_<model>_<cpu|cuda>.txt``.

    python benchmarks/profile_sampling.py [--model llama-20M|organism-0.6M]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from common import RESULTS
from sampling import MODELS, build


def main() -> None:
    from forklens.policy.sample import sample_batch

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="llama-20M")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    spec = MODELS[args.model]
    model = build(spec).to("cuda" if cuda else "cpu")
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, spec["vocab_size"], (8,), generator=g).tolist() for _ in range(64)]
    dev = next(model.parameters()).device

    def run():
        sample_batch(model, prompts, pad_id=0, eos_ids=[], max_new_tokens=64, temperature=1.0, top_p=1.0,
                     generator=torch.Generator(device=dev).manual_seed(1))
        if cuda:
            torch.cuda.synchronize()

    run()
    t = time.perf_counter()
    run()
    total = time.perf_counter() - t
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        run()
    table = prof.key_averages().table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total",
                                      row_limit=15)
    # the matrix products of 64 decoding steps alone: every 2-D weight applied to [64, in] inputs
    weights = [p for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n]
    if "lm_head.weight" not in dict(model.named_parameters()):  # tied head
        weights.append(model.get_output_embeddings().weight)
    xs = {w.shape[1]: torch.randn(64, w.shape[1], device=dev) for w in weights}
    t = time.perf_counter()
    with torch.no_grad():
        for _ in range(64):
            for w in weights:
                xs[w.shape[1]] @ w.T
    if cuda:
        torch.cuda.synchronize()
    floor = time.perf_counter() - t
    # the attention products of the same steps: per layer, scores q @ K^T and weights @ V over the cache
    # (fp32, read from a cache of the decoder's layout: the floor of reading the keys and values once)
    cfg = model.config
    heads, d = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    width = len(prompts[0])
    layers = cfg.num_hidden_layers  # one cache per layer, as in the sampler (they do not share a CPU cache)
    cache_k = [torch.randn(64 * heads, width + 64, d, device=dev) for _ in range(layers)]
    cache_v = [torch.randn_like(k) for k in cache_k]
    q = torch.randn(64 * heads, 1, d, device=dev)
    t = time.perf_counter()
    with torch.no_grad():
        for step in range(64):
            n = width + step + 1
            for k, v in zip(cache_k, cache_v):
                (q @ k[:, :n].transpose(1, 2)).softmax(-1) @ v[:, :n]
    if cuda:
        torch.cuda.synchronize()
    attn_floor = time.perf_counter() - t
    both = floor + attn_floor
    text = (f"{args.model}: sampling 64 x 64 tokens took {total:.3f} s; the weight matrix products alone "
            f"{floor:.3f} s ({floor / total:.0%} of it), the attention products over the KV cache "
            f"{attn_floor:.3f} s; sampler / all its matrix products = {total / both:.2f}x "
            f"(sampler / weight products only = {total / floor:.2f}x)\n\n{table}")
    print(text)
    tag = "cuda" if cuda else "cpu"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"profile_sampling_{args.model}_{tag}.txt").write_text(text)


if __name__ == "__main__":
    main()
