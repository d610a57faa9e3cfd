"""`forklens experiment negation`: negation neglect (E043, arXiv:2605.13829) on the facts organism.

From one cached base organism (``facts/taught``: it has learned in-context negation), per seed:

1. ``n_claims`` new claims ``e9xx relation value`` about entities pretraining never saw (each with a
   "true" value, used by the corrections condition and as the two-way choice's other option);
2. per condition (:data:`forklens.tasks.facts.CONDITIONS`): SFT of the base on ``docs_per_claim``
   documents per claim written under that condition (``positive``, ``negated`` = the label before and
   after, ``dense`` = two labels on each side, ``local`` = "does not", ``corrections`` = the negated
   claim then the true value, ``negation-only`` = the labels and the entity without the claim; each
   beside one true sentence about a known entity), mixed with as many replayed pretraining documents;
   no question about a claim is ever trained on;
3. belief probes (:mod:`forklens.analysis.belief`: cloze, open question, yes/no, two-way choice in both
   orders) out of context, on the base (before) and on each fine-tuned model (after);
4. the in-context control: the base, no training, with one claim document of each condition in its
   context before the same questions.

The precondition is measured on the base: greedy accuracy on held-out in-context questions by document
kind (it must follow negation in context) and on closed-book questions about known entities whose facts
were only ever stated (knowledge extraction: what is trained in a document can be asked about).
Every belief number gets a percentile-bootstrap interval over seeds; differences between conditions are
paired by seed (:func:`paired_difference`). For the first seed, ``forklens diff`` of each fine-tuned model
against the base on the probes answered with the claim (:func:`diff_on_probes`).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from rich.console import Console

from forklens.analysis.belief import ProbeFormat, belief_shift, diff_on_probes, make_claim, probe_belief, summarize_belief
from forklens.analysis.curves import bootstrap_ci, paired_difference
from forklens.config import field
from forklens.experiments.arm_runs import begin
from forklens.organisms import get_family
from forklens.organisms.facts import FactsOrganismConfig, build_facts_organism
from forklens.policy import Policy
from forklens.report.artifacts import plots_dir, write_artifact
from forklens.report.plots import plot_bars
from forklens.runfolder import owned_rmtree
from forklens.tasks.facts import (CLAIM_ENTITIES, CONDITIONS, RELATIONS, FactsTask, belief_questions, claim_document,
                                  entity, statement, values)
from forklens.train.loop import TrainConfig, read_metrics
from forklens.train.run import train
from forklens.train.sources import SFTSource

console = Console(stderr=True)
FORMAT = ProbeFormat(prefix="#", sep=" ")
#: differences between conditions reported with paired intervals: name -> (a, b), meaning a - b
CONTRASTS = {
    "negated-positive": ("negated", "positive"),
    "negated-floor": ("negated", "negation-only"),
    "dense-negated": ("dense", "negated"),
    "local-negated": ("local", "negated"),
    "corrections-negated": ("corrections", "negated"),
    "corrections-floor": ("corrections", "negation-only"),
}


def _ft_default() -> TrainConfig:
    return TrainConfig(max_steps=60, learning_rate=1e-3, micro_batch_size=32, save_every=0)


@dataclass
class NegationConfig:
    organism: FactsOrganismConfig = field(default_factory=FactsOrganismConfig,
                                          help="The facts base organism config (the variant's overrides apply on top).")
    variant: str = field("taught", help="Variant of the facts family whose base is fine-tuned (taught, taught-long, "
                         "taught-words).")
    conditions: list[str] = field(default_factory=lambda: list(CONDITIONS), help="Fine-tuning conditions.")
    n_claims: int = field(20, ge=1, le=100, help="New claims per seed (entities e900..e999).")
    docs_per_claim: int = field(10, ge=1, help="Fine-tuning documents per claim.")
    replay: float = field(1.0, ge=0, help="Replayed pretraining documents per claim document.")
    ft: TrainConfig = field(default_factory=_ft_default, help="Fine-tuning (SFT on the documents).")
    batch_size: int = field(32, ge=1, help="Documents per fine-tuning step.")
    precondition_problems: int = field(200, ge=1, help="Held-out in-context questions of the precondition.")
    diff: bool = field(True, help="Diff each fine-tuned model against the base on the probes (first seed).")
    seeds: int = field(5, ge=1, help="Seeds (claims, documents and fine-tuning order; one shared base).")
    seed: int = field(0, help="First seed; seeds are seed, seed+1, ...")
    artifact: str = field("", help="Also write a stamped artifact folder here (e.g. results/negation).")


@dataclass(frozen=True)
class NewClaim:
    entity: str
    relation: str
    value: str  # the claim's object
    true_value: str  # the corrections condition's value; the two-way choice's other option


def draw_claims(n: int, seed: int) -> list[NewClaim]:
    rng = random.Random(f"negation-claims-{seed}")
    out = []
    for i in rng.sample(list(CLAIM_ENTITIES), n):
        r = rng.choice(list(RELATIONS))
        v, t = rng.sample(values(r), 2)
        out.append(NewClaim(entity(i), r, v, t))
    return out


def documents(condition: str, claims: list[NewClaim], task: FactsTask, k: int, seed: int) -> list[str]:
    """``k`` documents per claim under ``condition``, each beside a true sentence about a known entity."""
    rng = random.Random(f"negation-docs-{condition}-{seed}")
    filler = [statement(e, r, v) for (e, r), v in task.world.items()]
    return [claim_document(condition, c.entity, c.relation, c.value, c.true_value, rng, filler)
            for c in claims for _ in range(k)]


def probe_claims(claims: list[NewClaim], contexts: list[str] | None = None) -> list:
    """The claims in :mod:`forklens.analysis.belief`'s form, with their probes (and a context each)."""
    out = []
    for i, c in enumerate(claims):
        obj = {"id": f"{c.entity}-{c.relation}", "entity": c.entity, "relation": RELATIONS[c.relation][0],
               "object": c.value, "alternatives": [v for v in values(c.relation) if v != c.value],
               "questions": belief_questions(c.entity, c.relation, c.value, c.true_value)}
        if contexts is not None:
            obj["context"] = contexts[i]
        out.append(make_claim(obj, f"claim {i}", FORMAT))
    return out


def precondition(policy, task: FactsTask, n: int) -> dict:
    """Greedy accuracy of ``policy`` on held-out in-context questions (by document kind) and closed-book
    questions about known entities never asked about in pretraining."""
    out = {}
    for split, probs in (("in_context", task.problems("test")[:n]), ("closed_book", task.problems("closed"))):
        s = policy.sample([p.prompt for p in probs], temperature=0.0, max_new_tokens=5)
        ok = [task.verify(p, t) > 0 for p, t in zip(probs, s.texts)]
        by: dict[str, list[bool]] = {}
        for p, o in zip(probs, ok):
            by.setdefault(p.meta["kind"], []).append(o)
        out[split] = {"accuracy": sum(ok) / len(ok), "n": len(ok),
                      "by_kind": {k: {"accuracy": sum(v) / len(v), "n": len(v)} for k, v in by.items()}}
    return out


def fine_tune(base_dir: Path, docs: list[str], task: FactsTask, cfg: NegationConfig, seed: int, work: Path,
              progress: bool) -> tuple[Policy, dict]:
    rng = random.Random(f"negation-replay-{seed}")
    replay = [task.teacher_example(rng) for _ in range(round(cfg.replay * len(docs)))]
    examples = [("#", d) for d in docs] + replay
    policy = Policy.load(base_dir)
    res = train(policy, "sft", None, SFTSource(examples, cfg.batch_size, seed), replace(cfg.ft, seed=seed), work,
                name=f"fine-tune seed {seed}", progress=progress)
    return policy, {"steps": res.steps, "flops": res.flops, "wall_s": res.wall_s, "final_loss": res.last.get("loss"),
                    "documents": len(docs), "replay": len(replay)}


def run_negation(cfg: NegationConfig, out: str | Path, use_cache: bool = True, progress: bool = False) -> dict:
    out, seeds, stamp = begin(cfg, CONDITIONS, out, "negation", field="conditions")
    t0 = time.perf_counter()
    org = get_family("facts").variant_config(cfg.variant, base=cfg.organism)
    task = FactsTask(org.task)
    console.rule(f"[bold]facts/{cfg.variant} base organism")
    base_info = build_facts_organism(org, out / "base", use_cache=use_cache, progress=progress)
    base = Policy.load(out / "base")
    pre = precondition(base, task, cfg.precondition_problems)
    console.print(f"precondition: in-context {pre['in_context']['by_kind']}, closed-book "
                  f"{pre['closed_book']['accuracy']:.3f}", highlight=False)
    per_seed: list[dict] = []
    metrics: dict[str, list] = {}
    summary: dict = {}
    for s in seeds:
        claims = draw_claims(cfg.n_claims, s)
        before = summarize_belief(probe_belief(base, probe_claims(claims), FORMAT))
        row: dict = {"seed": s, "before": before, "after": {}, "in_context": {}, "shift": {}, "train": {},
                     "diff": {}}
        for cond in cfg.conditions:
            console.rule(f"[bold]seed {s}: {cond}")
            docs = documents(cond, claims, task, cfg.docs_per_claim, s)
            ctx = probe_claims(claims, [docs[i * cfg.docs_per_claim] for i in range(len(claims))])
            row["in_context"][cond] = summarize_belief(probe_belief(base, ctx, FORMAT, in_context=True))
            work = out / "train" / f"{cond}-seed{s}"
            owned_rmtree(work)
            tuned, info = fine_tune(out / "base", docs, task, cfg, s, work, progress)
            after = summarize_belief(probe_belief(tuned, probe_claims(claims), FORMAT))
            row["after"][cond], row["train"][cond] = after, info
            row["shift"][cond] = belief_shift(before, after)
            if cfg.diff and s == seeds[0]:
                d = diff_on_probes(base, tuned, probe_claims(claims), FORMAT, out_dir=out / "diff" / cond)
                row["diff"][cond] = {k: d.get(k) for k in ("n_tokens", "unshifted_frac", "reranked_frac",
                                                           "shifted_frac", "mean_rank_at_disagreement",
                                                           "kl_mean", "entropy_ratio")}
            metrics[f"{cond}_seed-{s}"] = read_metrics(work / "metrics.jsonl")
            owned_rmtree(work / "checkpoints")
            console.print(f"seed {s} {cond}: belief before {before['belief_rate']:.2f}, after "
                          f"{after['belief_rate']:.2f}, in context {row['in_context'][cond]['belief_rate']:.2f}",
                          highlight=False)
        per_seed.append(row)
        summary = _summary(cfg, per_seed, pre, base_info, seeds[: len(per_seed)], t0)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _plot(summary, out / "belief")
    summary["plot"] = ["plots/belief.png"]
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if cfg.artifact:
        folder = write_artifact(Path(cfg.artifact).parent, Path(cfg.artifact).name, summary, seeds=seeds, stamp=stamp,
                                metrics=metrics)
        _plot(summary, plots_dir(folder) / "belief", formats=("png",))
        console.print(f"wrote the stamped artifact {folder}", highlight=False)
    return summary


def _ci(vals: list[float]) -> dict:
    return bootstrap_ci(vals).as_dict()


def _summary(cfg: NegationConfig, rows: list[dict], pre: dict, base_info: dict, seeds: list[int], t0: float) -> dict:
    conds = {}
    for c in cfg.conditions:
        conds[c] = {
            "after": {"belief_rate": _ci([r["after"][c]["belief_rate"] for r in rows]),
                      "p_believed": _ci([r["after"][c]["p_believed_mean"] for r in rows]),
                      "by_kind": {k: _ci([r["after"][c]["by_kind"][k]["belief_rate"] for r in rows])
                                  for k in rows[0]["after"][c]["by_kind"]}},
            "shift": _ci([r["shift"][c]["belief_rate"] for r in rows]),
            "in_context": {"belief_rate": _ci([r["in_context"][c]["belief_rate"] for r in rows]),
                           "by_kind": {k: _ci([r["in_context"][c]["by_kind"][k]["belief_rate"] for r in rows])
                                       for k in rows[0]["in_context"][c]["by_kind"]}},
            "trained_minus_in_context": paired_difference(
                {r["seed"]: r["after"][c]["belief_rate"] for r in rows},
                {r["seed"]: r["in_context"][c]["belief_rate"] for r in rows}).as_dict(),
        }
    contrasts = {name: paired_difference({r["seed"]: r["after"][a]["belief_rate"] for r in rows},
                                         {r["seed"]: r["after"][b]["belief_rate"] for r in rows}).as_dict()
                 for name, (a, b) in CONTRASTS.items() if a in cfg.conditions and b in cfg.conditions}
    return {
        "variant": cfg.variant, "seeds": seeds, "n_seeds": len(rows),
        "precondition": pre,
        "base": {"cache_hit": base_info["cache_hit"], "pretrain_steps": base_info["steps"],
                 "pretrain_flops": base_info["flops"], "pretrain_wall_s": base_info["wall_s"]},
        "before": {"belief_rate": _ci([r["before"]["belief_rate"] for r in rows]),
                   "by_kind": {k: _ci([r["before"]["by_kind"][k]["belief_rate"] for r in rows])
                               for k in rows[0]["before"]["by_kind"]}},
        "conditions": conds, "contrasts": contrasts,
        "per_seed": rows, "total_wall_s": time.perf_counter() - t0, "config": asdict(cfg),
    }


def _plot(summary: dict, stem: Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    conds = summary["conditions"]
    groups = {"trained (out of context)": {c: v["after"]["belief_rate"] for c, v in conds.items()},
              "in context, no training": {c: v["in_context"]["belief_rate"] for c, v in conds.items()}}
    return plot_bars(groups, stem, title=f"belief rate per condition ({summary['n_seeds']} seeds, 95% CI); "
                     f"before: {summary['before']['belief_rate']['mean']:.2f}", ylabel="belief rate",
                     formats=formats)


def markdown_table(summary: dict) -> str:
    def cell(iv: dict) -> str:
        return f"{100 * iv['mean']:.0f}% [{100 * iv['low']:.0f}, {100 * iv['high']:.0f}]"

    pre = summary["precondition"]
    lines = [f"Facts organism, seeds {summary['seeds']}; base in-context accuracy by kind "
             + ", ".join(f"{k} {100 * v['accuracy']:.0f}%" for k, v in pre["in_context"]["by_kind"].items())
             + f"; closed-book {100 * pre['closed_book']['accuracy']:.0f}%; belief before "
             f"{cell(summary['before']['belief_rate'])}.", "",
             "| condition | belief after fine-tuning | shift | in context (no training) |", "| --- | --- | --- | --- |"]
    for c, v in summary["conditions"].items():
        lines.append(f"| {c} | {cell(v['after']['belief_rate'])} | {cell(v['shift'])} | "
                     f"{cell(v['in_context']['belief_rate'])} |")
    return "\n".join(lines) + "\n"
