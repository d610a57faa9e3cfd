"""The Bradley-Terry reward model, the FPO penalties (arXiv 2605.04266) and the iterative RLHF loop."""

import json
import math

import pytest
import torch

from forklens.errors import DataError
from forklens.objectives.fpo import FPOConfig, bradley_terry_loss, fpo_penalty, overconfidence
from forklens.policy import Policy
from forklens.rewards.reward_model import RewardModel, head_gradients, reward_model_reward
from forklens.tasks.base import Problem
from forklens.tasks.steer import SteerConfig, SteerTask
from forklens.train.reward_model import (PreferencePair, RewardModelTrainConfig, fit_reward_model,
                                         read_preference_pairs, refit_step)
from forklens.train.rlhf import IterativeRLHF, RLHFConfig, soft_label

from conftest import make_tiny

ALPHA = "abcdefgh!>"


@pytest.fixture
def policy():
    model, tok = make_tiny("llama", alphabet=ALPHA, hidden=16, layers=1, max_pos=32)
    return Policy(model, tok)


def test_bradley_terry_loss_by_hand():
    loss, n = bradley_terry_loss(torch.tensor([1.0, -0.5]), torch.tensor([0.0, 0.5]))
    assert n == 2
    assert float(loss) == pytest.approx(math.log1p(math.exp(-1.0)) + math.log1p(math.exp(1.0)), abs=1e-6)
    soft, _ = bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.0]), torch.tensor([0.25]))
    s = 1 / (1 + math.exp(-2.0))
    assert float(soft) == pytest.approx(-(0.25 * math.log(s) + 0.75 * math.log(1 - s)), abs=1e-6)
    with pytest.raises(ValueError, match="labels must lie"):
        bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([1.5]))
    with pytest.raises(ValueError, match="one shape"):
        bradley_terry_loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0]))


def test_head_gradients_match_finite_differences_on_a_causal_lm(policy):
    torch.manual_seed(0)
    rm = RewardModel.from_causal_lm(policy)
    rm.eval()
    batch = rm.encode([">", ">", ">"], ["abc", "d!!h", "a"])
    g = head_gradients(rm, batch)
    params = rm.head_parameters()
    assert g.shape == (3, sum(p.numel() for p in params))
    eps = 1e-3
    flat = torch.nn.utils.parameters_to_vector(params).detach().double()
    fd = torch.zeros_like(g, dtype=torch.double)
    for j in range(len(flat)):
        for sign in (1, -1):
            v = flat.clone()
            v[j] += sign * eps
            torch.nn.utils.vector_to_parameters(v.float(), params)
            with torch.no_grad():
                fd[:, j] += sign * rm(batch).double() / (2 * eps)
    torch.nn.utils.vector_to_parameters(flat.float(), params)
    assert torch.allclose(g.double(), fd, atol=2e-3)
    # the features are the last response token's hidden state: rows differ, bias gradient is 1
    assert torch.allclose(g[:, -1], torch.ones(3))
    assert not torch.allclose(g[0], g[1])


def test_bag_of_tokens_counts_response_tokens_only(policy):
    rm = RewardModel.bag_of_tokens(policy)
    batch = rm.encode([">", ">"], ["aab", "!"])
    feats = rm.features(batch)
    vocab = policy.tokenizer.get_vocab()
    assert feats[0, vocab["a"]] == 2 and feats[0, vocab["b"]] == 1 and feats[0].sum() == 3  # no prompt, no EOS
    assert feats[1, vocab["!"]] == 1 and feats[1].sum() == 1


def test_fpo_penalty_forms_by_hand():
    g_y = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    g_ref = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    inner = torch.tensor([4.0, 0.0])  # <g_y, g_y - g_ref>
    assert torch.allclose(fpo_penalty(FPOConfig("practical", 0.5), g_y, g_ref), 0.5 * inner)
    assert torch.allclose(fpo_penalty(FPOConfig("l2", 0.5), g_y, g_ref), 0.5 * torch.tensor([4.0, 1.0]))
    assert torch.equal(fpo_penalty(FPOConfig("none", 0.5), g_y, g_ref), torch.zeros(2))
    r_y, r_ref, u_y, u_ref = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0]), torch.tensor([0.0, 1.0]), torch.zeros(2)
    oc = overconfidence(r_y, r_ref, u_y, u_ref)
    assert float(oc[0]) == pytest.approx(1 / (1 + math.exp(-2)) - 0.5, abs=1e-6)
    assert torch.allclose(fpo_penalty(FPOConfig("relaxed", 0.5), g_y, g_ref, r_y, r_ref, u_y, u_ref), 0.5 * inner * oc)
    with pytest.raises(ValueError, match="true utilities"):
        fpo_penalty(FPOConfig("relaxed", 0.5), g_y, g_ref)


def test_relaxed_penalty_is_the_first_order_effect_of_the_refit_on_the_reward(policy):
    """One SGD step of size lr on the Bradley-Terry loss of (y, y_ref) with label sigma(U_y - U_ref) changes r(y) by
    exactly -lr * overconfidence * <g_y, g_y - g_ref> for a linear head: the relaxed penalty / gamma."""
    torch.manual_seed(1)
    rm = RewardModel.bag_of_tokens(policy)
    y, ref = "aa!b", "cdef"
    by, bref = rm.encode([">"], [y]), rm.encode([">"], [ref])
    u_y, u_ref = torch.tensor([1.0]), torch.tensor([3.0])
    with torch.no_grad():
        r_y, r_ref = rm(by), rm(bref)
    pen = fpo_penalty(FPOConfig("relaxed", 1.0), head_gradients(rm, by), head_gradients(rm, bref), r_y, r_ref, u_y, u_ref)
    lr = 0.05
    opt = torch.optim.SGD(rm.head_parameters(), lr=lr)
    refit_step(rm, opt, [PreferencePair(">", y, ref, float(torch.sigmoid(u_y - u_ref)))])
    with torch.no_grad():
        change = float(rm(by) - r_y)
    assert change == pytest.approx(-lr * float(pen), rel=1e-4)
    assert change != 0


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_read_preference_pairs_and_clear_errors(tmp_path):
    good = write_jsonl(tmp_path / "p.jsonl", [{"prompt": ">", "chosen": "aa", "rejected": "dd"},
                                               {"chosen": "a", "rejected": "b", "label": 0.25}])
    pairs = read_preference_pairs(good)
    assert pairs == [PreferencePair(">", "aa", "dd", 1.0), PreferencePair("", "a", "b", 0.25)]
    bad = write_jsonl(tmp_path / "b.jsonl", [{"prompt": ">", "chosen": "aa"}])
    with pytest.raises(DataError, match=r"b\.jsonl.*line 1.*rejected"):
        read_preference_pairs(bad)
    lab = write_jsonl(tmp_path / "l.jsonl", [{"chosen": "a", "rejected": "b", "label": 2}])
    with pytest.raises(DataError, match="label"):
        read_preference_pairs(lab)


def test_fit_learns_a_preference(policy):
    pairs = [PreferencePair(">", "a" * k + "d" * (4 - k), "a" * j + "d" * (4 - j)) for k in range(5) for j in range(k)]
    rm = RewardModel.bag_of_tokens(policy)
    torch.nn.init.zeros_(rm.head.weight)
    res = fit_reward_model(rm, pairs * 4, RewardModelTrainConfig(epochs=5, batch_size=8, learning_rate=0.1,
                                                                 eval_fraction=0.0, backbone="bag-of-tokens"))
    assert res["train_pair_accuracy"] == 1.0
    vocab = policy.tokenizer.get_vocab()
    w = rm.head.weight.detach()[0]
    assert float(w[vocab["a"]]) > float(w[vocab["d"]]) + 0.5
    fn = reward_model_reward(rm)
    r = fn([">", ">"], ["aaaa", "dddd"])
    assert r[0] > r[1]


def test_seeded_reward_heads_are_reproducible_and_ignore_the_global_rng(policy):
    """rubrics' scalar arm draws its head from the run's seed: two builds with one seed give identical heads
    whatever the global RNG did in between; another seed gives another head, within nn.Linear's range."""
    torch.manual_seed(1)
    a = RewardModel.from_causal_lm(policy, seed=3)
    torch.rand(100)  # global RNG moved on
    b = RewardModel.from_causal_lm(policy, seed=3)
    c = RewardModel.from_causal_lm(policy, seed=4)
    for pa, pb in zip(a.head.parameters(), b.head.parameters()):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.head.weight, c.head.weight)
    bound = 1 / math.sqrt(a.backbone.feature_dim)
    assert float(a.head.weight.abs().max()) <= bound and float(a.head.weight.std()) > 0.2 * bound
    bag = RewardModel.bag_of_tokens(policy, seed=3)
    assert torch.equal(bag.head.weight, RewardModel.bag_of_tokens(policy, seed=3).head.weight)
    torch.manual_seed(7)  # without a seed: the global RNG, as before (steer's reward model)
    d = RewardModel.from_causal_lm(policy).head.weight.clone()
    torch.manual_seed(7)
    assert torch.equal(d, RewardModel.from_causal_lm(policy).head.weight)


def test_reward_model_save_load_roundtrip(policy, tmp_path):
    rm = RewardModel.from_causal_lm(policy)
    rm.eval()
    rm.save(tmp_path / "rm")
    back = RewardModel.load(tmp_path / "rm")
    back.eval()
    assert torch.allclose(rm.score([">"], ["abc"]), back.score([">"], ["abc"]), atol=1e-5)
    with pytest.raises(DataError, match="not a forklens reward model"):
        RewardModel.load(tmp_path)


def test_steer_task_utility_and_references():
    task = SteerTask(SteerConfig())
    assert task.utility("abcdefgh") == 3.0 and task.utility("aaaaaaaaaa") == 8.0  # only the first 8 count
    assert task.hack_mass("a!!d") == 0.5 and task.hack_mass("") == 0.0
    probs = task.problems("train")
    assert len(probs) == 64 and all(len(p.meta["reference"]) == 8 for p in probs)
    assert probs == SteerTask(SteerConfig()).problems("train")
    assert [p.meta["reference"] for p in probs] != [p.meta["reference"] for p in SteerTask(SteerConfig(seed=1)).problems("train")]


def test_rlhf_refit_uses_policy_samples_or_the_fixed_pool(policy):
    task = SteerTask(SteerConfig())
    problems = [Problem(id=str(i), prompt=">", answer="", meta={"reference": "ddddeeee"}) for i in range(2)]
    pool = [(">", "aaaadddd"), (">", "dddddddd"), (">", "ffffffff")]
    for refit in ("policy", "reference"):
        loop = IterativeRLHF(RewardModel.bag_of_tokens(policy), RLHFConfig(refit=refit), task.utility, pool)
        scores = loop([">"] * 2, ["aaaaaaaa", "!!!!!!!!"], problem=problems)
        assert len(scores) == 2
        pairs = loop.refit_pairs()
        if refit == "policy":
            assert [(p.chosen, p.rejected) for p in pairs] == [("aaaaaaaa", "ddddeeee"), ("!!!!!!!!", "ddddeeee")]
            assert pairs[0].label == pytest.approx(soft_label(8.0, 0.0)) and pairs[1].label == pytest.approx(0.5)
        else:
            texts = {t for _, t in pool}
            assert len(pairs) == 2 and all(p.chosen in texts and p.rejected in texts for p in pairs)


def test_rlhf_penalty_enters_the_score(policy):
    task = SteerTask(SteerConfig())
    problems = [Problem(id="0", prompt=">", answer="", meta={"reference": "abcdefgh"})]
    rm = RewardModel.bag_of_tokens(policy)
    plain = IterativeRLHF(rm, RLHFConfig(), task.utility, [])
    pen = IterativeRLHF(rm, RLHFConfig(fpo=FPOConfig("practical", 0.5)), task.utility, [])
    a = plain([">"], ["aaaaaaaa"], problem=problems)[0]
    b = pen([">"], ["aaaaaaaa"], problem=problems)[0]
    # bag-of-tokens head gradient = (counts, 1): <(8e_a, 1), (8e_a, 1) - (e_a + ... + e_h, 1)> = 64 - 8 = 56
    assert a - b == pytest.approx(0.5 * 56, abs=1e-4)


def test_cli_train_reward_model(tiny_dir, tmp_path):
    from forklens.cli import main

    rows = [{"prompt": "1+1=", "chosen": "2" * k, "rejected": "3" * k} for k in range(1, 9)] * 4
    data = write_jsonl(tmp_path / "prefs.jsonl", rows)
    out = tmp_path / "rm"
    assert main(["train", "reward-model", "--model", str(tiny_dir), "--data", data, "--out", str(out),
                 "--set", "backbone=bag-of-tokens", "--set", "epochs=10", "--set", "learning_rate=0.1",
                 "--set", "eval_fraction=0.25"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_pair_accuracy"] == 1.0 and summary["eval_pair_accuracy"] == 1.0
    assert summary["pairs"] + summary["held_out"] == len(rows)
    rm = RewardModel.load(out / "reward_model")
    assert rm.kind == "bag-of-tokens" and float(rm.score(["1+1="], ["22"])[0]) > float(rm.score(["1+1="], ["33"])[0])
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"chosen": "2"}])
    assert main(["train", "reward-model", "--model", str(tiny_dir), "--data", bad, "--out", str(tmp_path / "x")]) != 0


def test_fpo_experiment_end_to_end(tmp_path, monkeypatch):
    """The loop refits once per policy step; with fixed refit pairs the reward model's path does not depend on
    the policy, so arms that differ only in the penalty end with the same reward model."""
    from forklens.experiments.fpo import FPOExperimentConfig, run_fpo
    from forklens.train.loop import read_metrics

    monkeypatch.setenv("FORKLENS_CACHE", str(tmp_path / "cache"))
    cfg = FPOExperimentConfig(arms=["baseline-fixed", "practical-fixed"], eval_samples=8, seeds=1)
    cfg.organism.pretrain.max_steps = 20
    cfg.rl.train.max_steps = 3
    cfg.rl.sampling.prompts_per_step = 2
    cfg.rl.sampling.group_size = 4
    s = run_fpo(cfg, tmp_path / "out")
    fixed, fixed_fpo = s["arms"]["baseline-fixed"]["per_seed"]["0"], s["arms"]["practical-fixed"]["per_seed"]["0"]
    assert fixed["iterations"] == 3 and fixed["rm_hack_weight"] == fixed_fpo["rm_hack_weight"]
    assert s["diffs"]["practical_fixed_vs_baseline_fixed"]["rm_hack_weight"]["mean"] == 0.0
    rows = read_metrics(tmp_path / "out" / "train" / "practical-fixed-seed0" / "metrics.jsonl")
    assert [r["rlhf/iteration"] for r in rows] == [1.0, 2.0, 3.0]
    assert all(r["rlhf/penalty"] != 0 for r in rows)
    assert all(r["rlhf/penalty"] == 0 for r in read_metrics(tmp_path / "out" / "train" / "baseline-fixed-seed0" / "metrics.jsonl"))
    assert len(s["curves"]["baseline-fixed"]) == 3 and (tmp_path / "out" / "fpo_curves.png").is_file()


def test_read_preference_pairs_conversational(tmp_path):
    user = [{"role": "user", "content": "hi"}]
    rows = [{"chosen": user + [{"role": "assistant", "content": "aa"}],
             "rejected": user + [{"role": "assistant", "content": "dd"}]},
            {"prompt": user, "chosen": [{"role": "assistant", "content": "b"}], "rejected": "c"}]
    pairs = read_preference_pairs(write_jsonl(tmp_path / "c.jsonl", rows))
    assert pairs == [PreferencePair(user, "aa", "dd"), PreferencePair(user, "b", "c")]
    other = [{"role": "user", "content": "ho"}, {"role": "assistant", "content": "dd"}]
    with pytest.raises(DataError, match="implicit prompt"):
        read_preference_pairs(write_jsonl(tmp_path / "d.jsonl", [{"chosen": rows[0]["chosen"], "rejected": other}]))
    with pytest.raises(DataError, match="without an assistant message"):
        read_preference_pairs(write_jsonl(tmp_path / "e.jsonl", [{"chosen": user, "rejected": user}]))
