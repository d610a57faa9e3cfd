"""Sampling throughput: the forklens sampler vs transformers' `generate`, side by side in one run.

Both sample (temperature 1, top-p 1) ``--batch`` prompts x ``--new-tokens`` new tokens from the same
model, with EOS disabled on both sides so every row generates exactly ``--new-tokens`` tokens, and
the same prompts. Two models: the default arith organism architecture (0.6M parameters, random
weights: speed does not depend on the weights) and a ~20M-parameter Llama (hidden 512, 4 layers,
vocabulary 8,192). Each side is warmed up once, then timed ``--repeats`` times (>= 5); the headline is the
median and the JSON records min/median/max of every side (``repeats``) and the stamp.

Writes ``benchmarks/results/sampling.json``: ``{"stamp", "repeats", "forklens": tokens/s, "peer": tokens/s,
"unit": "tokens/s", "ratio": forklens / peer, "details": {...}}`` (headline: the ~20M model).

    python benchmarks/sampling.py [--quick]
"""

from __future__ import annotations

import argparse

import torch

from common import MIN_REPEATS, machine, repeats_arg, timed, write_result

MODELS = {
    "organism-0.6M": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=3, num_attention_heads=4,
                          vocab_size=18),
    "llama-20M": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
                      vocab_size=8192),
}


def build(spec: dict):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(num_key_value_heads=spec["num_attention_heads"], max_position_embeddings=512,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2, **spec)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def forklens_run(model, prompts, new_tokens: int, seed: int) -> None:
    from forklens.policy.sample import sample_batch

    gen = torch.Generator().manual_seed(seed)
    sample_batch(model, prompts, pad_id=0, eos_ids=[], max_new_tokens=new_tokens, temperature=1.0, top_p=1.0,
                 generator=gen)


def generate_run(model, prompts, new_tokens: int, seed: int) -> None:
    torch.manual_seed(seed)
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        model.generate(input_ids=ids, attention_mask=attn, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                       max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0, eos_token_id=None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=repeats_arg, default=10, help=f"timed repeats per side (>= {MIN_REPEATS})")
    ap.add_argument("--quick", action="store_true", help=f"the minimum {MIN_REPEATS} repeats")
    args = ap.parse_args()
    repeats = MIN_REPEATS if args.quick else args.repeats
    g = torch.Generator().manual_seed(0)
    details = {"batch": args.batch, "new_tokens": args.new_tokens, "repeats": repeats, "machine": machine(),
               "models": {}}
    spreads = {}
    for name, spec in MODELS.items():
        model = build(spec)
        prompts = [torch.randint(3, spec["vocab_size"], (int(torch.randint(6, 12, (1,), generator=g)),),
                                 generator=g).tolist() for _ in range(args.batch)]
        n_tokens = args.batch * args.new_tokens
        spreads[f"{name}/forklens_s"] = timed(lambda: forklens_run(model, prompts, args.new_tokens, 1), repeats)
        spreads[f"{name}/generate_s"] = timed(lambda: generate_run(model, prompts, args.new_tokens, 1), repeats)
        ours, peer = spreads[f"{name}/forklens_s"]["median"], spreads[f"{name}/generate_s"]["median"]
        details["models"][name] = {"params": sum(p.numel() for p in model.parameters()),
                                   "forklens_s": ours, "generate_s": peer,
                                   "forklens_tokens_per_s": n_tokens / ours, "generate_tokens_per_s": n_tokens / peer,
                                   "ratio": peer / ours}
        print(f"{name:14s} forklens {n_tokens / ours:9.0f} tok/s   generate {n_tokens / peer:9.0f} tok/s   "
              f"ratio {peer / ours:.2f}")
    head = details["models"]["llama-20M"]
    write_result("sampling", head["forklens_tokens_per_s"], head["generate_tokens_per_s"], "tokens/s", details,
                 spreads)


if __name__ == "__main__":
    main()
