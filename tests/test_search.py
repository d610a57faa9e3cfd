"""`forklens search`: the recipe losses, the one-choice mutations, and the bookkeeping of the winner's-curse control."""

import json
import random

import pytest
import torch
import torch.nn.functional as F

from forklens.cli import main
from forklens.errors import ConfigError
from forklens.experiments.search import Recipe, SearchConfig, mutate, recipe_loss


def test_recipe_losses():
    torch.manual_seed(0)
    logits, y = torch.randn(50, 7), torch.randint(0, 7, (50,))
    ce = F.cross_entropy(logits, y)
    assert torch.allclose(recipe_loss("ce", logits, y), ce)
    assert torch.allclose(recipe_loss("focal0", logits, y), ce, atol=1e-6)  # gamma 0 is cross-entropy
    assert torch.allclose(recipe_loss("ls0", logits, y), ce)
    p_t = logits.softmax(-1)[torch.arange(50), y]
    want = (-(1 - p_t) ** 2 * p_t.log()).mean()
    assert torch.allclose(recipe_loss("focal2", logits, y), want, atol=1e-6)
    assert recipe_loss("focal2", logits, y) < recipe_loss("focal0.5", logits, y) < ce
    smooth = 0.9 * ce + 0.1 * (-logits.log_softmax(-1).mean(-1)).mean()
    assert torch.allclose(recipe_loss("ls0.1", logits, y), smooth, atol=1e-6)
    with pytest.raises(ConfigError, match="unknown loss"):
        recipe_loss("mse", logits, y)


def test_mutations_change_exactly_one_choice_and_skip_seen():
    cfg = SearchConfig(losses=["ce", "focal2"], lrs=[1e-3, 3e-3], depths=[1, 2])
    ref = Recipe("ce", 3e-3, 2)
    seen = {ref}
    rng = random.Random(0)
    for _ in range(3):
        cand = mutate(ref, cfg, rng, seen)
        assert sum(a != b for a, b in zip((cand.loss, cand.lr, cand.depth), (ref.loss, ref.lr, ref.depth))) == 1
        seen.add(cand)
    assert mutate(ref, cfg, rng, seen) is None  # all three neighbours are taken


def test_search_cli_bookkeeping(tmp_path):
    out = tmp_path / "s"
    assert main(["search", "--quick", "--out", str(out), "--set", "flops_budget=3e8", "--set", "budget=3",
                 "--set", "val_traces=16", "--set", "losses=[ce, focal2]", "--set", "pool=64",
                 "--set", "hidden_size=16", "--set", "fresh_seeds=1"]) == 0
    s = json.loads((out / "summary.json").read_text())
    runs = [json.loads(x) for x in (out / "runs.jsonl").read_text().splitlines()]
    by = {}
    for r in runs:
        by.setdefault(r["purpose"], []).append(r)
    assert len(by["search"]) == s["n_searched"] == 3 and len(by["rerun"]) == 2
    assert [t["recipe"] for t in s["trajectory"]] == [r["recipe"] for r in by["search"]]
    ref_runs = [r["bpb"] for r in runs if r["recipe"] == s["reference"] and r["purpose"] in ("search", "rerun")]
    assert len(ref_runs) == 3 and s["reference_best_of_n"] == min(ref_runs)
    assert s["noise_gain"] == pytest.approx(sum(ref_runs) / 3 - min(ref_runs))
    win = min(r["bpb"] for r in by["search"])
    assert s["winner_search_bpb"] == win and s["search_gain"] == pytest.approx(ref_runs[0] - win)
    assert s["search_gain"] >= 0 and s["noise_gain"] >= 0
    if s["winner_is_reference"]:
        assert s["fresh_gain"]["mean"] == 0.0
    assert s["cost"]["runs"] == len(runs) and s["cost"]["total"] == pytest.approx(sum(r["flops"] for r in runs))
    assert set(s["focal_vs_ce"]) == {"focal2"} and s["focal_vs_ce"]["focal2"]["n"] == 1
    assert all(r["steps"] >= 1 and r["flops"] > 0 for r in runs)
    depth = {r["recipe"].split("/")[-1]: r["steps"] for r in runs}
    if "d1" in depth:
        assert depth["d1"] > depth["d2"]  # matched FLOPs: a shallower model trains longer
