"""The forklens sampler against its own floor: the matrix products its decoding must compute.

Batch 64, 8-token prompts, 64 new tokens at temperature 1 on the ~20M Llama of ``sampling.py``. The
floor is every matrix product of that decoding, timed alone in fp32 on the same inputs' shapes:

* the prefill: every layer weight applied to the ``64 x 8`` prompt rows and the head to the last row
  of each prompt, plus the causal attention products over the prompt;
* the ``63`` decoding steps that follow (the 64th token is drawn from the last step's logits, so it
  needs no forward): every weight (head included) on ``64`` rows, and per layer the attention
  products ``q @ K^T`` and ``weights @ V`` (with their softmax) over the KV cache filled so far, each
  layer with its own cache, as in the decoder.

Sampler and floor alternate ``--repeats`` times (>= 5) in one process, so both see the same machine;
the headline ratio is of the medians, and the JSON also records the median and range of the ratios
of each adjacent (sampler, floor) pair, which a machine whose speed drifts during the run moves less. Issue 17's CPU goal is a ratio <= 1.15. The profiler's operator table of
one more sampler run shows where the rest goes.

Writes ``benchmarks/results/sampling_floor.json`` (stamped; repeats of both sides) and
``benchmarks/results/profile_sampling_<model>_<cpu|cuda>.txt`` (the table).

    python benchmarks/profile_sampling.py [--model llama-20M|organism-0.6M] [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from common import MIN_REPEATS, RESULTS, machine, repeats_arg, spread, write_json
from sampling import MODELS, build

BATCH, WIDTH, NEW_TOKENS = 64, 8, 64
GOAL = 1.15


def floor_fn(model, batch: int, width: int, new_tokens: int, dev):
    """A function that computes the decoding's matrix products alone (see the module docstring)."""
    cfg = model.config
    named = dict(model.named_parameters())
    head = named.get("lm_head.weight", model.get_output_embeddings().weight)
    layer_weights = [p for n, p in named.items() if p.dim() == 2 and "embed" not in n and n != "lm_head.weight"]
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    d = cfg.hidden_size // heads
    rep = heads // kv_heads
    prompt_x = {w.shape[1]: torch.randn(batch * width, w.shape[1], device=dev) for w in layer_weights}
    step_x = {w.shape[1]: torch.randn(batch, w.shape[1], device=dev) for w in layer_weights + [head]}
    total = width + new_tokens - 1
    cache_k = [torch.randn(batch * kv_heads, total, d, device=dev) for _ in range(cfg.num_hidden_layers)]
    cache_v = [torch.randn_like(k) for k in cache_k]
    q_prompt = torch.randn(batch * kv_heads, rep * width, d, device=dev)
    q_step = torch.randn(batch * kv_heads, rep, d, device=dev)

    @torch.no_grad()
    def run():
        for w in layer_weights:
            prompt_x[w.shape[1]] @ w.T
        step_x[head.shape[1]] @ head.T
        for k, v in zip(cache_k, cache_v):
            (q_prompt @ k[:, :width].transpose(1, 2)).softmax(-1) @ v[:, :width]
        for step in range(new_tokens - 1):
            for w in layer_weights:
                step_x[w.shape[1]] @ w.T
            step_x[head.shape[1]] @ head.T
            n = width + step + 1
            for k, v in zip(cache_k, cache_v):
                (q_step @ k[:, :n].transpose(1, 2)).softmax(-1) @ v[:, :n]
        if dev.type == "cuda":
            torch.cuda.synchronize()

    return run


def main() -> None:
    from forklens.policy.sample import sample_batch

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="llama-20M")
    ap.add_argument("--repeats", type=repeats_arg, default=9, help=f"timed repeats per side (>= {MIN_REPEATS})")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    spec = MODELS[args.model]
    model = build(spec).to("cuda" if cuda else "cpu")
    dev = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, spec["vocab_size"], (WIDTH,), generator=g).tolist() for _ in range(BATCH)]

    def sampler():
        sample_batch(model, prompts, pad_id=0, eos_ids=[], max_new_tokens=NEW_TOKENS, temperature=1.0, top_p=1.0,
                     generator=torch.Generator(device=dev).manual_seed(1))
        if cuda:
            torch.cuda.synchronize()

    floor = floor_fn(model, BATCH, WIDTH, NEW_TOKENS, dev)
    sampler(), floor()  # warm-up
    times = {"sampler_s": [], "floor_s": []}
    for _ in range(args.repeats):
        for key, fn in (("sampler_s", sampler), ("floor_s", floor)):
            t = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t)
    spreads = {f"{args.model}/{k}": spread(v) for k, v in times.items()}
    s_med, f_med = (spreads[f"{args.model}/{k}"]["median"] for k in ("sampler_s", "floor_s"))
    ratio = s_med / f_med
    pairs = [a / b for a, b in zip(times["sampler_s"], times["floor_s"])]
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        sampler()
    table = prof.key_averages().table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total",
                                      row_limit=15)
    text = (f"{args.model}: sampling {BATCH} x {NEW_TOKENS} tokens ({WIDTH}-token prompts) took {s_med:.3f} s "
            f"(median of {args.repeats}); its matrix products alone (prefill and {NEW_TOKENS - 1} steps: weights, "
            f"head, attention over the KV cache) {f_med:.3f} s; sampler / floor = {ratio:.3f}x (goal <= {GOAL}x; "
            f"paired ratios: median {statistics.median(pairs):.3f}x, range {min(pairs):.3f}-{max(pairs):.3f}x)"
            f"\n\nOperators of one more sampler run:\n{table}")
    print(text)
    tag = "cuda" if cuda else "cpu"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"profile_sampling_{args.model}_{tag}.txt").write_text(text)
    write_json(f"sampling_floor{'' if args.model == 'llama-20M' else '_' + args.model}",
               {"ratio": ratio, "goal": GOAL, "meets_goal": ratio <= GOAL, "unit": "sampler seconds / floor seconds",
                "details": {"model": args.model, "batch": BATCH, "prompt_tokens": WIDTH, "new_tokens": NEW_TOKENS,
                            "device": tag, "machine": machine(), "sampler_s": s_med, "floor_s": f_med,
                            "paired_ratios": spread(pairs)}},
               spreads)


if __name__ == "__main__":
    main()
