"""GPU check: the CUDA path of forklens (correctness, then speed) and whether vLLM is usable.

Run it on a machine with a GPU (it exits with a message otherwise). Everything uses random-weight
models built from configs, so nothing is downloaded:

* correctness, fp32: on tiny Llama / Qwen2 / Qwen3 models the fast decoder (CUDA graphs) gives the
  logits of the transformers forward step by step, greedy sampling equals ``generate``;
* correctness, bf16 on a ~0.5B model shaped like Qwen2.5-0.5B (hidden 896, 24 layers, 14 query / 2
  key-value heads, vocabulary 151,936, tied embeddings): the fast decoder passes its own check,
  greedy tokens agree with ``generate``, chunked scoring equals the model's logits (``verify_head``);
* speed: sampling tokens/s (batch 64, 64 new tokens) of the forklens sampler with and without CUDA
  graphs vs ``generate``, on the organism shape, the ~20M Llama and the 0.5B model; scoring MFU of a
  base + RL pair of 0.5B models against the measured bf16 matmul peak;
* vLLM: imported if installed (its version and a tiny generation are recorded), else the reason.

Every timing is repeated >= 5 times (:func:`common.timed`); the JSON records min/median/max of each
(``repeats``), the stamp (commit, time, hardware, versions, command), and uses the medians.

Writes ``benchmarks/results/gpu_check.json``.

    python benchmarks/gpu_check.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import traceback

import torch

from common import MIN_REPEATS, machine, timed, write_json
from sampling import MODELS as SMALL

QWEN_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=4096)


REPEATS: dict[str, dict] = {}  # label -> spread of the seconds of every timing in this run


def sync_time(fn, repeats: int, label: str) -> float:
    """Median seconds of ``fn`` over ``max(repeats, MIN_REPEATS)`` synchronised runs (spread kept in REPEATS)."""
    REPEATS[label] = timed(fn, max(repeats, MIN_REPEATS), sync=torch.cuda.synchronize)
    return REPEATS[label]["median"]


def build(arch: str, spec: dict, dtype) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(spec)
    spec.setdefault("num_key_value_heads", spec["num_attention_heads"])
    spec.setdefault("max_position_embeddings", 512)
    cfg = AutoConfig.for_model(arch, pad_token_id=0, bos_token_id=1, eos_token_id=2, **spec)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg)
    return model.to(dtype).eval()


def prompts_for(vocab: int, batch: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (int(torch.randint(6, 12, (1,), generator=g)),), generator=g).tolist()
            for _ in range(batch)]


def generate_tokens(model, prompts, new_tokens: int, greedy: bool) -> torch.Tensor:
    width, dev = max(map(len, prompts)), next(model.parameters()).device
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=dev)
    attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=dev)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=attn, do_sample=not greedy, temperature=1.0, top_p=1.0,
                             top_k=0, max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0,
                             eos_token_id=None)
    return out[:, width:]


def ours(model, prompts, new_tokens: int, greedy: bool, graphs: bool = True):
    from forklens.policy.sample import sample_batch

    os.environ["FORKLENS_CUDA_GRAPHS"] = "1" if graphs else "0"
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(1)
    out, _, _ = sample_batch(model, prompts, pad_id=0, eos_ids=[], max_new_tokens=new_tokens,
                             temperature=0.0 if greedy else 1.0, top_p=1.0, generator=gen)
    return out


def check_fast_decoder_fp32() -> dict:
    from forklens.policy.fast_decode import StaticKVDecoder
    from forklens.policy.sample import KVStepper, left_pad

    res = {}
    spec = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=40)
    for arch in ("llama", "qwen2", "qwen3"):
        extra = {"head_dim": 16} if arch == "qwen3" else {}
        model = build(arch, {**spec, **extra}, torch.float32)
        prompts = prompts_for(40, 8, seed=3)
        ids, attn, pos = left_pad(prompts, 0, "cuda")
        worst = 0.0
        with torch.no_grad():
            fast = StaticKVDecoder(model, ids, attn, pos, max_new_tokens=16)
            ref = KVStepper(model, ids, attn, pos)
            worst = float((fast.logits - ref.logits).abs().max())
            p = pos[:, -1:] + 1
            g = torch.Generator(device="cuda").manual_seed(0)
            for _ in range(16):
                tok = torch.randint(3, 40, (len(prompts),), device="cuda", generator=g)
                attn = torch.cat([attn, torch.ones_like(attn[:, :1])], 1)
                worst = max(worst, float((fast.step(tok, attn, p) - ref.step(tok, attn, p)).abs().max()))
                p = p + 1
        greedy_same = ours(model, prompts, 24, greedy=True) == generate_tokens(model, prompts, 24, True).tolist()
        res[arch] = {"graphs": fast.graphs, "max_abs_logit_diff": worst, "greedy_equals_generate": greedy_same,
                     "ok": worst < 1e-4 and greedy_same}
    return res


def check_05b(model, quick: bool) -> dict:
    from forklens.policy import Policy
    from forklens.policy.fast_decode import verify_fast_decoder
    from forklens.policy.sample import left_pad
    from forklens.organisms.base import build_char_tokenizer

    prompts = prompts_for(QWEN_05B["vocab_size"], 16, seed=5)
    ids, attn, pos = left_pad(prompts, 0, "cuda")
    verified = verify_fast_decoder(model, ids, attn, pos)
    a = torch.tensor(ours(model, prompts, 32, greedy=True))
    b = generate_tokens(model, prompts, 32, True).cpu()
    first_diff = [(int((x != y).nonzero()[0]) if bool((x != y).any()) else 32) for x, y in zip(a, b)]
    tok = build_char_tokenizer("abc")
    policy = Policy(model, tok)
    head_ok, err = True, None
    try:
        policy.score(prompts[:4], [p[::-1] for p in prompts[:4]])  # runs verify_head on the first batch
    except Exception as exc:  # noqa: BLE001 - recorded in the result
        head_ok, err = False, repr(exc)
    return {"fast_decoder_verified_bf16": verified, "greedy_token_agreement": float((a == b).float().mean()),
            "greedy_tokens_before_first_divergence_mean": statistics.mean(first_diff),
            "score_verify_head_ok": head_ok, "score_error": err}


def sampling_speed(quick: bool, big) -> dict:
    out = {}
    batch, new = 64, 64
    repeats = MIN_REPEATS if quick else 7
    models = {name: ("llama", spec, torch.float32) for name, spec in SMALL.items()}
    for name, (arch, spec, dtype) in models.items():
        m = build(arch, spec, dtype)
        prompts = prompts_for(spec["vocab_size"], batch)
        out[name] = _speeds(m, prompts, batch, new, repeats, name)
        del m
    out["qwen2-0.5B-bf16"] = _speeds(big, prompts_for(QWEN_05B["vocab_size"], batch), batch, new, repeats,
                                     "qwen2-0.5B-bf16")
    return out


def _speeds(model, prompts, batch, new, repeats, name: str) -> dict:
    n = batch * new
    t_graph = sync_time(lambda: ours(model, prompts, new, False, graphs=True), repeats, f"sampling/{name}/forklens_s")
    t_eager = sync_time(lambda: ours(model, prompts, new, False, graphs=False), repeats,
                        f"sampling/{name}/forklens_eager_s")
    t_gen = sync_time(lambda: generate_tokens(model, prompts, new, False), repeats, f"sampling/{name}/generate_s")
    r = {"params": sum(p.numel() for p in model.parameters()), "forklens_tokens_per_s": n / t_graph,
         "forklens_eager_tokens_per_s": n / t_eager, "generate_tokens_per_s": n / t_gen,
         "ratio": t_gen / t_graph, "ratio_eager": t_gen / t_eager}
    print(f"  sampling {r['params'] / 1e6:8.1f}M  forklens {n / t_graph:9.0f} tok/s (eager {n / t_eager:8.0f})  "
          f"generate {n / t_gen:8.0f} tok/s  ratio {r['ratio']:.2f}", flush=True)
    return r


def scoring_mfu(big, quick: bool) -> dict:
    from forklens.analysis.diff import score_pairs
    from forklens.policy import Policy
    from forklens.organisms.base import build_char_tokenizer

    n = 8192
    mats = [torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2)]
    peak = 2 * n**3 / sync_time(lambda: mats[0] @ mats[1], 10, "bf16_matmul_8192_s")
    mats.clear()
    rl = build("qwen2", QWEN_05B, torch.bfloat16)
    with torch.no_grad():
        for p in rl.parameters():
            p.add_(0.01 * torch.randn_like(p))
    tok = build_char_tokenizer("abc")
    pb, pr = Policy(big, tok), Policy(rl, tok)
    seqs, length = (32, 1024) if quick else (64, 1024)
    half = length // 2
    g = torch.Generator().manual_seed(0)
    V = QWEN_05B["vocab_size"]
    prompts = [torch.randint(3, V, (half,), generator=g).tolist() for _ in range(seqs)]
    responses = [torch.randint(3, V, (length - half,), generator=g).tolist() for _ in range(seqs)]
    sec = sync_time(lambda: score_pairs(pb, pr, prompts, responses), MIN_REPEATS, "scoring_pair_s")
    h, L = QWEN_05B["hidden_size"], QWEN_05B["num_hidden_layers"]
    body = sum(p.numel() for p in big.parameters()) - V * h  # tied: one embedding matrix
    flops_one = 2 * body * seqs * length + 2 * h * V * seqs * (length - half) + 2 * L * seqs * length * length * h
    achieved = 2 * flops_one / sec
    print(f"  scoring 0.5B pair: {achieved / 1e12:.1f} TFLOP/s of {peak / 1e12:.0f} peak bf16, MFU {achieved / peak:.1%}",
          flush=True)
    del rl
    return {"sequences": seqs, "length": length, "seconds": sec, "achieved_flops_per_s": achieved,
            "peak_bf16_matmul_flops_per_s": peak, "mfu": achieved / peak}


def vllm_check() -> dict:
    try:
        import vllm
    except Exception as exc:  # noqa: BLE001
        return {"available": False, "reason": f"import vllm failed: {exc!r}"}
    return {"available": True, "version": vllm.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check.py needs a CUDA GPU (torch.cuda.is_available() is False)")
    torch.backends.cuda.matmul.allow_tf32 = False
    import transformers

    result: dict = {"machine": machine(), "transformers": transformers.__version__, "checks": {}}

    def section(name, fn, *a):
        t = time.perf_counter()
        print(f"[{name}]", flush=True)
        try:
            result["checks"][name] = fn(*a)
        except Exception:  # noqa: BLE001 - a failed section is recorded, the others still run
            result["checks"][name] = {"error": traceback.format_exc()}
            print(traceback.format_exc(), flush=True)
        result["checks"][name + "_s"] = time.perf_counter() - t
        print(json.dumps(result["checks"][name], default=str)[:2000], flush=True)

    section("fast_decoder_fp32", check_fast_decoder_fp32)
    big = build("qwen2", QWEN_05B, torch.bfloat16)
    section("qwen2_0.5B_bf16", check_05b, big, args.quick)
    section("sampling_speed", sampling_speed, args.quick, big)
    section("scoring_mfu", scoring_mfu, big, args.quick)
    section("vllm", vllm_check)
    write_json("gpu_check", result, REPEATS)


if __name__ == "__main__":
    main()
