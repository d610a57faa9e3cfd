"""End to end: `forklens demo` on a reduced recipe; the RL model must beat the base by 15 points."""

import json

import pytest

from forklens.cli import main


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FORKLENS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    args = ["demo", "--quick", "--out", str(out), "--set", "diff_prompts=20"]
    assert main(args) == 0
    s = json.loads((out / "summary.json").read_text())
    for key in ("task", "seed"):
        assert key in s
    assert s["task"] == "arith"
    assert 0 <= s["base"]["accuracy"] <= 1 and 0 <= s["rl"]["accuracy"] <= 1
    assert s["rl"]["accuracy"] - s["base"]["accuracy"] >= 0.15
    assert s["train"]["steps"] == 30 and s["train"]["flops"] > 0 and s["train"]["wall_s"] > 0
    for d in ("base", "rl"):
        assert (out / d / "config.json").is_file() and (out / d / "tokenizer.json").is_file()
    assert s["base"]["cache_hit"] is False
    # the second run reuses the cached base organism
    assert main(args + ["--overwrite", "--set", "rl.train.max_steps=2", "--set", "diff=false"]) == 0
    s2 = json.loads((out / "summary.json").read_text())
    assert s2["base"]["cache_hit"] is True and s2["base"]["accuracy"] == s["base"]["accuracy"]
