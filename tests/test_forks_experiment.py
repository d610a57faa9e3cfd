"""experiments/forks.py: variant parsing, family overrides and the per-seed aggregation."""

from __future__ import annotations

import pytest

from forklens.errors import ConfigError
from forklens.experiments.forks import METRICS, aggregate, recovered, variant_config


def test_variant_config_applies_family_then_variant_overrides():
    fam, name, cfg = variant_config("addv/undertrained", ["addv:pretrain.max_steps=999", "addv:model.hidden_size=64",
                                                          "arith:pretrain.max_steps=7"])
    assert (fam.name, name) == ("addv", "undertrained")
    assert cfg.model.hidden_size == 64  # family override
    assert cfg.pretrain.max_steps == 160  # the variant's own override wins
    _, _, arith = variant_config("arith/planted", ["arith:pretrain.max_steps=7"])
    assert arith.pretrain.max_steps == 7 and arith.arith.p_drop_carry == 0.6


@pytest.mark.parametrize("spec,overrides", [("addv", []), ("addv/nope", []), ("nope/x", []),
                                            ("addv/capacity", ["addv-pretrain.max_steps=3"])])
def test_bad_specs(spec, overrides):
    with pytest.raises(ConfigError):
        variant_config(spec, overrides)


def test_aggregate_skips_undefined_seeds():
    recs = [{"base_accuracy": 0.3, "tuned_accuracy": 0.9, "gain": 0.6,
             "forks": {"share_in_topk": 1.0, "entropy_ratio": 4.0},
             "recovered": {"oracle": 1.0, "random": 0.1, "entropy": None}},
            {"base_accuracy": 0.3, "tuned_accuracy": 0.3, "gain": 0.0,
             "forks": {"share_in_topk": 0.5, "entropy_ratio": 2.0},
             "recovered": {"oracle": None, "random": None, "entropy": None}}]
    agg = aggregate(recs)
    assert set(agg) == set(METRICS)
    assert agg["share_in_topk"]["mean"] == 0.75 and agg["share_in_topk"]["n"] == 2
    assert agg["oracle_recovered"]["mean"] == 1.0 and agg["oracle_recovered"]["n"] == 1
    assert agg["entropy_recovered"] is None and agg["branches"] is None


def test_recovered_only_where_the_tuned_model_gains():
    gr = {"oracle": 3.0, "random": 0.5, "entropy": 1.0}
    assert recovered({"accuracy": {"base": 0.3, "rl": 0.2}, "gain_recovered": gr}) == dict.fromkeys(gr)
    assert recovered({"accuracy": {"base": 0.3, "rl": 0.3}, "gain_recovered": dict.fromkeys(gr)}) == dict.fromkeys(gr)
    assert recovered({"accuracy": {"base": 0.2, "rl": 0.6}, "gain_recovered": gr}) == gr
