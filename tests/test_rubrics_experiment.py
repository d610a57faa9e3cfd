"""The sort task, the policy/generator co-training and `forklens experiment rubrics` end to end at a tiny size."""

from __future__ import annotations

import json
import random

import pytest
import torch

from forklens.errors import ConfigError
from forklens.experiments.rubrics import (ARMS, DEFAULT_ARMS, RubricsConfig, fixed_rubric, labelled_pairs, markdown_table,
                                          run_rubrics)
from forklens.organisms import get_family
from forklens.organisms.sort import SortOrganismConfig
from forklens.tasks import get_task
from forklens.tasks.sort import SortConfig, SortTask
from forklens.train.loop import TrainConfig
from forklens.train.run import RLConfig
from forklens.train.sources import SamplingConfig


def test_sort_task_utility_teacher_and_problems():
    task = SortTask(SortConfig(n_digits=4, p_noise=0.0))
    assert task.answer_of("3102>") == "0123"
    assert task.utility("3102>", "0123") == 1.0
    assert task.utility("3102>", "0129") == 0.75
    assert task.utility("3102>", "01") == 0.5
    assert task.utility("3102>", "") == 0.0
    rng = random.Random(0)
    for _ in range(20):
        prompt, answer = task.teacher_example(rng)
        assert answer == "".join(sorted(prompt[:4])) and prompt.endswith(">")
    probs = task.problems("test")
    assert probs == SortTask(SortConfig(n_digits=4)).problems("test") and len(probs) == 128
    assert all(task.verify(p, p.answer) == 1.0 for p in probs)
    noisy = SortTask(SortConfig(n_digits=6, p_noise=1.0))
    rng = random.Random(1)
    wrong = sum(noisy.utility(*noisy.teacher_example(rng)) for _ in range(2000)) / 2000
    assert wrong == pytest.approx(0.1 + 0.9 * 0.0, abs=0.1)  # random digits: about 1 in 10 right by chance
    with pytest.raises(ConfigError, match="prompt_end"):
        SortTask(SortConfig(prompt_end="1"))
    with pytest.raises(ConfigError, match="split"):
        task.problems("dev")
    assert isinstance(get_task("sort"), SortTask)
    fam = get_family("sort")
    assert {v.role for v in fam.variants.values()} == {"precondition", "control"}


def test_fixed_rubric_is_generic_and_hackable():
    task = SortTask()
    r = fixed_rubric(task)
    assert r.names() == ["length=6", "nondecreasing", "from-prompt"]
    from forklens.rewards.rubric import Judge
    # a constant answer of the prompt's smallest digit meets every check yet is mostly wrong
    assert Judge().score("530912>", "000000", r) == 1.0 and task.utility("530912>", "000000") == 1 / 6


def test_labelled_pairs_put_the_higher_utility_first():
    task = SortTask(SortConfig(n_digits=3))
    pairs = labelled_pairs(task, ["321>", "111>"], [["123", "129", "555", "124"], ["111", "111"]])
    assert [(p.chosen, p.rejected) for p in pairs] == [("123", "129"), ("124", "555")]
    assert pairs[0].label == 1.0


def _tiny() -> RubricsConfig:
    org = SortOrganismConfig(task=SortConfig(n_digits=4, n_train=16, n_test=6))
    org.model.hidden_size, org.model.intermediate_size = 32, 64
    org.pretrain = TrainConfig(max_steps=8, learning_rate=3e-3, micro_batch_size=64, save_every=0)
    rl = RLConfig(train=TrainConfig(max_steps=3, learning_rate=1e-3, micro_batch_size=64, save_every=0),
                  sampling=SamplingConfig(prompts_per_step=2, group_size=2, max_new_tokens=5))
    cfg = RubricsConfig(organism=org, rl=rl, generator_rl=rl, rm_pairs=8, eval_samples=1, seeds=1)
    cfg.rubrics.lag = 1
    cfg.rm.epochs = 1
    return cfg


def test_experiment_runs_every_arm_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("FORKLENS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    cfg = _tiny()
    assert cfg.arms == list(DEFAULT_ARMS) and "oracle" not in cfg.arms
    cfg.arms = list(ARMS)
    summary = run_rubrics(cfg, out)
    assert set(summary["arms"]) == set(ARMS)
    per = {a: summary["arms"][a]["per_seed"]["0"] for a in ARMS}
    for a in ARMS:
        assert 0.0 <= per[a]["utility"] <= 1.0 and 0.0 <= per[a]["pair_accuracy"] <= 1.0
        assert per[a]["total_flops"] == pytest.approx(per[a]["policy_flops"] + per[a]["reward_flops"])
    # the generator takes one step per policy step unless frozen; its cost is counted
    assert per["trained"]["generator_steps"] == 3 and per["shuffled"]["generator_steps"] == 3
    assert per["frozen"]["generator_steps"] == 0 and per["frozen"]["generator_flops"] == 0.0
    assert per["trained"]["reward_flops"] > per["frozen"]["reward_flops"] > 0.0
    assert per["fixed"]["reward_flops"] == 0.0 and per["scalar"]["reward_flops"] > 0.0
    assert per["oracle"]["pair_accuracy"] == 1.0  # the true utility orders its own benchmark perfectly
    assert "trained_vs_scalar" in summary["diffs"] and "shuffled_vs_frozen" in summary["diffs"]
    assert json.loads((out / "summary.json").read_text())["bench_pairs"] == summary["bench_pairs"]
    assert "| trained |" in markdown_table(summary)
    assert any("rubric/generator_reward" in row for row in summary["curves"]["trained"])
    with pytest.raises(ConfigError, match="unknown arms"):
        run_rubrics(RubricsConfig(arms=["nope"]), tmp_path / "bad")


def test_old_policy_is_the_snapshot_lag_steps_back(tmp_path, monkeypatch):
    monkeypatch.setenv("FORKLENS_CACHE", str(tmp_path / "cache"))
    from forklens.organisms.sort import build_sort_organism
    from forklens.policy import Policy
    from forklens.rewards.rubric import position_rubric
    from forklens.train.rubrics import RubricCoTraining, RubricTrainingConfig

    cfg = _tiny()
    build_sort_organism(cfg.organism, tmp_path / "base", progress=False)
    task = SortTask(cfg.organism.task)
    policy = Policy.load(tmp_path / "base")
    co = RubricCoTraining(policy, Policy.load(tmp_path / "base"), Policy.load(tmp_path / "base"), task,
                          task.problems("train"), lambda t: position_rubric(t, "0123456789"),
                          RubricTrainingConfig(generator="frozen", lag=2), cfg.generator_rl, tmp_path / "w")
    weights = []
    for step in range(1, 5):
        with torch.no_grad():
            for p in policy.model.parameters():
                p.add_(0.01)
        co.snapshot(step)
        weights.append(next(policy.model.parameters()).detach().clone())
    assert sorted(co.snapshots) == [2, 3, 4]
    assert co.load_old(4) == 2
    assert torch.equal(next(co.old.model.parameters()), weights[1])
    assert co.load_old(1) == 2  # older than any kept snapshot: the oldest kept


def test_paired_arm_diffs_pairs_by_seed_and_skips_missing_arms():
    from forklens.analysis.curves import paired_arm_diffs

    per = {"a-x": {0: {"u": 0.5}, 1: {"u": 0.7}}, "b": {0: {"u": 0.25}, 1: {"u": 0.5}, 2: {"u": 9.0}}, "c": {}}
    d = paired_arm_diffs(per, [("a-x", "b"), ("a-x", "c")], ["u"])
    assert list(d) == ["a_x_vs_b"]
    assert d["a_x_vs_b"]["u"]["mean"] == pytest.approx(0.225)
    assert d["a_x_vs_b"]["u"]["low"] == pytest.approx(0.2) and d["a_x_vs_b"]["u"]["high"] == pytest.approx(0.25)


def test_uninformed_variant_and_a_reproducible_scalar_arm(tmp_path, monkeypatch):
    """`variant=uninformed` builds the control's base (teacher p_noise 1); the scalar arm, its reward head now
    drawn from the run's seed, gives the same numbers twice."""
    monkeypatch.setenv("FORKLENS_CACHE", str(tmp_path / "cache"))
    cfg = _tiny()
    cfg.variant, cfg.arms = "uninformed", ["scalar"]
    torch.manual_seed(123)
    first = run_rubrics(cfg, tmp_path / "a")
    torch.manual_seed(456)  # the global RNG no longer reaches the head
    second = run_rubrics(cfg, tmp_path / "b")
    assert first["variant"] == "uninformed"
    assert json.loads((tmp_path / "a" / "base" / "organism.json").read_text())["config"]["task"]["p_noise"] == 1.0
    a, b = first["arms"]["scalar"]["per_seed"]["0"], second["arms"]["scalar"]["per_seed"]["0"]
    for key in ("utility", "utility_greedy", "pair_accuracy", "rm_train_pair_accuracy"):
        assert a[key] == b[key], key
    assert markdown_table(first).startswith("sort/uninformed organism")
    with pytest.raises(ConfigError, match="variant"):
        run_rubrics(RubricsConfig(variant="nope"), tmp_path / "bad")
