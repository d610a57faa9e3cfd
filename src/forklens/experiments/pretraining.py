"""`forklens experiment pretraining`: does the pretraining objective or architecture change the base, and what RL
later does to it? HRM-Text's factorial (E074, arXiv 2605.20613) at organism scale.

Arms (each a base organism pretrained from scratch on the arith task's noisy-teacher traces, an instruction
``a+b=`` and its response): {transformer, recurrent} x {P(x): loss on the whole sequence, P(a|q): loss on the
response} x {causal, PrefixLM: bidirectional over the prompt}, plus two controls at P(a|q) / PrefixLM:
``recurrent-depth1`` (h_cycles = l_cycles = 1: the same parameters, no recurrent depth) and
``transformer-flops`` (as many layers as the recurrent model applies blocks: the FLOP-matched transformer;
the factorial's transformer, with as many blocks as the recurrent model has, is the parameter-matched one).

Every arm gets the same pretraining FLOPs: ``6 x (parameters of one block) x (blocks applied per token) x
(tokens)``, processed tokens of prompt and response whatever the loss, so a recurrent model that applies each
block 4x as often trains for a quarter of the steps (an upper bound for it: truncated backprop skips part of
the backward pass). Per seed (the seed of the initialisation, the teacher traces and GRPO), each arm's base is
evaluated greedily on held-out problems, trained by the same GRPO recipe (same steps and samples; RL FLOPs are
not matched), evaluated again, and diffed against its RL model (``rl-greedy`` responses): the fork count
(disagreements per response), the base entropy at those forks, and RL's gain. ``summary.contrasts`` are the
paired (by seed) differences the predictions name. Records are appended to ``records.jsonl`` as each
(arm, seed) finishes; ``--resume`` with the same config and ``--out`` reuses them.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console

from forklens.analysis.curves import bootstrap_ci, paired_difference
from forklens.analysis.diff import run_diff
from forklens.analysis.evaluate import EvalConfig, evaluate
from forklens.analysis.fork_stats import fork_stats, read_token_rows
from forklens.config import field
from forklens.errors import ConfigError
from forklens.organisms.arith import OrganismConfig, build_base_organism
from forklens.organisms.base import OrganismModelConfig, cache_key
from forklens.policy import Policy
from forklens.report.artifacts import make_stamp, write_artifact
from forklens.runfolder import claim_folder, owned_rmtree
from forklens.tasks import get_task
from forklens.tasks.arith import ArithConfig
from forklens.train.loop import TrainConfig
from forklens.train.run import RLConfig, run_grpo
from forklens.train.sources import SamplingConfig

console = Console(stderr=True)

#: arm -> (architecture, loss, attention, control); the factorial first, then the controls
ARMS = {f"{a}-{lo}-{at}": (a, lo, at, "") for a in ("transformer", "recurrent") for lo in ("sequence", "response")
        for at in ("causal", "prefix")}
ARMS["recurrent-depth1"] = ("recurrent", "response", "prefix", "depth1")
ARMS["transformer-flops"] = ("transformer", "response", "prefix", "flops")

#: paired contrasts (a - b) reported per metric, as summary.contrasts.<name>.<metric>
CONTRASTS = {
    "recurrent-vs-transformer": ("recurrent-response-prefix", "transformer-response-prefix"),
    "recurrent-vs-transformer-causal-px": ("recurrent-sequence-causal", "transformer-sequence-causal"),
    "response-vs-sequence": ("transformer-response-causal", "transformer-sequence-causal"),
    "prefix-vs-causal": ("transformer-response-prefix", "transformer-response-causal"),
    "recurrence-vs-depth1": ("recurrent-response-prefix", "recurrent-depth1"),
    "recurrent-vs-flops-matched": ("recurrent-response-prefix", "transformer-flops"),
}
METRICS = ("base_accuracy", "tuned_accuracy", "rl_gain", "forks_per_response", "fork_entropy", "entropy_ratio")


def _rl_default() -> RLConfig:
    return RLConfig(train=TrainConfig(max_steps=20, learning_rate=1e-4, micro_batch_size=128, save_every=0),
                    sampling=SamplingConfig(prompts_per_step=8, group_size=8, max_new_tokens=32))


@dataclass
class PretrainingConfig:
    arms: list[str] = field(default_factory=lambda: list(ARMS), help=f"Arms to run, of: {', '.join(ARMS)}.")
    digits: int = field(2, ge=1, help="Arith operand digits (the instruction task).")
    hidden_size: int = field(64, ge=8, help="Model width.")
    intermediate_size: int = field(192, ge=8, help="MLP width.")
    heads: int = field(4, ge=1, help="Attention heads.")
    module_layers: int = field(1, ge=1, help="Blocks per recurrent module (the transformer has twice as many).")
    h_cycles: int = field(2, ge=1, help="Recurrent H cycles.")
    l_cycles: int = field(3, ge=1, help="Recurrent L steps per H cycle.")
    bptt_start: int = field(2, ge=0, help="Truncated BPTT depth at the first step (warms up to bptt_end).")
    bptt_end: int = field(5, ge=0, help="Truncated BPTT depth at the last step.")
    flops_budget: float = field(2e11, gt=0, help="Pretraining FLOPs of every arm (see the module doc).")
    batch_size: int = field(32, ge=1, help="Teacher traces per pretraining step.")
    learning_rate: float = field(3e-3, gt=0, help="Pretraining peak learning rate (warm-up 10%, cosine).")
    rl: RLConfig = field(default_factory=_rl_default, help="GRPO after pretraining (same for every arm).")
    eval_problems: int = field(100, ge=1, help="Held-out problems of the greedy accuracy.")
    diff_prompts: int = field(32, ge=1, help="Held-out prompts of the base-vs-RL diff.")
    top_k: int = field(5, ge=1, help="K of the diff.")
    seeds: int = field(5, ge=1, help="Seeds per arm.")
    seed: int = field(0, help="First seed; seeds are seed, seed+1, ...")
    artifact: str = field("", help="Also write a stamped artifact folder here (e.g. results/pretraining).")


def block_params(cfg: PretrainingConfig) -> int:
    """Parameters of one pre-norm block (attention, MLP, two norms), as the recurrent class builds it."""
    d, m = cfg.hidden_size, cfg.intermediate_size
    return 4 * d * d + 2 * d * m + 2 * d


def arm_organism(cfg: PretrainingConfig, arm: str, seed: int, mean_tokens: float) -> tuple[OrganismConfig, dict]:
    """The arm's organism config at the FLOP budget, and its compute accounting."""
    arch, loss, attention, control = ARMS[arm]
    h, lc = (1, 1) if control == "depth1" else (cfg.h_cycles, cfg.l_cycles)
    applications = h * (lc + 1) if arch == "recurrent" else 1
    layers = cfg.module_layers if arch == "recurrent" else 2 * cfg.module_layers
    if control == "flops":
        layers = cfg.module_layers * cfg.h_cycles * (cfg.l_cycles + 1)
    applied = layers * applications  # blocks applied per token
    per_step = 6.0 * block_params(cfg) * applied * cfg.batch_size * mean_tokens
    steps = max(1, round(cfg.flops_budget / per_step))
    model = OrganismModelConfig(hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                                num_hidden_layers=layers, num_attention_heads=cfg.heads, max_position_embeddings=64,
                                architecture=arch, attention=attention, loss=loss, h_cycles=h, l_cycles=lc,
                                bptt_start=cfg.bptt_start, bptt_end=cfg.bptt_end)
    pretrain = TrainConfig(max_steps=steps, learning_rate=cfg.learning_rate, warmup_steps=max(1, steps // 10),
                           lr_schedule="cosine", micro_batch_size=256, weight_decay=0.01)
    org = OrganismConfig(arith=ArithConfig(digits=cfg.digits), model=model, pretrain=pretrain,
                         batch_size=cfg.batch_size, seed=seed)
    return org, {"steps": steps, "blocks_applied": applied, "flops": per_step * steps,
                 "params": block_params(cfg) * layers * (2 if arch == "recurrent" else 1)}


def run_arm(cfg: PretrainingConfig, arm: str, seed: int, task, mean_tokens: float, out: Path,
            progress: bool) -> dict:
    org, compute = arm_organism(cfg, arm, seed, mean_tokens)
    base_dir, tuned_dir = out / "base", out / "tuned"
    info = build_base_organism(org, base_dir, progress=progress)
    test = task.problems("test")
    mnt = cfg.rl.sampling.max_new_tokens
    ev = EvalConfig(max_new_tokens=mnt, limit=cfg.eval_problems)
    base = Policy.load(base_dir)
    base_acc = evaluate(base, task, ev)["accuracy"]
    owned_rmtree(out / "train")
    owned_rmtree(tuned_dir)
    run_grpo(base_dir, task, cfg.rl, out / "train", seed=seed, progress=progress, model_dir=tuned_dir)
    tuned = Policy.load(tuned_dir)
    tuned_acc = evaluate(tuned, task, ev)["accuracy"]
    by_id = {p.id: p for p in test}
    records = [{"id": p.id, "prompt": p.prompt, "answer": p.answer} for p in test[: cfg.diff_prompts]]
    run_diff(base, tuned, records, responses="rl-greedy", max_new_tokens=mnt, top_k=cfg.top_k, seed=seed,
             verifier=lambda rec, text: task.verify(by_id[rec["id"]], text) > 0, out_dir=out / "diff", progress=False)
    forks = fork_stats(read_token_rows(out / "diff" / "tokens.jsonl"), top_k=cfg.top_k)
    return {"arm": arm, "seed": seed, "compute": compute, "pretrain_final_loss": info.get("final_loss"),
            "cache_hit": info["cache_hit"], "base_accuracy": base_acc, "tuned_accuracy": tuned_acc,
            "rl_gain": tuned_acc - base_acc, "forks_per_response": forks["disagreements_per_response"],
            "fork_entropy": forks["entropy_mean_disagreement"], "entropy_ratio": forks["entropy_ratio"],
            "share_in_topk": forks["share_in_topk"]}


def _interval(values: list) -> dict | None:
    vals = [v for v in values if v is not None]
    return bootstrap_ci(vals).as_dict() if vals else None


def summarise(cfg: PretrainingConfig, records: list[dict], seeds: list[int]) -> dict:
    by = {a: {r["seed"]: r for r in records if r["arm"] == a} for a in cfg.arms}
    arms = {a: {"compute": next(iter(rs.values()))["compute"], "seeds": sorted(rs),
                **{m: _interval([r[m] for r in rs.values()]) for m in METRICS}} for a, rs in by.items() if rs}
    contrasts: dict = {}
    for name, (a, b) in CONTRASTS.items():
        if a in arms and b in arms:
            contrasts[name] = {}
            for m in METRICS:
                pa = {s: r[m] for s, r in by[a].items() if r[m] is not None}
                pb = {s: r[m] for s, r in by[b].items() if r[m] is not None}
                contrasts[name][m] = paired_difference(pa, pb).as_dict() if set(pa) & set(pb) else None
    return {"config": asdict(cfg), "seeds": seeds, "arms": arms, "contrasts": contrasts}


def run_pretraining(cfg: PretrainingConfig, out: str | Path, progress: bool = False) -> dict:
    bad = [a for a in cfg.arms if a not in ARMS]
    if bad:
        raise ConfigError(f"unknown arm(s) {bad}; expected any of {', '.join(ARMS)}")
    out = Path(out)
    claim_folder(out, "experiment-pretraining")
    t0 = time.perf_counter()
    task = get_task("arith", ArithConfig(digits=cfg.digits))
    p, r = task.teacher_example(random.Random(0))
    mean_tokens = float(len(p) + len(r) + 1)  # fixed-width traces: every one has this many tokens
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    stamp = make_stamp(Path(cfg.artifact).name, seeds) if cfg.artifact else None
    # a rerun of the same config into the same --out keeps the (arm, seed) records it already has (resume)
    key = cache_key({"pretraining": asdict(cfg) | {"seeds": 0, "seed": 0, "arms": [], "artifact": ""}})
    done = {}
    if (out / "records.jsonl").is_file():
        for line in (out / "records.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if rec.get("config_key") == key:
                done[(rec["arm"], rec["seed"])] = rec
    (out / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in done.values()))
    records: list[dict] = []
    for seed in seeds:
        for arm in cfg.arms:
            if (arm, seed) in done:
                records.append(done[(arm, seed)])
                continue
            console.rule(f"[bold]pretraining: {arm}, seed {seed}")
            rec = {**run_arm(cfg, arm, seed, task, mean_tokens, out / arm / f"seed-{seed}", progress),
                   "config_key": key}
            records.append(rec)
            console.print(f"{arm} seed {seed}: base {100 * rec['base_accuracy']:.1f}% -> RL "
                          f"{100 * rec['tuned_accuracy']:.1f}%, {rec['forks_per_response']:.2f} forks/response "
                          f"({rec['compute']['steps']} pretraining steps)", highlight=False)
            with (out / "records.jsonl").open("a") as f:
                f.write(json.dumps(rec) + "\n")
    summary = {**summarise(cfg, records, seeds), "wall_s": time.perf_counter() - t0}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if cfg.artifact:
        write_artifact(Path(cfg.artifact).parent, Path(cfg.artifact).name, summary, seeds=seeds, stamp=stamp,
                       metrics={"records": records})
    return summary


def markdown_table(summary: dict) -> str:
    def cell(d):
        return "n/a" if d is None else f"{100 * d['mean']:.1f} [{100 * d['low']:.1f}, {100 * d['high']:.1f}]"

    def num(d):
        return "n/a" if d is None else f"{d['mean']:.2f} [{d['low']:.2f}, {d['high']:.2f}]"
    lines = ["| arm | pretraining steps | base acc % | RL acc % | RL gain (points) | forks / response | "
             "base entropy at forks |", "|---|---|---|---|---|---|---|"]
    for arm, a in summary["arms"].items():
        lines.append(f"| {arm} | {a['compute']['steps']} | {cell(a['base_accuracy'])} | {cell(a['tuned_accuracy'])} "
                     f"| {cell(a['rl_gain'])} | {num(a['forks_per_response'])} | {num(a['fork_entropy'])} |")
    lines += ["", "| contrast (paired by seed) | base acc (points) | RL gain (points) | forks / response |",
              "|---|---|---|---|"]
    for name, c in summary["contrasts"].items():
        lines.append(f"| {name} | {cell(c['base_accuracy'])} | {cell(c['rl_gain'])} | {num(c['forks_per_response'])} |")
    return "\n".join(lines)

