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
* the per-token diff statistics on one chunk of 0.5B-vocabulary logits: the compiled fused kernel
  (:mod:`forklens.analysis.diff_fused`) vs the few-pass eager path vs the elementwise reference, their
  largest differences, and the bandwidth each reaches against a device copy (the statistics are
  memory-bound); scoring MFU of the pair with and without the fused kernel;
* long traces on the 0.5B pair: scoring (forklens chunked heads vs full ``.logits``) and one GRPO-style
  training step (checkpointed LM-head chunks) on one response of 4k-32k tokens: seconds, peak GPU
  memory, FLOPs with attention (:mod:`forklens.policy.flops`) and MFU;
* vLLM: imported if installed (its version and a tiny generation are recorded), else the reason.

``--cpu-dry-run`` runs every section on the CPU with tiny shapes (``--out`` to write elsewhere): the
test suite runs it so that this script, which only a lent GPU machine runs for real, cannot rot.

Every timing is repeated >= 5 times (:func:`common.timed`); the JSON records min/median/max of each
(``repeats``), the stamp (commit, time, hardware, versions, command), and uses the medians.

Writes ``benchmarks/results/gpu_check.json``.

    python benchmarks/gpu_check.py [--quick] [--cpu-dry-run --out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import traceback
from pathlib import Path

import torch

from common import MIN_REPEATS, machine, timed, write_json
from sampling import MODELS as SMALL

QWEN_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=40960)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=1000, tie_word_embeddings=True, max_position_embeddings=1024)
LONG_LENGTHS = (4096, 8192, 16384, 32768)

# What the run uses: the GPU and the 0.5B shape, or (--cpu-dry-run) the CPU and tiny shapes.
DEV = "cuda"
SPEC = QWEN_05B
DRY = False


REPEATS: dict[str, dict] = {}  # label -> spread of the seconds of every timing in this run


def sync_time(fn, repeats: int, label: str) -> float:
    """Median seconds of ``fn`` over ``max(repeats, MIN_REPEATS)`` synchronised runs (spread kept in REPEATS)."""
    REPEATS[label] = timed(fn, max(repeats, MIN_REPEATS), sync=torch.cuda.synchronize if DEV == "cuda" else None)
    return REPEATS[label]["median"]


def build(arch: str, spec: dict, dtype) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(spec)
    spec.setdefault("num_key_value_heads", spec["num_attention_heads"])
    spec.setdefault("max_position_embeddings", 512)
    cfg = AutoConfig.for_model(arch, pad_token_id=0, bos_token_id=1, eos_token_id=2, **spec)
    torch.manual_seed(0)
    with torch.device(DEV):
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
        ids, attn, pos = left_pad(prompts, 0, DEV)
        worst = 0.0
        with torch.no_grad():
            fast = StaticKVDecoder(model, ids, attn, pos, max_new_tokens=16)
            ref = KVStepper(model, ids, attn, pos)
            worst = float((fast.logits - ref.logits).abs().max())
            p = pos[:, -1:] + 1
            g = torch.Generator(device=DEV).manual_seed(0)
            for _ in range(16):
                tok = torch.randint(3, 40, (len(prompts),), device=DEV, generator=g)
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

    prompts = prompts_for(SPEC["vocab_size"], 16, seed=5)
    ids, attn, pos = left_pad(prompts, 0, DEV)
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
    models = {} if DRY else {name: ("llama", spec, torch.float32) for name, spec in SMALL.items()}
    for name, (arch, spec, dtype) in models.items():
        m = build(arch, spec, dtype)
        prompts = prompts_for(spec["vocab_size"], batch)
        out[name] = _speeds(m, prompts, batch, new, repeats, name)
        del m
    if DRY:
        batch, new = 4, 8
    out["qwen2-0.5B-bf16"] = _speeds(big, prompts_for(SPEC["vocab_size"], batch), batch, new, repeats,
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


def matmul_peak() -> float:
    """Measured bf16 matrix-product FLOP/s (an 8192^3 product; 256^3 in a dry run)."""
    n = 256 if DRY else 8192
    mats = [torch.randn(n, n, device=DEV, dtype=torch.bfloat16) for _ in range(2)]
    return 2 * n**3 / sync_time(lambda: mats[0] @ mats[1], 10, "bf16_matmul_s")


def rl_twin(big) -> torch.nn.Module:
    """A second 0.5B model: ``big``'s architecture with perturbed weights (the "RL" side of a diff)."""
    rl = build("qwen2", SPEC, torch.bfloat16)
    with torch.no_grad():
        for p, q in zip(rl.parameters(), big.parameters()):
            p.copy_(q + 0.01 * torch.randn_like(q))
    return rl


def _policies(big, rl):
    from forklens.organisms.base import build_char_tokenizer
    from forklens.policy import Policy

    tok = build_char_tokenizer("abc")
    return Policy(big, tok), Policy(rl, tok)


def scoring_mfu(big, rl, peak: float, quick: bool) -> dict:
    from forklens.analysis.diff import score_pairs

    pb, pr = _policies(big, rl)
    seqs, length = (2, 64) if DRY else ((32, 1024) if quick else (64, 1024))
    half = length // 2
    g = torch.Generator().manual_seed(0)
    V = SPEC["vocab_size"]
    prompts = [torch.randint(3, V, (half,), generator=g).tolist() for _ in range(seqs)]
    responses = [torch.randint(3, V, (length - half,), generator=g).tolist() for _ in range(seqs)]
    h, L = SPEC["hidden_size"], SPEC["num_hidden_layers"]
    body = sum(p.numel() for p in big.parameters()) - V * h  # tied: one embedding matrix
    flops_one = 2 * body * seqs * length + 2 * h * V * seqs * (length - half) + 2 * L * seqs * length * length * h
    out = {"sequences": seqs, "length": length, "peak_bf16_matmul_flops_per_s": peak}
    scores = {}
    for fused in (False, True):
        name = "fused" if fused else "eager"
        scores[name] = score_pairs(pb, pr, prompts, responses, fused=fused)  # warm-up (and the compile)
        sec = sync_time(lambda: score_pairs(pb, pr, prompts, responses, fused=fused), MIN_REPEATS,
                        f"scoring_pair_{name}_s")
        achieved = 2 * flops_one / sec
        out[name] = {"seconds": sec, "achieved_flops_per_s": achieved, "mfu": achieved / peak}
        print(f"  scoring 0.5B pair ({name} statistics): {achieved / 1e12:.1f} TFLOP/s of {peak / 1e12:.0f} peak bf16, "
              f"MFU {achieved / peak:.1%}", flush=True)
    out["fused_equals_eager"] = {
        "same_ranks": all(torch.equal(a.rank_under_base, b.rank_under_base) for a, b in zip(scores["eager"], scores["fused"])),
        "max_abs_kl_difference": max(float((a.kl - b.kl).abs().max()) for a, b in zip(scores["eager"], scores["fused"]))}
    out["mfu"] = out["fused"]["mfu"]
    return out


def stats_kernels(quick: bool) -> dict:
    """One chunk of statistics at the 0.5B vocabulary: fused (compiled) vs few-pass vs reference."""
    from forklens.analysis.diff_fused import compiled_failed
    from forklens.analysis.diff_scores import chunk_pair_stats, chunk_pair_stats_reference, pair_stats

    V = SPEC["vocab_size"]
    rows = 32 if DRY else 2048
    g = torch.Generator(device=DEV).manual_seed(0)
    lb = torch.randn(rows, V, device=DEV, generator=g) * 2
    lr = lb + torch.randn(rows, V, device=DEV, generator=g)
    targets = torch.randint(0, V, (rows,), device=DEV, generator=g)
    t = time.perf_counter()
    pair_stats(lb, lr, targets, 20, fused=True)
    compile_s = time.perf_counter() - t
    sides = {"fused": lambda: pair_stats(lb, lr, targets, 20, fused=True),
             "few_pass": lambda: chunk_pair_stats(lb, lr, targets, 20),
             "reference": lambda: chunk_pair_stats_reference(lb, lr, targets, 20)}
    outs = {name: fn() for name, fn in sides.items()}
    read = 2 * rows * V * 4  # both float32 logit chunks, read at least once
    copy_s = sync_time(lambda: lb.clone(), MIN_REPEATS, "stats/copy_s")
    copy_bw = 2 * rows * V * 4 / copy_s  # a clone reads and writes one chunk
    res = {"rows": rows, "vocab": V, "compile_s": compile_s, "compiled_failed": compiled_failed(),
           "device_copy_bytes_per_s": copy_bw}
    for name, fn in sides.items():
        sec = sync_time(fn, MIN_REPEATS, f"stats/{name}_s")
        res[name] = {"seconds": sec, "read_bytes_per_s": read / sec, "fraction_of_copy_bandwidth": read / sec / copy_bw,
                     "same_ids": all(torch.equal(outs[name][k], outs["reference"][k]) for k in ("rl_token", "rank_under_base")),
                     "max_abs_difference": {k: float((outs[name][k].double() - outs["reference"][k].double()).abs().max())
                                            for k in outs["reference"] if outs["reference"][k].is_floating_point()}}
        print(f"  stats {name:>9}: {sec * 1e3:8.2f} ms, {read / sec / 1e9:7.1f} GB/s read "
              f"({read / sec / copy_bw:.0%} of a copy's bandwidth)", flush=True)
    res["fused_over_few_pass"] = res["fused"]["seconds"] / res["few_pass"]["seconds"]
    return res


def _peak_since_reset(fn) -> float | None:
    if DEV != "cuda":
        fn()
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return float(torch.cuda.max_memory_allocated() - before)


def _train_step(model, ids: torch.Tensor, n_prompt: int) -> float:
    """One GRPO-style step on one response: log-probs and entropy with the LM head in checkpointed chunks
    (the trainer's ``train.logits_chunk_mb``), fixed advantages, backward."""
    from forklens.policy.score import token_logprobs_and_entropy

    model.zero_grad(set_to_none=True)
    target = torch.zeros_like(ids)
    target[:, n_prompt:] = 1
    lp, ent, _ = token_logprobs_and_entropy(model, ids, torch.ones_like(ids), target, True,
                                            max_chunk_bytes=8192 * 2**20)
    adv = torch.linspace(-1, 1, ids.shape[1], device=ids.device)[None]
    loss = -(adv * lp * target).sum() / target.sum()
    loss.backward()
    return float(loss.detach())


def long_traces(big, rl, peak: float, quick: bool) -> dict:
    """Scoring and a training step on one long response of the 0.5B pair: time, peak memory, FLOPs, MFU."""
    from forklens.analysis.diff import score_pairs
    from forklens.policy.flops import attention_pairs, attention_shape, forward_flops

    pb, pr = _policies(big, rl)
    lengths = (64, 128) if DRY else (LONG_LENGTHS[:2] if quick else LONG_LENGTHS)
    n_params = sum(p.numel() for p in big.parameters())
    shape = attention_shape(big)
    n_prompt, out = 8, {}
    g = torch.Generator().manual_seed(0)
    for length in lengths:
        prompt = torch.randint(3, SPEC["vocab_size"], (n_prompt,), generator=g).tolist()
        resp = torch.randint(3, SPEC["vocab_size"], (length,), generator=g).tolist()
        ids = torch.tensor([prompt + resp], device=DEV)
        fwd = forward_flops(n_params, ids.numel(), attention_pairs(torch.ones_like(ids)), shape)
        point: dict = {"tokens": ids.numel(), "forward_flops": fwd}

        def score():
            return score_pairs(pb, pr, [prompt], [resp], batch_tokens=ids.numel())

        def naive():
            with torch.no_grad():
                lb = torch.log_softmax(big(ids).logits.float(), -1)
                lr = torch.log_softmax(rl(ids).logits.float(), -1)
                return (lb.exp() * (lb - lr)).sum(-1)

        big.train()
        cases = {"score": (score, 2 * fwd), "score_naive": (naive, 2 * fwd),
                 "step": (lambda: _train_step(big, ids, n_prompt), 3 * fwd)}
        for name, (fn, flops) in cases.items():
            try:
                mem = _peak_since_reset(fn)
                sec = sync_time(fn, MIN_REPEATS, f"long/{length}/{name}_s")
                point[name] = {"seconds": sec, "peak_memory_bytes": mem, "flops": flops,
                               "mfu": flops / sec / peak}
            except torch.OutOfMemoryError as exc:
                point[name] = {"error": "out of memory", "detail": str(exc).splitlines()[0]}
            finally:
                big.zero_grad(set_to_none=True)
                if DEV == "cuda":
                    torch.cuda.empty_cache()
            print(f"  long {length:>6} {name:>11}: {json.dumps(point[name], default=str)[:160]}", flush=True)
        big.eval()
        out[str(length)] = point
    return out


def vllm_check() -> dict:
    try:
        import vllm
    except Exception as exc:  # noqa: BLE001
        return {"available": False, "reason": f"import vllm failed: {exc!r}"}
    return {"available": True, "version": vllm.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cpu-dry-run", action="store_true", help="every section on the CPU with tiny shapes")
    ap.add_argument("--out", type=Path, default=None, help="result JSON (default benchmarks/results/gpu_check.json)")
    args = ap.parse_args()
    global DEV, SPEC, DRY
    if args.cpu_dry_run:
        DEV, SPEC, DRY = "cpu", TINY, True
    elif not torch.cuda.is_available():
        raise SystemExit("gpu_check.py needs a CUDA GPU (torch.cuda.is_available() is False); "
                         "--cpu-dry-run checks the script on a CPU")
    torch.backends.cuda.matmul.allow_tf32 = False
    import transformers

    result: dict = {"machine": machine(), "transformers": transformers.__version__, "dry_run": DRY, "checks": {}}

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
    big = build("qwen2", SPEC, torch.bfloat16)
    section("qwen2_0.5B_bf16", check_05b, big, args.quick)
    section("sampling_speed", sampling_speed, args.quick, big)
    peak = matmul_peak()
    rl = rl_twin(big)
    section("stats_kernels", stats_kernels, args.quick)
    section("scoring_mfu", scoring_mfu, big, rl, peak, args.quick)
    section("long_traces", long_traces, big, rl, peak, args.quick)
    section("vllm", vllm_check)
    write_json("gpu_check", result, REPEATS, out=args.out)


if __name__ == "__main__":
    main()
