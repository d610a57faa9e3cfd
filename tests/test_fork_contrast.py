"""Fork-contrast: selection, decision masks, the loss by hand, exact micro-batch invariance, the run."""

import copy
import json
import math

import pytest
import torch

import forklens.objectives.fork_contrast as fc
from forklens.objectives import PolicyOutputs, get_objective
from forklens.objectives.fork_contrast import ForkContrastLossConfig, topk_kl
from forklens.rollouts import Rollouts
from forklens.train import loop
from forklens.train.fork_source import (ForkContrastSource, ForkData, advantages, decision_masks, drop_longest,
                                        select_problems, step_weights)
from tests.conftest import make_tiny


# --- selection and masks ---------------------------------------------------------------------------

def test_advantages_and_problem_selection():
    a = advantages([1, 0, 0, 0], clip=2.5)
    # mean 0.25, pstdev sqrt(0.1875) = 0.4330
    assert a == pytest.approx([0.75 / 0.4330127, -0.25 / 0.4330127, -0.25 / 0.4330127, -0.25 / 0.4330127], rel=1e-5)
    assert advantages([1] + [0] * 19, clip=2.5)[0] == 2.5  # (1 - 0.05) / 0.218 = 4.36, clipped
    correct = [[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0]]
    assert select_problems(correct, keep=2) == [2, 1]  # |0.5-0.5| first; 0.25 and 0.75 tie -> problem order
    assert select_problems(correct, keep=0) == [2, 1, 4]


def test_drop_longest_keeps_ties():
    assert drop_longest([5, 9, 3, 7, 4, 8, 6, 2, 1, 10], 0.2) == [0, 2, 3, 4, 5, 6, 7, 8]
    assert drop_longest([4, 4, 4, 4, 4], 0.2) == [0, 1, 2, 3, 4]  # equal lengths: nothing to drop
    assert drop_longest([1, 2, 3], 0.0) == [0, 1, 2]


def test_decision_masks_hand_case():
    ent = [[0.01, 0.69, 0.2, 0.31], [0.0, 0.0], [0.5, 0.5, 0.29]]
    assert decision_masks(ent, 0.3, "entropy") == [[False, True, False, True], [False, False], [True, True, False]]
    assert decision_masks(ent, 0.3, "none") == [[True] * 4, [True] * 2, [True] * 3]
    rnd = decision_masks(ent, 0.3, "random", seed=1)
    assert [sum(m) for m in rnd] == [2, 0, 2] and [len(m) for m in rnd] == [4, 2, 3]
    assert decision_masks(ent, 0.3, "random", seed=1) == rnd


# --- the loss by hand --------------------------------------------------------------------------------

def hand_batch():
    """Two rollouts (prompt 1 token; responses of 3 and 2 tokens), vocabulary of 3 ids, K = 2."""
    b = Rollouts.from_ids([[5], [6]], [[0, 1, 2], [1, 1]], pad_id=0)
    b.advantages = torch.tensor([2.0, -1.0])
    dec = torch.zeros(b.input_ids.shape)
    dec[0, 2] = 1.0  # rollout 0: token 2 of 3 is a decision token
    dec[1, 1] = 1.0  # rollout 1: token 1 of 2
    gather_ids = torch.zeros((*b.input_ids.shape, 2), dtype=torch.int32)
    kl_logp = torch.zeros((*b.input_ids.shape, 2))
    pb = [0.7, 0.2]  # base top-2 at every position; 0.1 left for the rest
    for r, t in [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2)]:
        gather_ids[r, t] = torch.tensor([1, 2])
        kl_logp[r, t] = torch.tensor([math.log(x) for x in pb])
    b.tags = {"decision": dec, "gather_ids": gather_ids, "kl_logp": kl_logp}
    b.tags.update(step_weights(b))
    return b


def test_step_weights_are_global_normalisers():
    b = hand_batch()
    # |D| = 2, |N| = 3 non-decision response tokens, B = 2
    assert b.tags["w_pg"].sum() == pytest.approx(2 * 2 / 2)
    assert b.tags["w_kl"][0, 1] == pytest.approx(2 / 3) and b.tags["w_kl"][0, 2] == 0
    assert b.tags["w_kl"].sum() == pytest.approx(3 * 2 / 3)


def test_loss_equals_hand_computation():
    b = hand_batch()
    lp = torch.zeros(b.input_ids.shape)
    vals = {(0, 1): 0.5, (0, 2): 0.25, (0, 3): 0.9, (1, 1): 0.4, (1, 2): 0.8}
    for k, p in vals.items():
        lp[k] = math.log(p)
    pi = [0.5, 0.3]  # policy at ids 1, 2 everywhere: 0.2 left
    kl_lp = torch.zeros((*b.input_ids.shape, 2))
    kl_lp[..., 0], kl_lp[..., 1] = math.log(pi[0]), math.log(pi[1])
    out = PolicyOutputs(logprobs=lp, gathered_logprobs=kl_lp)
    res = fc.fork_contrast_loss(out, b, ForkContrastLossConfig(kl_coef=0.1))
    kl = 0.7 * math.log(0.7 / 0.5) + 0.2 * math.log(0.2 / 0.3) + 0.1 * math.log(0.1 / 0.2)
    pg = (2.0 * -math.log(0.25) + -1.0 * -math.log(0.4)) / 2  # sum_D A (-log pi) / |D|
    expected = pg + 0.1 * (3 * kl) / 3
    assert float(res.count) == 2.0
    assert float(res.loss_sum) / float(res.count) == pytest.approx(expected, rel=1e-6)
    assert res.metrics["kl"] == (pytest.approx(3 * kl, rel=1e-5), 3.0)
    # without the KL outputs the objective refuses rather than silently dropping the term
    with pytest.raises(ValueError, match="gather_ids"):
        fc.fork_contrast_loss(PolicyOutputs(logprobs=lp), b, ForkContrastLossConfig())


def test_topk_kl_exact_with_full_vocabulary_and_lower_bound_otherwise():
    g = torch.Generator().manual_seed(0)
    lb = torch.log_softmax(torch.randn(4, 9, generator=g), -1)
    lq = torch.log_softmax(torch.randn(4, 9, generator=g), -1)
    full = (lb.exp() * (lb - lq)).sum(-1)
    assert torch.allclose(topk_kl(lb, lq), full, atol=1e-5)
    idx = lb.topk(3, -1).indices
    part = topk_kl(lb.gather(-1, idx), lq.gather(-1, idx))
    assert bool((part <= full + 1e-6).all()) and bool((part >= -1e-6).all())


# --- forward and invariance ------------------------------------------------------------------------

B = 6


def make_batch(seed=0, k=4):
    g = torch.Generator().manual_seed(seed)
    prompts, responses = [], []
    for i in range(B):
        prompts.append(torch.randint(4, 18, (2 + i % 3,), generator=g).tolist())
        responses.append(torch.randint(4, 18, ([1, 9, 3, 14, 2, 6][i],), generator=g).tolist())
    b = Rollouts.from_ids(prompts, responses, pad_id=0)
    b.advantages = torch.randn(B, generator=g).clamp(-2.5, 2.5)
    shape = b.input_ids.shape
    dec = (torch.rand(shape, generator=g) < 0.3).float() * b.response_mask
    base_lp = torch.log_softmax(torch.randn((*shape, 18), generator=g), -1)
    v, ix = base_lp.topk(k, -1)
    b.tags = {"decision": dec, "gather_ids": ix.to(torch.int32), "kl_logp": v}
    b.tags.update(step_weights(b))
    return b


def test_trainer_forward_gathers_logprobs_at_gather_ids():
    model, _ = make_tiny("llama", seed=1)
    b = make_batch()
    ours = loop.forward(model, b)
    plain = b.select(range(len(b)))
    plain.tags = {}
    ref = loop.forward(model, plain)
    assert ref.gathered_logprobs is None
    assert torch.allclose(ours.logprobs, ref.logprobs, atol=1e-6)
    assert torch.allclose(ours.entropy, ref.entropy, atol=1e-6)
    # gathered log-probs at the response positions agree with the full distribution
    from forklens.policy.score import head_logits, hidden_states

    h = hidden_states(model, b.input_ids, b.attention_mask)
    full = torch.log_softmax(head_logits(model, h), -1)  # position t-1 predicts token t
    r, t = 3, int(b.prompt_lens[3]) + 2
    assert torch.allclose(ours.gathered_logprobs[r, t], full[r, t - 1, b.tags["gather_ids"][r, t].long()],
                          atol=1e-5)


def grads(model, batch, micro, cfg):
    m = copy.deepcopy(model)
    m.zero_grad(set_to_none=True)
    metrics = loop.accumulate_step(m, get_objective("fork_contrast"), cfg, batch.split(micro))
    return torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]), metrics


def test_microbatch_invariance(kl_coef=0.1):
    model, _ = make_tiny("llama", seed=1)
    model.float()
    cfg = ForkContrastLossConfig(kl_coef=kl_coef)
    b = make_batch()
    g_full, m_full = grads(model, b, B, cfg)
    assert float(g_full.norm()) > 0
    for micro in (1, 2, 4):
        g, m = grads(model, b, micro, cfg)
        assert float((g - g_full).norm() / g_full.norm()) <= 1e-5, micro
        assert m["loss"] == pytest.approx(m_full["loss"], rel=1e-5, abs=1e-7)


# --- the offline data and the run -------------------------------------------------------------------

class _Prob:
    def __init__(self, i):
        self.id, self.prompt, self.answer = str(i), f"{i}+{i}=", str(2 * i)


def test_prepare_source_and_train_end_to_end(tmp_path, tiny_dir):
    from forklens.policy import Policy
    from forklens.train.fork_source import ForkContrastConfig, prepare_fork_data, run_fork_contrast

    cfg = ForkContrastConfig()
    cfg.data.problems, cfg.data.rollouts_per_problem, cfg.data.max_new_tokens = 6, 4, 6
    cfg.data.temperature, cfg.data.top_p, cfg.data.tau, cfg.data.batch_size = 1.0, 1.0, 2.5, 5
    cfg.train.max_steps, cfg.train.micro_batch_size = 2, 2
    probs = [_Prob(i) for i in range(10)]
    verify = lambda p, text: float(text.count("1") % 2 == 0)  # noqa: E731  (a coin-like label)
    policy = Policy.load(tiny_dir)
    data = prepare_fork_data(policy, probs, verify, cfg.data, seed=0)
    s = data.stats
    assert s["problems_sampled"] == 6 and s["rollouts_sampled"] == 24 and s["problems_kept"] >= 1
    r = data.rollouts
    assert r.tags["gather_ids"].shape[-1] == min(20, policy.model.get_output_embeddings().weight.shape[0])
    dec = r.tags["decision"]
    assert bool((dec <= r.response_mask).all())
    assert int(dec.sum()) == sum(int(e > 2.5) for e in r.tags["base_entropy"][r.response_mask.bool()].tolist())
    assert data.sampled_tokens > 0 and data.scored_tokens == 0
    src = ForkContrastSource(data, batch_size=5, seed=0)
    b0, info0 = src.batch(0)
    assert info0["sampled_tokens"] == data.sampled_tokens and "sampled_tokens" not in src.batch(1)[1]
    assert src.batch(3)[0].input_ids.tolist() == src.batch(3)[0].input_ids.tolist()  # deterministic
    assert float(b0.tags["w_pg"].sum()) == pytest.approx(5.0) or float(b0.tags["decision"].sum()) == 0
    # the whole run: LoRA, FLOPs include the one-off sampling
    info = run_fork_contrast(tiny_dir, probs, verify, cfg, tmp_path / "run", seed=0, progress=False)
    assert info["steps"] == 2 and (tmp_path / "run" / "model" / "config.json").is_file()
    n = Policy.load(tmp_path / "run" / "model").num_params()
    assert info["flops"] >= 2 * n * data.sampled_tokens
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(math.isfinite(x["loss"]) for x in lines)


def test_cli_fork_contrast_with_data_file(tmp_path, tiny_dir, capsys, monkeypatch):
    import itertools

    import forklens.commands.train_fork_contrast as train_fork_contrast
    from forklens.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1)}) for i in range(4)) + "\n")
    out = tmp_path / "fc"
    args = ["train", "fork-contrast", "--base", str(tiny_dir), "--data", str(data), "--out", str(out), "--no-progress",
            "--set", "data.rollouts_per_problem=3", "--set", "data.max_new_tokens=4", "--set", "train.max_steps=1",
            "--set", "lora.enabled=false", "--set", "data.temperature=1.5"]
    # a random tiny model rarely answers right, so the verdicts are fixed: alternating gives every problem
    # mixed outcomes (it trains); never right gives none (a clear error)
    flip = itertools.cycle([True, False])
    monkeypatch.setattr(train_fork_contrast, "is_correct", lambda answer, text: next(flip))
    assert main(args) == 0, capsys.readouterr().err
    assert (out / "summary.json").is_file()
    monkeypatch.setattr(train_fork_contrast, "is_correct", lambda answer, text: False)
    assert main([*args, "--out", str(tmp_path / "fc2")]) == 2  # the last --out wins
    assert "mixed outcomes" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "1+1="}) + "\n")
    assert main(args[:4] + ["--data", str(bad), "--out", str(out)]) == 2
    assert "missing \"answer\"" in capsys.readouterr().err


def test_whole_problem_batches_balance_advantages():
    from forklens.train.fork_source import advantages as adv_fn

    rewards = [[1, 0, 0, 1], [0, 0, 1, 0], [1, 1, 1, 0]]
    prompts, resp, adv, gid = [], [], [], []
    for g, rs in enumerate(rewards):
        for j, r in enumerate(adv_fn(rs, 2.5)):
            prompts.append([5 + g])
            resp.append([6] * (2 + j))
            adv.append(r)
            gid.append(g)
    b = Rollouts.from_ids(prompts, resp, pad_id=0, advantages=torch.tensor(adv), group_ids=torch.tensor(gid),
                          rewards=torch.tensor([float(r) for rs in rewards for r in rs]))
    b.tags = {"decision": b.response_mask.clone()}
    src = ForkContrastSource(ForkData(rollouts=b), batch_size=99, seed=0, problems_per_step=1)
    seen = []
    for step in range(3):
        batch, info = src.batch(step)
        assert len(set(batch.group_ids.tolist())) == 1 and len(batch) == 4
        assert abs(float(batch.advantages.sum())) < 1e-5
        seen.append(int(batch.group_ids[0]))
    assert sorted(seen) == [0, 1, 2]  # one epoch visits every problem once
    assert src.batch(4)[0].input_ids.tolist() == src.batch(4)[0].input_ids.tolist()


def test_packaged_recipes_match_the_code_defaults():
    from forklens.config import packaged_config
    from forklens.config import load_config
    from forklens.experiments.fork_vs_rl import ForkVsRLConfig, organism_fork_recipe
    from forklens.train.fork_source import ForkContrastConfig

    assert load_config(ForkContrastConfig, packaged_config("fork-contrast-arith")) == organism_fork_recipe()
    assert load_config(ForkVsRLConfig, packaged_config("fork-vs-rl")) == ForkVsRLConfig()
    generic = load_config(ForkContrastConfig, packaged_config("fork-contrast"))
    assert generic.data.tau == 1.4 and generic.lora.enabled and generic.lora.r == 32 and generic.loss.kl_coef == 0.1
    quick = load_config(ForkVsRLConfig, packaged_config("fork-vs-rl-quick"))
    assert quick.seeds == 1 and quick.rl.train.max_steps == 30


def test_experiment_aggregation_and_targets(tmp_path):
    from forklens.experiments.fork_vs_rl import aggregate, aggregate_interventions, targets, variant

    per = {"grpo": [{"seed": 0, "accuracy": 0.98, "flops": 1e12, "wall_s": 10.0},
                    {"seed": 1, "accuracy": 1.0, "flops": 1e12, "wall_s": 12.0}],
           "fork-contrast": [{"seed": 0, "accuracy": 0.97, "flops": 9e9, "wall_s": 1.0},
                             {"seed": 1, "accuracy": 0.99, "flops": 9e9, "wall_s": 1.0}],
           "fork-contrast-gate-none": [{"seed": 0, "accuracy": 0.0, "flops": 9e9, "wall_s": 1.0}]}
    m = aggregate(per)
    assert m["grpo"]["accuracy_mean"] == pytest.approx(0.99)
    assert m["grpo"]["accuracy_std"] == pytest.approx(0.01414, rel=1e-3)
    assert m["fork-contrast"]["flops_frac_of_grpo"] == pytest.approx(0.009)
    runs = [{"accuracy": {"base": 0.3, "rl": 1.0, "oracle": 0.95, "random": 0.35},
             "gain_recovered": {}, "substitutions_per_response": {"oracle": 1.0, "random": 1.0},
             "changed_per_response": {"oracle": 1.0, "random": 0.1}, "gates": {"oracle": "oracle", "random": "random"}}]
    inter = aggregate_interventions(runs)
    assert inter["gain_recovered"]["oracle"] == pytest.approx(0.65 / 0.7)
    t = targets(m, inter)
    assert t["fork_within_2_points_of_grpo_or_better"] and t["fork_flops_at_most_1pct_of_grpo"]
    assert t["entropy_gate_beats_none"] and t["oracle_recovers_at_least_70pct"] and t["random_recovers_at_most_25pct"]
    from forklens.experiments.fork_vs_rl import organism_fork_recipe

    assert variant(organism_fork_recipe(), "fork-contrast-gate-random").data.gate == "random"
    assert variant(organism_fork_recipe(), "fork-contrast-positive-only").data.positive_only
