"""Scaling curves: how sampling, scoring and a GRPO step grow with batch size and sequence length.

On CPU the model is the ~20M-parameter Llama (fp32); on a GPU, the ~0.5B Qwen2-shaped model of
``gpu_check.py`` (bf16). Random weights throughout (speed does not depend on them).

* sampling: tokens/s of the forklens sampler and of ``generate`` vs batch size (64 new tokens) and vs
  new tokens (batch 64);
* scoring: teacher-forced base + RL tokens/s vs sequence length (``score_pairs``, half prompt, half
  response), and vs the LM-head chunk budget ``max_chunk_bytes``;
* GRPO: seconds per forklens GRPO step vs group size (16 prompts) and vs completion length.

Writes ``benchmarks/results/scaling_<cpu|cuda>.json`` and ``docs/img/scaling_<cpu|cuda>.png``.

    python benchmarks/scaling.py [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from common import MIN_REPEATS, machine, spread, timed, write_json

DOCS_IMG = Path(__file__).resolve().parents[1] / "docs" / "img"


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


REPEATS: dict[str, dict] = {}  # label -> spread of the seconds of every point


def seconds(fn, label: str) -> float:
    """Median seconds of ``fn`` over MIN_REPEATS synchronised runs; the spread is kept in REPEATS."""
    REPEATS[label] = timed(fn, MIN_REPEATS, sync=sync)
    return REPEATS[label]["median"]


def build_model(cuda: bool, vocab: int | None = None):
    from transformers import AutoConfig, AutoModelForCausalLM

    if cuda:
        from gpu_check import QWEN_05B

        spec, arch, dtype = dict(QWEN_05B), "qwen2", torch.bfloat16
    else:
        from sampling import MODELS

        spec, arch, dtype = dict(MODELS["llama-20M"]), "llama", torch.float32
        spec.setdefault("max_position_embeddings", 2048)
    if vocab is not None:
        spec["vocab_size"] = vocab
    spec.setdefault("num_key_value_heads", spec["num_attention_heads"])
    spec["max_position_embeddings"] = max(spec.get("max_position_embeddings", 0), 4096)
    cfg = AutoConfig.for_model(arch, pad_token_id=0, bos_token_id=1, eos_token_id=2, **spec)
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):
        model = AutoModelForCausalLM.from_config(cfg)
    return model.to(dtype).eval()


def rand_prompts(vocab: int, n: int, length: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (length,), generator=g).tolist() for _ in range(n)]


def sampling_curves(model, vocab: int, quick: bool) -> dict:
    from gpu_check import generate_tokens, ours

    out = {"batch": [], "new_tokens": []}
    batches = [8, 32, 128] if quick else [8, 16, 32, 64, 128, 256]
    lengths = [32, 128] if quick else [32, 64, 128, 256, 512]
    for b in batches:
        p = rand_prompts(vocab, b, 8)
        t_ours = seconds(lambda: ours(model, p, 64, False), f"sampling/batch={b}/forklens_s")
        t_gen = seconds(lambda: generate_tokens(model, p, 64, False), f"sampling/batch={b}/generate_s")
        out["batch"].append({"batch": b, "forklens_tokens_per_s": b * 64 / t_ours, "generate_tokens_per_s": b * 64 / t_gen})
        print("  sampling", out["batch"][-1], flush=True)
    for n in lengths:
        p = rand_prompts(vocab, 64, 8)
        t_ours = seconds(lambda: ours(model, p, n, False), f"sampling/new_tokens={n}/forklens_s")
        t_gen = seconds(lambda: generate_tokens(model, p, n, False), f"sampling/new_tokens={n}/generate_s")
        out["new_tokens"].append({"new_tokens": n, "forklens_tokens_per_s": 64 * n / t_ours,
                                  "generate_tokens_per_s": 64 * n / t_gen})
        print("  sampling", out["new_tokens"][-1], flush=True)
    return out


def scoring_curves(model, vocab: int, quick: bool) -> dict:
    from forklens.analysis.diff import score_pairs
    from forklens.policy import Policy
    from forklens.organisms.base import build_char_tokenizer

    tok = build_char_tokenizer("abc")
    pol = Policy(model, tok)
    out = {"length": [], "chunk_bytes": []}
    total = 8192 if quick else 32768
    for length in ([256, 1024] if quick else [128, 256, 512, 1024, 2048]):
        n = max(1, total // length)
        pr, rs = rand_prompts(vocab, n, length // 2), rand_prompts(vocab, n, length - length // 2, seed=1)
        t = seconds(lambda: score_pairs(pol, pol, pr, rs), f"scoring/length={length}_s")
        out["length"].append({"length": length, "sequences": n, "tokens_per_s": n * length / t})
        print("  scoring", out["length"][-1], flush=True)
    n, length = max(1, total // 512), 512
    pr, rs = rand_prompts(vocab, n, 256), rand_prompts(vocab, n, 256, seed=1)
    for mib in ([64, 1024] if quick else [64, 256, 1024, 4096]):
        t = seconds(lambda: score_pairs(pol, pol, pr, rs, max_chunk_bytes=mib * 2**20), f"scoring/chunk={mib}MiB_s")
        out["chunk_bytes"].append({"max_chunk_mib": mib, "tokens_per_s": n * length / t})
        print("  scoring", out["chunk_bytes"][-1], flush=True)
    return out


def grpo_curves(cuda: bool, quick: bool) -> dict:
    from forklens.objectives.grpo import GRPOLossConfig
    from forklens.policy import Policy
    from forklens.tasks import get_task
    from forklens.organisms.arith import OrganismConfig
    from forklens.organisms.base import build_char_tokenizer
    from forklens.train.loop import TrainConfig, Trainer, read_metrics
    from forklens.train.sources import GRPOSource, SamplingConfig, verifier_reward

    org = OrganismConfig()
    task = get_task(org.task, org.arith)
    out = {"group_size": [], "new_tokens": []}

    def step_time(group: int, new: int) -> float:
        """Median seconds per step over MIN_REPEATS timed steps after a warm-up step."""
        policy = Policy(build_model(cuda), build_char_tokenizer(task.alphabet))
        policy.eos_ids = []
        src = GRPOSource(task, task.problems("train"), SamplingConfig(prompts_per_step=16, group_size=group,
                                                                       max_new_tokens=new),
                         reward_fns=[verifier_reward(task)], seed=0)
        with tempfile.TemporaryDirectory() as d:
            tr = Trainer(policy, "grpo", GRPOLossConfig(max_new_tokens=new), src,
                         TrainConfig(max_steps=MIN_REPEATS + 1, micro_batch_size=64), Path(d), progress=False)
            tr.train()
            walls = [r["wall_s"] for r in read_metrics(Path(d) / "metrics.jsonl")]
        REPEATS[f"grpo/group={group}/new_tokens={new}/s_per_step"] = spread([b - a for a, b in zip(walls, walls[1:])])
        return REPEATS[f"grpo/group={group}/new_tokens={new}/s_per_step"]["median"]

    for g in ([4, 16] if quick else [2, 4, 8, 16, 32]):
        out["group_size"].append({"group_size": g, "s_per_step": step_time(g, 48)})
        print("  grpo", out["group_size"][-1], flush=True)
    for n in ([32, 128] if quick else [32, 64, 128, 256]):
        out["new_tokens"].append({"new_tokens": n, "s_per_step": step_time(8, n)})
        print("  grpo", out["new_tokens"][-1], flush=True)
    return out


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 3, figsize=(13, 7))
    s = res["sampling"]
    for key, row in (("batch", 0), ("new_tokens", 1)):
        xs = [r[key] for r in s[key]]
        ax[row, 0].plot(xs, [r["forklens_tokens_per_s"] for r in s[key]], "o-", label="forklens")
        ax[row, 0].plot(xs, [r["generate_tokens_per_s"] for r in s[key]], "s--", label="transformers generate")
        ax[row, 0].set(xscale="log", yscale="log", xlabel=key.replace("_", " "), ylabel="tokens/s",
                       title=f"sampling vs {key.replace('_', ' ')}")
        ax[row, 0].legend()
    sc = res["scoring"]
    ax[0, 1].plot([r["length"] for r in sc["length"]], [r["tokens_per_s"] for r in sc["length"]], "o-")
    ax[0, 1].set(xscale="log", xlabel="sequence length", ylabel="tokens/s (base + RL)", title="scoring vs length")
    ax[1, 1].plot([r["max_chunk_mib"] for r in sc["chunk_bytes"]], [r["tokens_per_s"] for r in sc["chunk_bytes"]], "o-")
    ax[1, 1].set(xscale="log", xlabel="LM-head chunk budget (MiB)", ylabel="tokens/s", title="scoring vs chunk budget")
    gr = res["grpo"]
    ax[0, 2].plot([r["group_size"] for r in gr["group_size"]], [r["s_per_step"] for r in gr["group_size"]], "o-")
    ax[0, 2].set(xscale="log", xlabel="group size (16 prompts)", ylabel="s / step", title="GRPO step vs group size")
    ax[1, 2].plot([r["new_tokens"] for r in gr["new_tokens"]], [r["s_per_step"] for r in gr["new_tokens"]], "o-")
    ax[1, 2].set(xscale="log", xlabel="completion tokens", ylabel="s / step", title="GRPO step vs completion length")
    fig.suptitle(f"forklens scaling on {res['device_name']} ({res['model']})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    model = build_model(cuda)
    vocab = model.config.vocab_size
    res = {"machine": machine(), "device_name": torch.cuda.get_device_name(0) if cuda else "CPU",
           "model": f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M params, {model.dtype}"}
    res["sampling"] = sampling_curves(model, vocab, args.quick)
    res["scoring"] = scoring_curves(model, vocab, args.quick)
    del model
    res["grpo"] = grpo_curves(cuda, args.quick)
    tag = "cuda" if cuda else "cpu"
    write_json(f"scaling_{tag}", res, REPEATS)
    plot(res, DOCS_IMG / f"scaling_{tag}.png")


if __name__ == "__main__":
    main()
