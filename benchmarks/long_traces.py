"""Long reasoning traces: time and peak memory of scoring and of a GRPO step vs response length.

Reasoning responses run to 16-32k tokens. For each response length (default 1k to 32k tokens, an
8-token prompt) and each side, a fresh process builds two tiny Llama models (a base and an "RL" model;
``--vocab`` rows in the output layer, default 32,000) and times, after one warm-up, ``--repeats``
runs of

* ``score``: the token diff statistics of one response under both models: forklens'
  :func:`~forklens.analysis.diff.score_pairs` (LM heads in chunks of positions) vs the naive peer
  (``model(input_ids).logits`` of both models, full float32 ``[tokens x vocab]``; memory.py's ``_naive``);
* ``step``: one GRPO-style training step on the response (log-probs and entropy at every response
  token, ``-(advantage * logprob).mean()`` backward): forklens'
  :func:`~forklens.policy.score.token_logprobs_and_entropy` with the LM head in checkpointed chunks
  (``--head-mb`` budget, ``train.logits_chunk_mb``) vs the one-shot head the trainer (and TRL) use for
  short sequences, whose log-softmax over ``[tokens x vocab]`` is kept for the backward.

Peak memory is the process's peak RSS (``ru_maxrss``) minus its RSS before the first run. The
naive sides stop at ``--peer-max`` tokens (their full logits alone need ``tokens x vocab x 4`` bytes
per copy: 4 GiB per copy at 32k x 32k); longer points are recorded as not run, with that size.
FLOPs include attention (:mod:`forklens.policy.flops`). Writes
``benchmarks/results/long_traces.json`` and ``docs/img/long_traces.png``.

    python benchmarks/long_traces.py [--lengths 1024,2048,...] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import MIN_REPEATS, RESULTS, repeats_arg, spread, write_json
from memory import _chunked, _models, _naive, _peak_rss, _rss_now

DOCS_IMG = Path(__file__).resolve().parents[1] / "docs" / "img"
GiB = 2**30
N_PROMPT = 8


def _step(policy, ids, head_bytes: int | None):
    import torch

    from forklens.policy.score import token_logprobs_and_entropy

    policy.model.zero_grad(set_to_none=True)
    target = torch.zeros_like(ids)
    target[:, N_PROMPT:] = 1
    lp, ent, _ = token_logprobs_and_entropy(policy.model, ids, torch.ones_like(ids), target, True,
                                            max_chunk_bytes=head_bytes)
    adv = torch.linspace(-1, 1, ids.shape[1])[None]  # any fixed advantages
    loss = -(adv * lp * target).sum() / target.sum()
    loss.backward()
    return float(loss), float((ent * target).sum())


def child(kind: str, side: str, tokens: int, vocab: int, hidden: int, repeats: int, head_mb: int) -> dict:
    import torch

    base, rl = _models(vocab, tokens + N_PROMPT, hidden)
    ids = torch.randint(2, vocab, (1, N_PROMPT + tokens), generator=torch.Generator().manual_seed(0))
    if kind == "score":
        fn = (lambda: _chunked(base, rl, ids, N_PROMPT)) if side == "forklens" else (lambda: _naive(base, rl, ids, N_PROMPT))
    else:
        base.model.train()
        head = head_mb * 2**20 if side == "forklens" else 2**62  # the peer: one-shot head
        fn = lambda: _step(base, ids, head)  # noqa: E731
    before = _rss_now()
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    check = ({"kl_sum": float(out["kl"].double().sum()), "rank_sum": int(out["rank"].sum())} if kind == "score"
             else {"loss": out[0], "entropy_sum": out[1]})
    return {"seconds": times, "peak_above_start": _peak_rss() - before, "check": check}


def _run(kind, side, tokens, args) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, side, str(tokens), "--vocab", str(args.vocab),
           "--hidden", str(args.hidden), "--repeats", str(args.repeats), "--head-mb", str(args.head_mb)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode} (killed for memory if -9): {proc.stderr[-500:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plot(points: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for kind, style in (("score", "-"), ("step", "--")):
        for side, colour in (("forklens", "tab:blue"), ("peer", "tab:red")):
            pts = [(n, p) for n, p in points[kind][side].items() if "seconds" in p]
            if not pts:
                continue
            xs = [int(n) for n, _ in pts]
            axes[0].plot(xs, [p["seconds"]["median"] for _, p in pts], style, color=colour, marker="o",
                         label=f"{kind}: {side}")
            axes[1].plot(xs, [p["peak_above_start"] / GiB for _, p in pts], style, color=colour, marker="o",
                         label=f"{kind}: {side}")
    for ax, label in zip(axes, ("seconds (median)", "peak memory above start (GiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("response tokens")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("long traces on CPU: scoring (two models) and one training step vs length")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="1024,2048,4096,8192,16384,32768")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--head-mb", type=int, default=256, help="forklens' training LM-head budget (MiB)")
    parser.add_argument("--peer-max", type=int, default=8192, help="longest response the naive sides run")
    parser.add_argument("--repeats", type=repeats_arg, default=MIN_REPEATS)
    parser.add_argument("--child", nargs=3, metavar=("KIND", "SIDE", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, side, tokens = args.child
        print(json.dumps(child(kind, side, int(tokens), args.vocab, args.hidden, args.repeats, args.head_mb)))
        return 0

    from forklens.policy.flops import forward_flops

    lengths = [int(x) for x in args.lengths.split(",")]
    repeats: dict[str, dict] = {}
    points: dict = {k: {"forklens": {}, "peer": {}} for k in ("score", "step")}
    for n in lengths:
        for kind in ("score", "step"):
            for side in ("forklens", "peer"):
                if side == "peer" and n > args.peer_max:
                    points[kind][side][str(n)] = {"not_run": f"naive full logits: {n * args.vocab * 4 / GiB:.1f} GiB "
                                                              "per float32 copy"}
                    continue
                r = _run(kind, side, n, args)
                if "seconds" in r:
                    r["seconds"] = repeats[f"{kind}/{side}/{n}"] = spread(r["seconds"])
                points[kind][side][str(n)] = r
                shown = (f"{r['seconds']['median']:.2f} s, +{r['peak_above_start'] / GiB:.2f} GiB" if "seconds" in r
                         else r["error"][:80])
                print(f"{kind:5s} {side:8s} {n:6d} tokens: {shown}", flush=True)
    n_params = _models(args.vocab, 16, args.hidden)[0].num_params()  # as the trainer counts them
    flops = {str(n): {"forward": forward_flops(n_params, n + N_PROMPT, (n + N_PROMPT) * (n + N_PROMPT + 1) / 2, (1, args.hidden)),
                      "forward_without_attention": 2.0 * n_params * (n + N_PROMPT)} for n in lengths}
    same = {}
    for kind in ("score", "step"):
        for n in lengths:
            a, b = points[kind]["forklens"].get(str(n), {}), points[kind]["peer"].get(str(n), {})
            if "check" in a and "check" in b:
                same[f"{kind}/{n}"] = all(abs(a["check"][k] - b["check"][k]) <= 1e-3 * max(1.0, abs(b["check"][k]))
                                          for k in a["check"])
    longest = str(max(lengths))
    result = {
        "details": {
            "what": "seconds (median of repeats after a warm-up) and peak RSS above the process's start, per response "
                    "length, for scoring one response under two models and for one training step on it",
            "model": {"arch": "llama", "hidden_size": args.hidden, "layers": 1, "heads": 2, "vocab": args.vocab,
                      "non_embedding_params": n_params},
            "forklens": {"score": "forklens.analysis.diff.score_pairs (chunked LM heads)",
                         "step": f"token_logprobs_and_entropy with the head in checkpointed chunks ({args.head_mb} MiB)"},
            "peer": {"score": "model(input_ids).logits of both models, statistics on full tensors",
                     "step": "one-shot LM head (full [tokens x vocab] log-softmax kept for the backward)"},
            "same_answers": same,
            "flops": flops,
            "attention_share_at_longest": 1 - flops[longest]["forward_without_attention"] / flops[longest]["forward"],
        },
        "points": points,
    }
    path = write_json("long_traces", result, repeats, out=RESULTS / "long_traces.json")
    plot(points, DOCS_IMG / "long_traces.png")
    print(f"wrote {path} and {DOCS_IMG / 'long_traces.png'}; same answers: {same}")
    return 0 if all(same.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
