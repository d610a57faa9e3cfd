"""Reverse-perplexity SFT curriculum, staged rewards and replay of problems solved by exactly 1 of G."""

import math
import random

import pytest
import torch

from forklens.policy import Policy
from forklens.tasks.arith import ArithConfig, ArithTask
from forklens.train.schedule import ReplayBuffer, RewardSchedule, RewardStage
from forklens.train.sources import GRPOSource, SamplingConfig, SFTSource
from tests.conftest import make_tiny


def _examples(n=11, seed=0):
    task = ArithTask(ArithConfig(digits=2))
    rng = random.Random(seed)
    ex = [task.teacher_example(rng) for _ in range(n)]
    return ex + [ex[3]]  # a duplicate: equal perplexity, the tie keeps list order


def _reference_perplexity(policy, prompt, response):
    s = policy.score([policy.encode_prompt(prompt)], [policy.encode_response(response)])[0]
    return math.exp(-float(s.logprob.double().mean()))


@pytest.mark.parametrize("order", ["reverse_perplexity", "perplexity"])
def test_curriculum_order_is_exactly_sorted_by_initial_perplexity(order):
    model, tok = make_tiny("llama", seed=5)
    pol = Policy(model, tok)
    ex = _examples()
    src = SFTSource(ex, batch_size=5, order=order, policy=pol)
    ref = [_reference_perplexity(pol, p, r) for p, r in ex]
    assert src.perplexities == pytest.approx(ref, rel=1e-5)
    seen = src.examples_for(0) + src.examples_for(1) + src.examples_for(2)[:2]  # one epoch: 12 examples
    ppl = [ref[ex.index(e)] for e in seen]
    if order == "reverse_perplexity":
        assert all(a >= b for a, b in zip(ppl, ppl[1:])), ppl
    else:
        assert all(a <= b for a, b in zip(ppl, ppl[1:])), ppl
    assert sorted(map(str, seen)) == sorted(map(str, ex))  # every example once per epoch
    i3, i11 = src.ordered.index(3), src.ordered.index(11)
    assert i3 + 1 == i11  # the duplicate follows its twin
    # no shuffling: the next epoch repeats the order
    assert src.examples_for(2)[2:] + src.examples_for(3) == seen[: 3 + 5]
    assert src.scoring_tokens > 0


def test_curriculum_scores_with_the_initial_model_only():
    model, tok = make_tiny("llama", seed=5)
    pol = Policy(model, tok)
    src = SFTSource(_examples(), batch_size=4, order="reverse_perplexity", policy=pol)
    before = src.examples_for(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    assert src.examples_for(1) == before


def test_curriculum_errors():
    with pytest.raises(ValueError, match="policy="):
        SFTSource(_examples(), 4, order="reverse_perplexity")
    with pytest.raises(ValueError, match="unknown SFT order"):
        SFTSource(_examples(), 4, order="sorted")
    with pytest.raises(ValueError, match="fixed list"):
        SFTSource(lambda rng, n: [], 4, order="perplexity", policy=object())


# ------------------------------------------------------------------ staged rewards and replay

def verifiable(prompts, completions, problem, **_):
    return [1.0 if c.startswith("1") else 0.0 for c in completions]


def process(prompts, completions, problem, **_):
    return [0.5] * len(completions)


def test_schedule_stage_at_each_step():
    sched = RewardSchedule.two_stage(verifiable, process, start=3, process_weight=0.2)
    assert [sched.index_at(s) for s in range(6)] == [0, 0, 0, 1, 1, 1]
    assert sched.at(3).reward_fns == [verifiable, process] and sched.at(3).weights == [1.0, 0.2]
    assert sched.solved_component == "verifiable"
    with pytest.raises(ValueError, match="step 0"):
        RewardSchedule([RewardStage(2, [verifiable])])
    with pytest.raises(ValueError, match="increasing"):
        RewardSchedule([(0, [verifiable]), (4, [process]), (4, [verifiable])])


def test_replay_buffer_queues_exactly_one_of_g():
    task = ArithTask(ArithConfig(digits=2))
    probs = task.problems("train")[:4]
    buf = ReplayBuffer(probs, frac=0.5)
    # groups of 3: group 0 solved once, group 1 twice, group 2 never, group 3 once
    solved = torch.tensor([1, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1], dtype=torch.float)
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    assert buf.observe(probs, solved, groups) == 2
    assert [p.id for p in buf.queue] == [probs[0].id, probs[3].id]
    assert buf.take(3) == [probs[0]]  # floor(0.5 * 3) = 1, oldest first
    state = buf.state_dict()
    other = ReplayBuffer(probs, frac=0.5)
    other.load_state_dict(state)
    assert other.queue == [probs[3]]


def test_grpo_source_switches_stage_and_replays():
    task = ArithTask(ArithConfig(digits=2))
    model, tok = make_tiny("llama", seed=6)
    pol = Policy(model, tok)
    sc = SamplingConfig(prompts_per_step=4, group_size=3, max_new_tokens=4)
    src = GRPOSource(task, task.problems("train"), sc, reward_fns=[verifiable], seed=2,
                     reward_schedule=RewardSchedule.two_stage(verifiable, process, start=1, process_weight=2.0),
                     replay=ReplayBuffer(task.problems("train"), frac=0.5))
    calls = []

    def solve_first_of_each_group(prompts, completions, problem, **_):  # exactly 1 of G solved everywhere
        calls.append(len(completions))
        return [1.0 if k % 3 == 0 else 0.0 for k in range(len(completions))]

    solve_first_of_each_group.__name__ = "verifiable"
    src.schedule.stages[0].reward_fns[0] = solve_first_of_each_group
    src.schedule.stages[1].reward_fns[0] = solve_first_of_each_group
    b0, i0 = src.batch(0, pol)
    assert i0["reward_stage"] == 0.0 and i0["replay_added"] == 4.0 and i0["replayed"] == 0.0
    assert b0.rewards.tolist() == [1.0, 0.0, 0.0] * 4  # stage 1: verifiable only
    first = list(src.last_chosen)
    b1, i1 = src.batch(1, pol)
    assert i1["reward_stage"] == 1.0 and i1["replayed"] == 2.0
    assert src.last_chosen[:2] == first[:2]  # the two oldest queued problems come back first
    assert b1.rewards.tolist() == pytest.approx([2.0, 1.0, 1.0] * 4)  # + 2.0 * 0.5 process reward
    assert src.state_dict()["replay"]["queue"][:2] == [p.id for p in first[2:]]


def test_episode_source_stage_two_adds_the_milestone_reward():
    from forklens.rewards.milestones import milestone_reward, potentials
    from forklens.tasks.agent import AgentConfig, AgentTask
    from forklens.train.sources import GRPOSource, SamplingConfig
    from forklens.train.sources import verifier_reward

    task = AgentTask(AgentConfig(n_train=12, n_test=4))
    model, tok = make_tiny("llama", seed=2, alphabet=task.alphabet, hidden=32, max_pos=96)
    pol = Policy(model, tok)
    sched = RewardSchedule.two_stage(verifier_reward(task), milestone_reward(task), start=1, process_weight=0.5)
    sc = SamplingConfig(prompts_per_step=2, group_size=3, T=3, turn_tokens=8)
    src = GRPOSource(task, task.problems("train"), sc, seed=4, reward_schedule=sched,
                     replay=ReplayBuffer(task.problems("train"), frac=0.5))
    for step in (0, 1):
        batch, info = src.batch(step, pol)
        assert info["reward_stage"] == float(step)
        eps, chosen = src.last_samples.episodes, src.last_chosen
        exp = []
        for k, e in enumerate(eps):
            p = chosen[batch.group_ids[k]]
            r = task.verify(p, e.text)
            if step == 1:
                r += 0.5 * potentials(p, e.calls)[-1]
            exp.append(r)
        assert batch.rewards.tolist() == pytest.approx(exp)
    assert "reward/milestones" in info
