"""Advantage estimators registered by name (forklens.objectives.advantages): one implementation, two options."""

import random
import statistics

import pytest
import torch

from forklens.objectives.advantages import ADVANTAGE_ESTIMATORS, estimate_advantages, get_advantage_estimator
from forklens.tasks.arith import ArithConfig, ArithTask
from forklens.train.fork_source import advantages as fork_advantages
from forklens.train.sources import GRPOSource, SamplingConfig


def test_registry_names_and_unknown_name():
    assert {"grpo", "grpo_population"} <= set(ADVANTAGE_ESTIMATORS)
    with pytest.raises(KeyError, match="unknown advantage estimator 'nope'"):
        get_advantage_estimator("nope")


def test_grpo_is_the_unbiased_group_normaliser():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.5])
    g = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    adv, std = estimate_advantages("grpo", r, g)
    for ids in ([0, 1, 2], [3, 4, 5, 6]):
        vals = [float(r[i]) for i in ids]
        m, s = statistics.mean(vals), statistics.stdev(vals)
        for i in ids:
            assert float(adv[i]) == pytest.approx((float(r[i]) - m) / (s + 1e-4), abs=1e-6)
            assert float(std[i]) == pytest.approx(s, abs=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_population_estimator_is_the_fork_contrast_formula(seed):
    rng = random.Random(seed)
    rewards = [float(rng.random() < 0.4) for _ in range(rng.randrange(1, 12))]
    got = fork_advantages(rewards, clip=2.5)
    m = sum(rewards) / len(rewards)
    s = max(statistics.pstdev(rewards) if len(rewards) > 1 else 0.0, 1e-8)
    want = [max(-2.5, min(2.5, (x - m) / s)) for x in rewards]
    assert got == pytest.approx(want, abs=1e-6)


def test_grpo_source_rejects_an_unknown_estimator_up_front():
    task = ArithTask(ArithConfig(digits=2))
    with pytest.raises(KeyError, match="unknown advantage estimator"):
        GRPOSource(task, task.problems("train"), SamplingConfig(advantage_estimator="ppo"))
