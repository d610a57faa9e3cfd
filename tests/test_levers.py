"""Training-loop levers: reward-variance (SNR) filtering of prompt groups."""

import pytest
import torch

from forklens.policy import Policy
from forklens.tasks.arith import ArithConfig, ArithTask
from forklens.train.sources import GRPOSource, SamplingConfig, snr_keep_groups
from tests.conftest import make_tiny


def test_snr_filter_hand_computed():
    std = torch.tensor([0.0, 0.5, 0.1, 0.4, 0.0])
    # total 1.0; descending 0.5 (cum 0.5), 0.4 (cum 0.9 >= 0.9 - 0.01): stop
    assert snr_keep_groups(std, rho=0.9) == [1, 3]
    assert snr_keep_groups(std, rho=1.0) == [1, 2, 3]  # zero-std groups never kept while others exist
    assert snr_keep_groups(std, rho=0.5) == [1]
    assert snr_keep_groups(torch.zeros(3), rho=0.9) == [0]  # at least one group survives


def test_snr_filter_ties_are_deterministic():
    std = torch.tensor([0.3, 0.3, 0.3])
    assert snr_keep_groups(std, rho=0.5) == [0, 1]


def test_grpo_source_trains_only_on_kept_groups():
    task = ArithTask(ArithConfig(digits=2))
    model, tok = make_tiny("llama", seed=6)
    policy = Policy(model, tok)
    sc = SamplingConfig(prompts_per_step=4, group_size=4, max_new_tokens=8, snr_filter_rho=0.9)
    src = GRPOSource(task.problems("train"), [], sc, seed=3)

    def reward(prompts, completions, problem, **_):  # groups 0 and 2 mixed, 1 and 3 constant
        first = {p.id: i for i, p in enumerate(src.last_chosen)}
        out = []
        for k, p in enumerate(problem):
            g = first[p.id]
            out.append(float(k % 2) if g in (0, 2) else 1.0)
        return out

    src.reward_fns, src.weights = [reward], [1.0]
    batch, info = src.batch(0, policy)
    assert len({p.id for p in src.last_chosen}) == 4, "the test needs four distinct problems"
    assert sorted(set(batch.group_ids.tolist())) == [0, 2]
    assert len(batch) == 8 and info["snr_kept_groups_frac"] == pytest.approx(0.5)
    assert info["frac_zero_std_groups"] == pytest.approx(0.5)  # measured before filtering
