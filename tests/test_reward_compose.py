"""Weighted composition of TRL-signature rewards (forklens.rewards.compose_rewards)."""

import math

import pytest
import torch

from forklens.rewards import component_means, compose_rewards


def outcome(prompts, completions, answer, **_):
    return [float(c == a) for c, a in zip(completions, answer)]


def length_if_long(prompts, completions, **_):
    return [None if len(c) < 3 else float(len(c)) for c in completions]


def test_weighted_sum_none_counts_zero_and_components_kept():
    total, comps = compose_rewards([outcome, length_if_long], [2.0, 0.5], ["p"] * 3, ["ab", "abc", "xyzw"],
                                   answer=["ab", "x", "xyzw"])
    assert torch.allclose(total, torch.tensor([2.0, 1.5, 2.0 + 2.0]))
    assert comps["outcome"].tolist() == [1.0, 0.0, 1.0]
    assert math.isnan(comps["length_if_long"][0]) and comps["length_if_long"][1:].tolist() == [3.0, 4.0]
    means = component_means(comps)
    assert means["reward/outcome"] == pytest.approx(2 / 3) and means["reward/length_if_long"] == pytest.approx(3.5)
    assert component_means(comps, torch.tensor([True, False, False]))["reward/length_if_long"] != 0  # nan
    assert math.isnan(component_means(comps, torch.tensor([True, False, False]))["reward/length_if_long"])


def test_nan_value_is_excluded_from_sum():
    total, _ = compose_rewards([lambda p, c, **_: [float("nan"), 1.0]], None, ["p", "p"], ["a", "b"])
    assert total.tolist() == [0.0, 1.0]


def test_duplicate_names_logged_apart():
    _, comps = compose_rewards([outcome, outcome], None, ["p"], ["a"], answer=["a"])
    assert set(comps) == {"outcome", "outcome_2"}


@pytest.mark.parametrize("bad, msg", [(lambda p, c, **_: [1.0], "returned 1 values for 2"),
                                      (lambda p, c, **_: ["yes", 1.0], "expected a float or None")])
def test_bad_reward_output_is_a_clear_error(bad, msg):
    with pytest.raises(ValueError, match=msg):
        compose_rewards([bad], None, ["p", "p"], ["a", "b"])


def test_weight_count_mismatch():
    with pytest.raises(ValueError, match="2 reward weights for 1"):
        compose_rewards([outcome], [1.0, 2.0], ["p"], ["a"], answer=["a"])
