"""The rules task, the skills family's proposer and `forklens experiment skills` end to end at a tiny size."""

from __future__ import annotations

import json
import random

import pytest

from forklens.config import load_config, packaged_config
from forklens.errors import ConfigError
from forklens.experiments.skills import SkillsConfig, run_skills
from forklens.organisms import get_family
from forklens.organisms.skills import diagnose, propose_edits, sequence_edits
from forklens.tasks import get_task
from forklens.tasks.rules import (HARNESSES, MARK, RulesConfig, RulesTask, Target, effective_rules, execute, harness,
                                  mask_skill, split_answer)
from forklens.train.skill_opt import Edit, apply_edits


def test_execute_orders_maps_and_formats():
    assert execute("123", {"o": "k", "m": "0", "f": "p"}) == "123"
    assert execute("123", {"o": "r", "m": "1", "f": "c"}) == "(432)"
    assert execute("189", {"o": "l", "m": "3", "f": "d"}, mark=True) == "[124]."
    assert split_answer("(432).") == ("432", "c", True)
    assert split_answer("[43")[1] == "?" and split_answer("43)") == ("43)", "?", False)


def test_last_line_wins_and_mask_frees_the_slot():
    assert effective_rules(["o=r", "m=3", "o=l", "f=?"]) == {"o": "l", "m": "3", "f": None}
    assert effective_rules(mask_skill(["o=r", "m=3"])) == {"o": None, "m": None, "f": None}
    assert mask_skill(["o=r", "junk"]) == ["o=?", "junk"]


def test_harnesses_place_the_skill_differently():
    a, b = harness("A", ["o=r", "m=1"]).apply("123"), harness("B", ["o=r", "m=1"]).apply("123")
    assert a == "o=r\nm=1\n>123=" and b == "<123|o=r\nm=1;"
    assert harness("A").apply("123") == "\n>123="
    with pytest.raises(ConfigError):
        harness("D")
    with pytest.raises(ConfigError):
        RulesConfig(harnesses="AD")


def test_teacher_follows_its_lines_and_deaf_teacher_does_not():
    task = RulesTask(RulesConfig(p_mark=0.0, p_free=0.0))
    rng = random.Random(0)
    followed = 0
    for _ in range(200):
        prompt, answer = task.teacher_example(rng)
        assert set(prompt) <= set(task.alphabet) and set(answer) <= set(task.alphabet)
        text = prompt[1:].split("|")[1][:-1] if prompt.startswith("<") else prompt.split(">")[0].rstrip("\n")
        x = prompt[1:].split("|")[0] if prompt.startswith("<") else prompt.split(">")[1][:-1]
        rules = {s: v or {"o": "k", "m": "0", "f": "p"}[s] for s, v in effective_rules(text.split("\n")).items()}
        followed += answer == execute(x, rules)
    assert followed == 200
    deaf = RulesTask(RulesConfig(p_mark=0.0, p_follow=0.0, p_free=1.0))
    prompt, answer = deaf.teacher_example(random.Random(3))
    x = prompt.split(">")[-1][:-1] if ">" in prompt else prompt[1:4]
    assert answer != execute(x, {"o": "k", "m": "0", "f": "p"})


def test_target_problems_are_deterministic_and_verified_exactly():
    target = Target.draw(random.Random(1))
    assert all(v != {"o": "k", "m": "0", "f": "p"}[s] for s, v in target.rules)
    task = RulesTask(RulesConfig(n_test=5), target, seed=2)
    probs = task.problems("test")
    assert probs == RulesTask(RulesConfig(n_test=5), target, seed=2).problems("test")
    p = probs[0]
    assert task.verify(p, p.answer) == 1.0 and task.verify(p, p.answer + MARK) == 0.0
    marked = RulesTask(RulesConfig(n_test=5), Target(target.rules, mark=True), seed=2).problems("test")[0]
    assert marked.answer == p.answer + MARK
    low = RulesTask(RulesConfig(n_test=5, mark_credit=0.25), Target(target.rules, mark=True), seed=2)
    assert low.verify(marked, p.answer) == 0.25 and low.verify(marked, marked.answer) == 1.0
    assert low.verify(marked, "(" + p.answer) == 0.0
    with pytest.raises(ConfigError):
        RulesTask().problems("test")
    assert isinstance(get_task("rules"), RulesTask)


def test_diagnose_names_the_slot_that_is_wrong():
    rng = random.Random(0)
    assert diagnose([], "123", "(123)", rng) == [("f", "c")]
    assert diagnose(["m=2"], "345", "456", rng) == [("m", "3")]  # current map 2 + shift 1
    assert diagnose(["m=3"], "345", "456", rng) == []  # map 3 + 1 is not a rule: nothing to propose
    assert diagnose([], "[12", "(234)", rng) == [("f", "c")]  # malformed output: only the format is read
    assert diagnose([], "1a3", "234", rng) == [("f", "p")]
    (slot, value), = diagnose([], "123", "321", rng)
    assert slot == "o" and value in "rl"


def test_proposer_ranks_by_support_and_skips_rejected_edits():
    fails = [("123", "(123)")] * 3 + [("123", "234")]
    edits = propose_edits(["o=r"], [], random.Random(0), fails, p_noise=0.0)
    assert edits == [Edit("add", 1, "f=c"), Edit("add", 2, "m=1")]
    assert apply_edits(["o=r"], edits) == ["o=r", "f=c", "m=1"]
    again = propose_edits(["o=r"], [Edit("add", 1, "f=c")], random.Random(0), fails, p_noise=0.0)
    assert again == [Edit("add", 1, "m=1")]
    assert propose_edits(["o=r"], [], random.Random(0), [], p_noise=0.0) == []


def test_family_registered_with_a_control():
    fam = get_family("skills")
    assert {v.role for v in fam.variants.values()} == {"precondition", "control"}
    assert set(fam.variants) == {"executor", "executor-adjacent", "deaf", "adjacent-deaf"}
    assert fam.variant_config("deaf").task.p_follow == 0.0
    adj, adj_deaf = fam.variant_config("executor-adjacent"), fam.variant_config("adjacent-deaf")
    assert (adj_deaf.task.p_follow, adj_deaf.task.harnesses) == (0.0, adj.task.harnesses)
    assert set(HARNESSES) == {"A", "B", "C"}


def test_transfer_harness_must_be_pretrained(tmp_path):
    cfg = load_config(SkillsConfig, packaged_config("skills-quick"))
    cfg.transfer_harness = "C"  # skills/executor pretrains on A and B only
    with pytest.raises(ConfigError, match="transfer_harness"):
        run_skills(cfg, tmp_path / "run")
    assert get_family("skills").variant_config("executor-adjacent").task.harnesses == "AC"
    assert harness("C", ["o=r"]).apply("123") == "o=r;<123|"


def test_experiment_end_to_end_tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("FORKLENS_CACHE", str(tmp_path / "cache"))
    cfg = load_config(SkillsConfig, packaged_config("skills-quick"))
    cfg.organism.pretrain.max_steps = 5
    cfg.organism.task.n_test = 4
    cfg.opt.steps = 2
    cfg.diff_problems = 2
    summary = run_skills(cfg, tmp_path / "run", progress=False)
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["seeds"] == [0] and summary["n_seeds"] == 1
    row = summary["per_seed"][0]
    assert set(row["A"]) == set(row["B"]) == {"none", "skillopt", "gate-off", "unbounded", "random", "masked", "oracle"}
    assert row["skills"]["masked"]["skill"] == mask_skill(row["skills"]["skillopt"]["skill"])
    assert row["skills"]["skillopt"]["evaluations"] >= 1
    for kind in ("low", "high"):
        e = row["e088"][kind]
        # the harness grid (greedy + 1 temperature x best-of {1, 2} on 8 selection inputs) and GRPO (2 x 4 x 4)
        assert e["search"]["calls"] == 8 * (1 + 1 + 2)
        assert e["calls"]["weights"] - e["calls"]["scaffold"] == 2 * 4 * 4 - 8 * 4
        assert e["tokens"]["overlap"]["n_tokens"] == e["tokens"]["rl"]["tokens"] == e["tokens"]["skill"]["tokens"]
    assert summary["e078"]["contrasts"]["transfer"]["n"] == 1
    assert (tmp_path / "run" / "plots" / "skills.png").is_file() or (tmp_path / "run" / "skills.png").is_file()


def test_sequenced_edits_follow_their_lines_past_deletes():
    skill = ["o=r", "m=1", "f=c"]
    edits = sequence_edits(3, [Edit("delete", 0), Edit("replace", 2, "f=d"), Edit("add", 3, "m=2"),
                               Edit("replace", 0, "o=l")])
    assert edits == [Edit("delete", 0), Edit("replace", 1, "f=d"), Edit("add", 2, "m=2")]
    assert apply_edits(skill, edits) == ["m=1", "f=d", "m=2"]
    for k in range(len(edits) + 1):  # every prefix applies (an edit budget takes a prefix)
        apply_edits(skill, edits[:k])


def test_proposals_always_apply_whatever_the_noise():
    rng = random.Random(5)
    fails = [("123", "(321)"), ("123", "[234]"), ("456", "567"), ("123", "312")]
    for trial in range(300):
        skill = [rng.choice(["o=r", "m=1", "f=c", "o=?", "m=3"]) for _ in range(rng.randrange(0, 5))]
        edits = propose_edits(skill, [], random.Random(trial), fails, p_noise=0.9)
        apply_edits(skill, edits)  # raises ConfigError on an out-of-range edit
