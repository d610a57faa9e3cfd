"""`forklens search`: a greedy search over training-recipe choices with a winner's-curse control (E053,
arXiv 2605.15871, where an agent's swap of cross-entropy for focal loss was the largest single gain).

The base is a character-level LM (the organism's tiny Llama) trained from scratch on a task's teacher
traces, on the whole sequence, at a fixed FLOP budget (6 x non-embedding parameters x trained tokens;
a shallower model gets more steps), scored by validation bits per character under cross-entropy on
held-out traces. A recipe is (loss, learning rate, depth); the loss is cross-entropy, focal loss
``-(1 - p_t)^gamma log p_t`` or label smoothing.

* **Search** (the agents' stand-in): from the reference recipe, ``budget`` candidates in all, each a
  one-choice mutation of the current best, each trained once on ONE search seed, as single-seed agent
  comparisons are; a candidate replaces the current best when its score is lower.
* **Re-check**: the winner and the reference on ``fresh_seeds`` new seeds (paired by seed).
* **Winner's-curse control**: the reference recipe re-run on ``budget`` seeds; the best of those N
  runs is what picking among N seed draws gives with no change to the recipe at all. The search's
  claimed gain is reported against that noise gain, and the winner's fresh-seed mean against the
  best of the N reruns.
* **Focal vs cross-entropy**: each focal gamma against cross-entropy at the reference learning rate
  and depth, on the fresh seeds at the same budget.

Every run's FLOPs are summed by purpose (``summary.cost``), so the search's cost is counted.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from forklens.analysis.curves import bootstrap_ci, paired_difference
from forklens.config import field
from forklens.errors import ConfigError
from forklens.organisms.base import OrganismModelConfig, build_char_tokenizer, build_model
from forklens.report.artifacts import make_stamp, write_artifact
from forklens.tasks import get_task

LOSSES = ("ce", "focal0.5", "focal1", "focal2", "ls0.1")


@dataclass
class SearchConfig:
    task: str = field("arith", help="Built-in task whose teacher traces are the training text.")
    hidden_size: int = field(64, ge=8, help="Model width.")
    heads: int = field(4, ge=1, help="Attention heads.")
    batch_size: int = field(32, ge=1, help="Traces per optimizer step.")
    flops_budget: float = field(2e11, gt=0, help="Training FLOPs per run (6 x non-embedding params x tokens).")
    reference_loss: str = field("ce", help=f"Reference recipe: loss ({', '.join(LOSSES)}).")
    reference_lr: float = field(3e-3, gt=0, help="Reference recipe: peak learning rate.")
    reference_depth: int = field(2, ge=1, help="Reference recipe: layers.")
    losses: list[str] = field(default_factory=lambda: list(LOSSES), help="Loss choices the search may pick.")
    lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-3, 1e-2], help="Learning-rate choices.")
    depths: list[int] = field(default_factory=lambda: [1, 2, 3], help="Depth choices.")
    budget: int = field(12, ge=2, help="Recipes the search trains (the reference included); also N of the "
                        "best-of-N reruns of the reference.")
    fresh_seeds: int = field(5, ge=1, help="Fresh seeds of the re-check and the focal-vs-CE comparison.")
    search_seed: int = field(1000, help="The one seed of every search run; reruns use search_seed + i.")
    fresh_seed: int = field(2000, help="First fresh seed.")
    val_traces: int = field(256, ge=1, help="Held-out traces of the validation bpb.")
    pool: int = field(8192, ge=1, help="Training traces, drawn once and shared by every run (batches sample them).")
    focal: bool = field(True, help="Also run the focal-vs-cross-entropy comparison.")
    artifact: str = field("", help="Also write a stamped artifact folder here (e.g. results/search).")


@dataclass(frozen=True)
class Recipe:
    loss: str
    lr: float
    depth: int

    @property
    def name(self) -> str:
        return f"{self.loss}/lr{self.lr:g}/d{self.depth}"


def recipe_loss(name: str, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean training loss over the given positions: ``ce``, ``focal<gamma>`` or ``ls<epsilon>``."""
    if name == "ce":
        return F.cross_entropy(logits, targets)
    if name.startswith("ls"):
        return F.cross_entropy(logits, targets, label_smoothing=float(name[2:]))
    if name.startswith("focal"):
        logp = logits.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
        return (-(1 - logp.exp()).pow(float(name[5:])) * logp).mean()
    raise ConfigError(f"unknown loss {name!r}; expected ce, focal<gamma> or ls<epsilon>")


class TraceText:
    """A task's teacher traces (prompt + response + EOS) as char tokens: a training pool of ``pool`` traces,
    tokenized once and shared by every run, from which each step draws a seeded batch."""

    def __init__(self, task_name: str, pool: int = 8192):
        self.task = get_task(task_name)
        self.tokenizer = build_char_tokenizer(self.task.alphabet)
        self.ids, self.mask = self.traces(random.Random("search-train-pool"), pool)
        self.mean_tokens = float(self.mask.sum() - len(self.mask)) / len(self.mask)  # trained tokens per trace

    def traces(self, rng: random.Random, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = []
        for _ in range(n):
            p, r = self.task.teacher_example(rng)
            rows.append(self.tokenizer(p + r, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id])
        width = max(map(len, rows))
        ids = torch.full((n, width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = True
        return ids, mask

    def batch(self, rng: random.Random, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.tensor(rng.sample(range(len(self.ids)), n))
        ids, mask = self.ids[idx], self.mask[idx]
        width = int(mask.sum(-1).max())
        return ids[:, :width], mask[:, :width]


def _targets(model, ids, mask):
    logits = model(input_ids=ids, attention_mask=mask.long()).logits[:, :-1]
    keep = mask[:, 1:]
    return logits[keep].float(), ids[:, 1:][keep]


def train_recipe(recipe: Recipe, seed: int, cfg: SearchConfig, text: TraceText, val) -> dict:
    """Train one recipe from scratch on one seed at the FLOP budget; its validation bits per character."""
    mcfg = OrganismModelConfig(hidden_size=cfg.hidden_size, intermediate_size=3 * cfg.hidden_size,
                               num_hidden_layers=recipe.depth, num_attention_heads=cfg.heads)
    model = build_model(text.tokenizer, mcfg, seed=seed)
    n_params = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n and "lm_head" not in n)
    per_step = 6.0 * n_params * cfg.batch_size * text.mean_tokens
    steps = max(1, round(cfg.flops_budget / per_step))
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, max(0, s - warm) / max(1, steps - warm)))))
    model.train()
    flops, start = 0.0, time.perf_counter()
    for step in range(steps):
        ids, mask = text.batch(random.Random(f"search-{seed}-{step}"), cfg.batch_size)
        logits, targets = _targets(model, ids, mask)
        loss = recipe_loss(recipe.loss, logits, targets)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        flops += 6.0 * n_params * float(targets.numel())
    model.eval()
    with torch.no_grad():
        nll = sum(float(F.cross_entropy(*_targets(model, ids, mask), reduction="sum")) for ids, mask in val)
        count = sum(int(mask[:, 1:].sum()) for _, mask in val)
    bpb = nll / count / math.log(2)
    if not math.isfinite(bpb):
        bpb = 1e3  # a diverged run scores as very bad rather than breaking the search
    return {"recipe": recipe.name, "seed": seed, "bpb": bpb, "steps": steps, "flops": flops, "params": n_params,
            "wall_s": time.perf_counter() - start}


def mutate(recipe: Recipe, cfg: SearchConfig, rng: random.Random, seen: set) -> Recipe | None:
    """A recipe differing from ``recipe`` in one choice, not yet evaluated (None when none is left)."""
    options = [Recipe(v, recipe.lr, recipe.depth) for v in cfg.losses if v != recipe.loss]
    options += [Recipe(recipe.loss, v, recipe.depth) for v in cfg.lrs if v != recipe.lr]
    options += [Recipe(recipe.loss, recipe.lr, v) for v in cfg.depths if v != recipe.depth]
    options = [o for o in options if o not in seen]
    return rng.choice(options) if options else None


def run_search(cfg: SearchConfig, out: str | Path) -> dict:
    for name in cfg.losses + [cfg.reference_loss]:
        recipe_loss(name, torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))  # a clear error for a bad name
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = TraceText(cfg.task, cfg.pool)
    val = [text.traces(random.Random(f"search-val-{i}"), min(64, cfg.val_traces - 64 * i))
           for i in range(math.ceil(cfg.val_traces / 64))]
    runs: list[dict] = []
    stamp = make_stamp(Path(cfg.artifact).name, []) if cfg.artifact else None

    def run(recipe: Recipe, seed: int, purpose: str) -> dict:
        r = {**train_recipe(recipe, seed, cfg, text, val), "purpose": purpose}
        runs.append(r)
        with (out / "runs.jsonl").open("a") as f:
            f.write(json.dumps(r) + "\n")
        return r

    (out / "runs.jsonl").unlink(missing_ok=True)
    ref = Recipe(cfg.reference_loss, cfg.reference_lr, cfg.reference_depth)
    rng = random.Random(cfg.search_seed)
    best, best_score = ref, run(ref, cfg.search_seed, "search")["bpb"]
    ref_search = best_score
    seen = {ref}
    trajectory = [{"recipe": ref.name, "bpb": best_score, "accepted": True}]
    while len(seen) < cfg.budget:
        cand = mutate(best, cfg, rng, seen)
        if cand is None:
            break
        seen.add(cand)
        score = run(cand, cfg.search_seed, "search")["bpb"]
        accepted = score < best_score
        trajectory.append({"recipe": cand.name, "bpb": score, "accepted": accepted})
        if accepted:
            best, best_score = cand, score
    reruns = {cfg.search_seed: ref_search}
    for i in range(1, len(seen)):
        reruns[cfg.search_seed + i] = run(ref, cfg.search_seed + i, "rerun")["bpb"]
    fresh = [cfg.fresh_seed + i for i in range(cfg.fresh_seeds)]
    ref_fresh = {s: run(ref, s, "fresh")["bpb"] for s in fresh}
    win_fresh = ref_fresh if best == ref else {s: run(best, s, "fresh")["bpb"] for s in fresh}
    rerun_vals = list(reruns.values())
    noise_gain = sum(rerun_vals) / len(rerun_vals) - min(rerun_vals)
    summary: dict = {
        "config": asdict(cfg), "reference": ref.name, "winner": best.name, "winner_is_reference": best == ref,
        "trajectory": trajectory, "n_searched": len(seen),
        "search_gain": ref_search - best_score,  # what the search claims, on its one seed
        "noise_gain": noise_gain,  # mean of N reference reruns minus their best: seed picking alone
        "search_gain_minus_noise": ref_search - best_score - noise_gain,
        "reference_best_of_n": min(rerun_vals), "reference_reruns": bootstrap_ci(rerun_vals).as_dict(),
        "winner_search_bpb": best_score,
        "winner_fresh": bootstrap_ci(list(win_fresh.values())).as_dict(),
        "reference_fresh": bootstrap_ci(list(ref_fresh.values())).as_dict(),
        # ref - winner on fresh seeds: > 0 is a real improvement
        "fresh_gain": paired_difference(ref_fresh, win_fresh).as_dict(),
        # search score - fresh runs: < 0 means the search score flattered the winner
        "winners_curse": bootstrap_ci([best_score - w for w in win_fresh.values()]).as_dict(),
        # best of N reference reruns - winner's fresh runs: > 0 means the winner beats seed picking
        "winner_vs_best_of_n": bootstrap_ci([min(rerun_vals) - w for w in win_fresh.values()]).as_dict(),
    }
    if cfg.focal:
        summary["focal_vs_ce"] = {}
        ce_fresh = ref_fresh if ref.loss == "ce" else {s: run(Recipe("ce", ref.lr, ref.depth), s, "focal")["bpb"]
                                                       for s in fresh}
        for name in [v for v in cfg.losses if v.startswith("focal")]:
            rec = Recipe(name, ref.lr, ref.depth)
            got = win_fresh if rec == best else {s: run(rec, s, "focal")["bpb"] for s in fresh}
            summary["focal_vs_ce"][name] = paired_difference(got, ce_fresh).as_dict()  # focal - CE: > 0 is worse
    cost: dict[str, float] = {}
    for r in runs:
        cost[r["purpose"]] = cost.get(r["purpose"], 0.0) + r["flops"]
    summary["cost"] = {**cost, "total": sum(cost.values()), "runs": len(runs)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if cfg.artifact:
        seeds = sorted({r["seed"] for r in runs})
        folder = write_artifact(Path(cfg.artifact).parent, Path(cfg.artifact).name, summary, seeds=seeds,
                                stamp={**stamp, "seeds": seeds}, metrics={"runs": runs})
        summary["artifact_folder"] = str(folder)
    return summary


def markdown_table(summary: dict) -> str:
    f = summary["winner_fresh"]
    g = summary["fresh_gain"]
    lines = ["| quantity | value (bits per char) |", "|---|---|",
             f"| reference / winner | {summary['reference']} / {summary['winner']} |",
             f"| search's claimed gain (one seed) | {summary['search_gain']:.4f} |",
             f"| noise gain: mean - best of {summary['n_searched']} reference reruns | {summary['noise_gain']:.4f} |",
             f"| winner on fresh seeds | {f['mean']:.4f} [{f['low']:.4f}, {f['high']:.4f}] |",
             f"| fresh gain (reference - winner, paired) | {g['mean']:.4f} [{g['low']:.4f}, {g['high']:.4f}] |",
             f"| winner's curse (search score - fresh mean) | {summary['winners_curse']['mean']:.4f} |",
             f"| best of N reference reruns - winner (fresh) | {summary['winner_vs_best_of_n']['mean']:.4f} |"]
    for name, d in summary.get("focal_vs_ce", {}).items():
        lines.append(f"| {name} - ce (paired, fresh seeds) | {d['mean']:.4f} [{d['low']:.4f}, {d['high']:.4f}] |")
    lines.append(f"| cost (FLOPs): total / search | {summary['cost']['total']:.3g} / {summary['cost']['search']:.3g} |")
    return "\n".join(lines)
