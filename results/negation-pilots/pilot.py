# The organism-check pilot of issue 18 part 1 (see docs/organisms.md, facts): run as
#   PYTHONPATH=src python results/negation-pilots/pilot.py NAME BASE_VARIANT [OVERRIDES...]
# from the repository root; each run appends one line to /tmp/neg2/pilots.jsonl (collected here).
"""Pilot (organism check only): build a facts base = variant + overrides, measure greedy in-context and
closed-book accuracy, and the same in-context questions with the fresh entities renamed to claim-range
entities (e900..e999, never in pretraining)."""
import json, re, sys, time, random
from pathlib import Path
from forklens.organisms import get_family
from forklens.organisms.facts import build_facts_organism
from forklens.experiments.negation import precondition
from forklens.policy import Policy
from forklens.tasks.facts import FactsTask
from forklens.tasks.base import Problem

name, variant, *ov = sys.argv[1:]
cfg = get_family("facts").variant_config(variant, overrides=ov)
out = Path(f"/tmp/neg2/pilot-{name}")
t0 = time.time()
info = build_facts_organism(cfg, out / "base", progress=False)
print("built", info["steps"], "steps", round(info["wall_s"]), "s", "loss", info.get("final_loss"), flush=True)
task = FactsTask(cfg.task)
pol = Policy.load(out / "base")
pre = precondition(pol, task, 200)
rng = random.Random(7)
ren = []
for p in task.problems("test")[:200]:
    ents = sorted(set(re.findall(r"e\d{3}", p.prompt)))
    m = dict(zip(ents, [f"e{i}" for i in rng.sample(range(900, 1000), len(ents))]))
    f = lambda s: re.sub(r"e\d{3}", lambda x: m[x.group()], s)
    ren.append(Problem(id=p.id, prompt=f(p.prompt), answer=p.answer, meta=p.meta))
s = pol.sample([p.prompt for p in ren], temperature=0.0, max_new_tokens=3)
by = {}
for p, t in zip(ren, s.texts):
    by.setdefault(p.meta["kind"], []).append(task.verify(p, t) > 0)
res = {"name": name, "overrides": ov, "in_context": {k: round(v["accuracy"], 3) for k, v in pre["in_context"]["by_kind"].items()},
       "closed_book": round(pre["closed_book"]["accuracy"], 3),
       "claim_entities_in_context": {k: round(sum(v) / len(v), 3) for k, v in by.items()},
       "build_s": round(info["wall_s"]), "steps": info["steps"], "final_loss": info.get("final_loss")}
print(json.dumps(res), flush=True)
with open("/tmp/neg2/pilots.jsonl", "a") as fh:
    fh.write(json.dumps(res) + "\n")
