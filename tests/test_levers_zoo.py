"""`forklens experiment levers-zoo`: the plan, the arms' settings, the noisy reward, the paired statistics and
a tiny end-to-end run whose artifact has the fields the registered predictions name."""

import json

import pytest

from forklens.cli import main
from forklens.errors import ConfigError
from forklens.experiments.levers_zoo import (LeversZooConfig, Plan, arm_source, contrasts, curve_summary, gains, make_plan,
                                             run_arm, variant_summary)
from forklens.organisms import get_family
from forklens.report.artifacts import load_artifact
from forklens.report.predictions import load_predictions, verdict
from forklens.runfolder import claim_folder


def _cfg(**kw) -> LeversZooConfig:
    cfg = LeversZooConfig()
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def test_default_plan_covers_the_registered_predictions():
    plan = make_plan(LeversZooConfig())
    assert plan.variants["noisy-reward"] == ("agent-horizon", "noisy-reward")
    assert plan.arms == {"long": ["grpo", "milestones"], "short": ["grpo", "milestones"], "noisy-reward": ["grpo", "snr"],
                         "predictable": ["grpo", "echo"], "random": ["grpo", "echo"]}
    assert plan.contrasts == {"milestones": ("long", "short"), "echo": ("predictable", "random")}


@pytest.mark.parametrize("kw, match", [
    ({"variants": []}, "at least one"),
    ({"variants": ["agent-horizon"]}, "FAMILY/VARIANT"),
    ({"variants": ["agent-horizon/huge"]}, "no variant 'huge'"),
    ({"variants": ["agent-horizon/long", "agent-horizon/long"]}, "twice"),
    ({"arms": ["medium:snr"]}, "not in variants"),
    ({"arms": ["long:grpo"]}, "unknown lever"),
    ({"arms": ["long:dance"]}, "unknown lever"),
    ({"contrasts": ["snr:long/short"]}, "has no 'snr' arm"),
    ({"contrasts": ["milestones:long"]}, "LEVER:PRE/CTL"),
    ({"contrasts": ["milestones:long/short", "milestones:short/long"]}, "contrasted twice"),
])
def test_bad_plans_fail_before_anything_runs(kw, match):
    with pytest.raises(ConfigError, match=match):
        make_plan(_cfg(**kw))


def _setup(variant):
    fam = get_family("agent-horizon")
    org = fam.variant_config(variant, overrides=["agent.n_train=4", "agent.n_test=2"])
    return org, fam.task(org)


def test_arm_settings():
    _, task = _setup("long")
    cfg = LeversZooConfig()
    loss, src = arm_source("grpo", task, cfg, 10, 0.0, seed=0)
    assert (loss.env_loss_coef, src.config.snr_filter_rho, src.config.T, len(src.reward_fns)) == (0.0, 0.0, 10, 1)
    loss, src = arm_source("echo", task, cfg, 10, 0.0, seed=0)
    assert loss.env_loss_coef == 0.05 and src.config.snr_filter_rho == 0.0
    loss, src = arm_source("snr", task, cfg, 10, 0.0, seed=0)
    assert src.config.snr_filter_rho == 0.9 and loss.env_loss_coef == 0.0
    _, src = arm_source("milestones", task, cfg, 10, 0.0, seed=0)
    assert [f.__name__ for f in src.reward_fns][0] == "agent_verifier" and len(src.reward_fns) == 2
    with pytest.raises(ConfigError, match="unknown arm"):
        arm_source("dance", task, cfg, 10, 0.0, seed=0)


def test_noisy_variant_trains_on_flipped_rewards_and_milestones_reward_partial_chains():
    org, task = _setup("noisy-reward")
    assert org.reward_flip == 0.2
    problems = task.problems("train")
    gold = ["".join(text for text, _ in task.gold_trajectory(p)) for p in problems]
    half = ["".join(text for text, _ in task.trajectory(p, p.meta["depth"] // 2)) for p in problems]
    cfg = LeversZooConfig()
    _, clean = arm_source("grpo", task, cfg, 10, 0.0, seed=0)
    assert clean.rewards(problems, gold)[0].tolist() == [1.0] * len(problems)
    _, always = arm_source("grpo", task, cfg, 10, 1.0, seed=0)  # every value flipped
    assert always.rewards(problems, gold)[0].tolist() == [0.0] * len(problems)
    assert always.rewards(problems, half)[0].tolist() == [1.0] * len(problems)
    _, ms = arm_source("milestones", task, cfg, 10, 0.0, seed=0)
    total, parts = ms.rewards(problems, half)
    expected = [(p.meta["depth"] // 2) / p.meta["depth"] for p in problems]  # wrong answer, half the milestones
    assert total.tolist() == pytest.approx(expected, abs=1e-6)


def test_paired_gains_and_contrast():
    rows = lambda accs: {s: {"accuracy": a, "flops": 1.0} for s, a in enumerate(accs)}  # noqa: E731
    pre = {"grpo": rows([0.10, 0.20, 0.30]), "milestones": rows([0.15, 0.30, 0.30])}
    ctl = {"grpo": rows([0.50, 0.50, 0.50]), "milestones": rows([0.50, 0.55, 0.45])}
    assert gains(pre, "milestones") == pytest.approx({0: 0.05, 1: 0.10, 2: 0.0})
    s = variant_summary(pre, 0.95)
    assert s["paired"]["milestones-grpo"]["mean"] == pytest.approx(0.05)
    assert s["arms"]["grpo"]["per_seed"]["accuracy"] == [0.10, 0.20, 0.30]
    assert s["arms"]["milestones"]["accuracy"]["mean"] == pytest.approx(0.25)
    plan = Plan({"long": ("f", "long"), "short": ("f", "short")}, {"long": ["grpo", "milestones"],
                                                                   "short": ["grpo", "milestones"]},
                {"milestones": ("long", "short")})
    out, pairs = contrasts(plan, {"long": pre, "short": ctl}, 0.95)
    # per seed: 0.05 - 0, 0.10 - 0.05, 0.0 - (-0.05): every seed 0.05, so the interval is that point
    iv = out["milestones-grpo"]
    assert (iv["mean"], iv["low"], iv["high"], iv["level"]) == pytest.approx((0.05, 0.05, 0.05, 0.95))
    assert pairs == {"milestones-grpo": {"precondition": "long", "control": "short"}}
    assert contrasts(plan, {"long": pre}, 0.95) == ({}, {})  # the control not run yet


def test_levers_zoo_end_to_end_tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("FORKLENS_CACHE", str(tmp_path / "cache"))
    art_dir = tmp_path / "results" / "lz"
    sets = ["variants=[agent-tools/predictable,agent-tools/random]", "arms=[predictable:echo,random:echo]",
            "contrasts=[echo:predictable/random]",
            "overrides=[pretrain.max_steps=2,model.num_hidden_layers=1,model.hidden_size=32,agent.n_train=8,"
            "agent.n_test=3]", "rl.train.max_steps=1", "rl.sampling.prompts_per_step=2", "rl.sampling.group_size=2",
            "eval_samples=2", "seeds=2", "artifact=" + str(art_dir)]
    args = ["experiment", "levers-zoo", "--out", str(tmp_path / "run")]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    art = load_artifact(art_dir)
    s = art.summary
    assert set(s["variants"]) == {"predictable", "random"} and s["seeds"] == [0, 1]
    pv = s["variants"]["predictable"]
    assert pv["T"] == 4 and pv["role"] == "precondition" and pv["test"] == {"questions": 3, "samples": 2}
    assert len(pv["arms"]["echo"]["per_seed"]["accuracy"]) == 2
    assert {"mean", "low", "high", "level"} <= set(pv["paired"]["echo-grpo"])
    assert s["contrast_pairs"] == {"echo-grpo": {"precondition": "predictable", "control": "random"}}
    assert (art_dir / "plots" / "lever_gains.png").is_file()
    assert json.loads((art_dir / "metrics" / "random-echo-seed1.json").read_text())
    preds = load_predictions("results/predictions/levers-agent-zoo.yaml")
    for p in preds.predictions:
        if p.id.startswith("echo"):
            assert verdict(p, art).outcome in ("supported", "refuted", "inconclusive")


@pytest.mark.parametrize("names, long_depths, short_depths, bridge, p_right", [
    (("long-mixed", "noisy-mixed", "short-mixed"), set(range(6, 11)), set(range(1, 5)), list(range(1, 11)), 0.7),
    (("sparse-hops", "noisy-hops", "dense-hops"), {3, 4}, {1, 2}, [1, 2, 3, 4], 0.35),
])
def test_horizon_variant_triples_share_one_base_and_differ_in_their_splits(names, long_depths, short_depths, bridge,
                                                                            p_right):
    from forklens.organisms.agent import AgentOrganismConfig, agent_organism_key

    fam = get_family("agent-horizon")
    keys, got = set(), {}
    for v in names:
        c = fam.variant_config(v, overrides=["agent.n_train=20", "agent.n_test=20"])
        keys.add(agent_organism_key(AgentOrganismConfig(agent=c.agent, model=c.model, pretrain=c.pretrain,
                                                        batch_size=c.batch_size, seed=c.seed)))
        task = fam.task(c)
        got[v] = ({p.meta["depth"] for p in task.problems("train")}, {p.meta["depth"] for p in task.problems("test")},
                  c.reward_flip)
        assert c.agent.bridge_depths == bridge and c.agent.p_right == p_right
    assert len(keys) == 1  # one base for all three
    sparse, noisy, dense = names
    assert got[sparse][:2] == got[noisy][:2] and got[sparse][0] <= long_depths and got[sparse][1] <= long_depths
    assert got[dense][0] <= short_depths and got[dense][1] <= short_depths
    assert [got[v][2] for v in names] == [0.0, 0.2, 0.0]


def test_gains_over_the_base_and_curves_paired_by_seed():
    rows = {"grpo": {0: {"accuracy": 0.30, "curve": [[0, 0.25], [10, 0.30], [20, 0.40]]},
                     1: {"accuracy": 0.50, "curve": [[0, 0.20], [10, 0.35], [20, 0.50]]}},
            "milestones": {0: {"accuracy": 0.20}, 1: {"accuracy": 0.40}}}  # no curve: none summarised
    s = variant_summary(rows, 0.95, base={0: 0.25, 1: 0.20})
    assert s["vs_base"]["grpo"]["mean"] == pytest.approx((0.05 + 0.30) / 2)
    assert (s["vs_base"]["milestones"]["low"], s["vs_base"]["milestones"]["high"]) == pytest.approx((-0.05, 0.20))
    assert "curve" not in s["arms"]["grpo"] and set(s["arms"]["grpo"]["per_seed"]) == {"accuracy"}
    c = s["curves"]["grpo"]
    assert c["steps"] == [0, 10, 20] and c["mean"] == pytest.approx([0.225, 0.325, 0.45])
    assert c["per_seed"] == {"0": [0.25, 0.30, 0.40], "1": [0.20, 0.35, 0.50]}
    assert all(lo <= m <= hi for lo, m, hi in zip(c["low"], c["mean"], c["high"]))
    assert set(s["curves"]) == {"grpo"} and "vs_base" not in variant_summary(rows, 0.95)
    rows["grpo"][0]["train_accuracy"], rows["grpo"][1]["train_accuracy"] = 0.60, 0.40
    rows["milestones"][0]["train_accuracy"], rows["milestones"][1]["train_accuracy"] = 0.30, 0.30
    t = variant_summary(rows, 0.95, base={0: 0.25, 1: 0.20}, base_train={0: 0.30, 1: 0.30})
    # training-question gains: grpo 0.30, 0.10; milestones 0, 0; held-out gains: grpo 0.05, 0.30; milestones -0.05, 0.20
    assert t["vs_base_train"]["grpo"]["mean"] == pytest.approx(0.20)
    assert (t["vs_base_train"]["milestones"]["low"], t["vs_base_train"]["milestones"]["high"]) == (0.0, 0.0)
    assert t["gap"]["grpo"]["mean"] == pytest.approx(((0.30 - 0.05) + (0.10 - 0.30)) / 2)
    assert t["gap"]["milestones"]["mean"] == pytest.approx(((0 + 0.05) + (0 - 0.20)) / 2)
    assert t["arms"]["grpo"]["train_accuracy"]["mean"] == pytest.approx(0.50)
    # only the steps every seed reached
    assert curve_summary({0: [[0, 0.1], [5, 0.2]], 1: [[0, 0.3]]}, 0.95)["steps"] == [0]


def test_the_curve_does_not_change_the_training_run(tmp_path, monkeypatch):
    monkeypatch.setenv("FORKLENS_CACHE", str(tmp_path / "cache"))
    fam = get_family("agent-horizon")
    org = fam.variant_config("sparse-hops", overrides=["model.hidden_size=32", "model.intermediate_size=64",
                                                       "model.num_hidden_layers=1", "pretrain.max_steps=3",
                                                       "agent.n_train=8", "agent.n_test=3"])
    task = fam.task(org)
    run = tmp_path / "run"
    claim_folder(run, "experiment-levers-zoo")  # run_arm clears its work folder: one forklens owns
    fam.build(org, run / "base", progress=False)
    cfg = LeversZooConfig(eval_problems=3, eval_samples=2, curve_problems=2)
    cfg.rl.train.max_steps, cfg.rl.sampling.prompts_per_step, cfg.rl.sampling.group_size = 3, 2, 2
    plain, m_plain = run_arm("milestones", run / "base", task, cfg, 4, 0.0, 1, run / "a", False)
    cfg.curve_every = 2
    curved, m_curved = run_arm("milestones", run / "base", task, cfg, 4, 0.0, 1, run / "b", False)
    assert "curve" not in plain and [step for step, _ in curved["curve"]] == [0, 2, 3]  # 0, every 2, the last
    assert curved["accuracy"] == plain["accuracy"] and curved["flops"] == plain["flops"]
    assert [m["reward_mean"] for m in m_curved] == [m["reward_mean"] for m in m_plain]
    assert [m["step"] for m in m_curved if "val/accuracy" in m] == [2, 3]
    assert all(0.0 <= acc <= 1.0 for _, acc in curved["curve"])


def test_levers_zoo_quick_writes_what_the_hops_predictions_name(tmp_path, monkeypatch):
    monkeypatch.setenv("FORKLENS_CACHE", str(tmp_path / "cache"))
    art_dir = tmp_path / "results" / "hl"
    assert main(["experiment", "levers-zoo", "--quick", "--out", str(tmp_path / "run"), "--set",
                 "artifact=" + str(art_dir)]) == 0
    art = load_artifact(art_dir)
    sparse = art.summary["variants"]["sparse-hops"]
    assert sparse["curves"]["milestones"]["steps"] == [0, 2, 4] and len(sparse["base"]["per_seed"]) == 1
    assert len(sparse["base"]["train_per_seed"]) == 1 and {"grpo", "milestones"} <= set(sparse["gap"])
    for name in ("levers-agent-horizon-hops-long", "levers-agent-horizon-hops-train"):
        for p in load_predictions(f"results/predictions/{name}.yaml").predictions:
            assert verdict(p, art).outcome in ("supported", "refuted", "inconclusive"), (name, p.id)
