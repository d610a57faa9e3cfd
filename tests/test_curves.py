"""Compute-matched curves: FLOPs-to-target, the plateau stopping rule, bootstrap intervals, comparisons."""

import math
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forklens.analysis.curves import (Curve, PlateauStopper, accuracy_at, best_so_far, bootstrap_ci, compare_methods,
                                      curve_from_metrics, flops_ratio, flops_ratio_lb, flops_to_target, mean_curve, method_report,
                                      numeric_leaves, paired_difference, plateau_target, stop_index,
                                      summarize_seeds)

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
acc = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@st.composite
def curves(draw, min_size=1, max_size=12):
    accs = draw(st.lists(acc, min_size=min_size, max_size=max_size))
    steps = draw(st.lists(st.floats(min_value=0.0, max_value=1e10), min_size=len(accs), max_size=len(accs)))
    flops, total = [], 0.0
    for s in steps:
        total += s
        flops.append(total)
    return Curve(tuple(flops), tuple(accs))


@settings(max_examples=200, deadline=None)
@given(st.lists(finite, min_size=1, max_size=12), st.integers(0, 10_000))
def test_bootstrap_interval_contains_the_mean_and_lies_within_the_data(values, seed):
    ci = bootstrap_ci(values, resamples=300, seed=seed)
    assert ci.mean == pytest.approx(math.fsum(values) / len(values), rel=1e-12, abs=1e-12)
    assert ci.low <= ci.mean <= ci.high
    assert min(values) - 1e-9 <= ci.low and ci.high <= max(values) + 1e-9
    assert ci.n == len(values)


@settings(max_examples=50, deadline=None)
@given(st.lists(finite, min_size=2, max_size=8))
def test_bootstrap_is_deterministic_in_its_seed(values):
    assert bootstrap_ci(values, resamples=200, seed=3) == bootstrap_ci(values, resamples=200, seed=3)


def test_bootstrap_of_constant_values_is_a_point_and_of_one_value_too():
    assert bootstrap_ci([0.7] * 5).as_dict() == {"mean": 0.7, "low": 0.7, "high": 0.7, "n": 5, "level": 0.95}
    assert bootstrap_ci([2.0]).low == bootstrap_ci([2.0]).high == 2.0


def test_bootstrap_interval_matches_the_percentile_definition():
    # 0 and 1 with equal weight: the bootstrap mean of 2 draws is 0, 0.5 or 1 with prob 1/4, 1/2, 1/4,
    # so the 2.5% and 97.5% percentiles are 0 and 1 and the 50% interval is about [0.5, 0.5]
    ci = bootstrap_ci([0.0, 1.0], resamples=20_000, seed=1)
    assert (ci.low, ci.high) == (0.0, 1.0)
    narrow = bootstrap_ci([0.0, 1.0], level=0.4, resamples=20_000, seed=1)
    assert narrow.low == pytest.approx(0.5) and narrow.high == pytest.approx(0.5)


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="finite"):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([1.0], level=1.0)


@settings(max_examples=100, deadline=None)
@given(curves())
def test_best_so_far_is_monotone_and_bounds_the_curve(curve):
    best = best_so_far(curve)
    assert all(a <= b for a, b in zip(best.accuracy, best.accuracy[1:]))
    assert all(b >= a for a, b in zip(curve.accuracy, best.accuracy))
    assert best.accuracy[-1] == max(curve.accuracy)


@settings(max_examples=100, deadline=None)
@given(st.lists(curves(), min_size=1, max_size=4), st.lists(st.floats(0, 2e11), min_size=1, max_size=8))
def test_mean_curve_is_monotone_in_the_budget(cs, grid):
    grid = sorted(grid)
    means = [m for m in mean_curve(cs, grid) if m is not None]
    assert all(a <= b + 1e-12 for a, b in zip(means, means[1:]))


@settings(max_examples=100, deadline=None)
@given(curves(), acc)
def test_flops_to_target_is_the_first_evaluation_at_or_above_it(curve, target):
    r = flops_to_target(curve, target)
    hits = [f for f, a in zip(curve.flops, curve.accuracy) if a >= target - 1e-12]  # the documented tolerance
    assert r.reached == bool(hits)
    assert r.flops == (hits[0] if hits else None)
    if r.reached:  # and nothing below that budget reached it
        assert accuracy_at(curve, r.flops) >= target - 1e-12


def test_flops_to_target_by_hand():
    c = Curve((1e9, 2e9, 3e9, 4e9), (0.3, 0.84, 0.965, 0.96))
    assert flops_to_target(c, 0.84).flops == 2e9
    assert flops_to_target(c, 0.9).flops == 3e9
    assert not flops_to_target(c, 0.97).reached and flops_to_target(c, 0.97).flops is None


def test_a_seed_that_never_reaches_the_target_is_reported_not_dropped():
    curves_ = {0: Curve((1.0, 2.0), (0.5, 0.9)), 1: Curve((1.0, 2.0), (0.5, 0.6)), 2: Curve((1.0, 3.0), (0.2, 0.95))}
    r = method_report("m", curves_, 0.9)
    d = r.as_dict()
    assert d["n_seeds"] == 3 and d["n_unreached"] == 1 and d["unreached_seeds"] == [1]
    assert d["per_seed"] == {"0": 2.0, "1": None, "2": 3.0}
    assert d["flops_to_target"]["mean"] == 2.5 and d["flops_to_target"]["n"] == 2
    none = method_report("m", {0: Curve((1.0,), (0.1,))}, 0.9).as_dict()
    assert none["flops_to_target"] is None and none["total_flops"] is None and none["n_unreached"] == 1


def test_search_cost_is_its_own_column_and_in_the_total():
    r = method_report("fork", {0: Curve((10.0,), (0.9,)), 1: Curve((30.0,), (0.9,))}, 0.9, search_flops=100.0)
    d = r.as_dict()
    assert d["flops_to_target"]["mean"] == 20.0 and d["search_flops"] == 100.0 and d["total_flops"] == 120.0
    with pytest.raises(ValueError, match="search_flops"):
        method_report("x", {0: Curve((1.0,), (1.0,))}, 0.5, search_flops=-1)


def test_flops_ratio_with_and_without_search():
    a = method_report("a", {0: Curve((10.0,), (1.0,)), 1: Curve((10.0,), (1.0,))}, 0.9, search_flops=10.0)
    b = method_report("b", {0: Curve((40.0,), (1.0,)), 1: Curve((40.0,), (1.0,))}, 0.9)
    assert flops_ratio(a, b, include_search=False).as_dict()["mean"] == 0.25
    with_s = flops_ratio(a, b)
    assert (with_s.mean, with_s.low, with_s.high) == (0.5, 0.5, 0.5)
    never = method_report("c", {0: Curve((1.0,), (0.0,))}, 0.9)
    assert flops_ratio(never, b) is None


def test_censored_ratio_counts_an_unreached_seed_with_its_whole_budget():
    # seed 0 of a reaches 0.9 at 30 (exact 30 / 10 = 3); seed 1 never does within its budget of 50
    a = {0: Curve((10.0, 30.0), (0.5, 0.9)), 1: Curve((10.0, 50.0), (0.5, 0.6))}
    b = {0: Curve((10.0,), (0.95,)), 1: Curve((10.0, 20.0), (0.8, 0.9))}
    ra, rb = method_report("a", a, 0.9), method_report("b", b, 0.9)
    budgets = {s: c.flops[-1] for s, c in a.items()}
    lb = flops_ratio_lb(ra, rb, budgets)
    assert lb["per_seed"] == {"0": {"ratio_lb": 3.0, "censored": False}, "1": {"ratio_lb": 2.5, "censored": True}}
    assert (lb["n_exact"], lb["n_censored"], lb["n_reference_unreached"], lb["censored_min"]) == (1, 1, 0, 2.5)
    assert lb["mean"] == pytest.approx(2.75) and 2.5 <= lb["low"] <= 2.75 <= lb["high"] <= 3.0
    assert lb["lower_bound"] is True and lb["n"] == 2 and lb["level"] == 0.95
    assert flops_ratio(ra, rb).mean == pytest.approx(30 / 15)  # the old field: reached seeds only, unchanged
    # search cost on both sides, as in flops_ratio: (30 + 10) / 10 and (50 + 10) / 20
    searched = flops_ratio_lb(method_report("a", a, 0.9, search_flops=10.0), rb, budgets)
    assert [v["ratio_lb"] for v in searched["per_seed"].values()] == [4.0, 3.0]
    assert flops_ratio_lb(method_report("a", a, 0.9, search_flops=10.0), rb, budgets,
                          include_search=False)["mean"] == pytest.approx(2.75)


def test_censored_ratio_when_every_seed_is_censored_or_the_reference_misses():
    never = {0: Curve((10.0, 40.0), (0.1, 0.2)), 1: Curve((10.0, 60.0), (0.1, 0.3))}
    b = {0: Curve((10.0,), (0.95,)), 1: Curve((10.0, 20.0), (0.8, 0.9))}
    ra, rb = method_report("a", never, 0.9), method_report("b", b, 0.9)
    lb = flops_ratio_lb(ra, rb, {0: 40.0, 1: 60.0})
    assert flops_ratio(ra, rb) is None  # the old ratio is missing ...
    assert [v["ratio_lb"] for v in lb["per_seed"].values()] == [4.0, 3.0]  # ... the censored one is not
    assert (lb["n_exact"], lb["n_censored"], lb["censored_min"], lb["mean"]) == (0, 2, 3.0, 3.5)
    # the reference never reaches the target on seed 1: no bound there, listed, not dropped
    half = method_report("b", {0: b[0], 1: Curve((10.0, 20.0), (0.8, 0.85))}, 0.9)
    lb = flops_ratio_lb(ra, half, {0: 40.0, 1: 60.0})
    assert lb["per_seed"]["1"] == {"ratio_lb": None, "censored": True}
    assert (lb["n"], lb["mean"], lb["n_censored"], lb["n_reference_unreached"]) == (1, 4.0, 1, 1)
    assert flops_ratio_lb(ra, method_report("b", {0: Curve((1.0,), (0.1,))}, 0.9), {0: 40.0}) is None
    with pytest.raises(ValueError, match="seed 1 of 'a' never reached the target and has no budget"):
        flops_ratio_lb(ra, rb, {0: 40.0})


def test_paired_difference_pairs_by_seed():
    d = paired_difference({0: 0.9, 1: 0.8, 2: 0.7}, {0: 0.8, 1: 0.7, 2: 0.6, 3: 0.0})
    assert d.mean == pytest.approx(0.1) and d.low == pytest.approx(0.1) and d.high == pytest.approx(0.1)
    assert d.n == 3
    with pytest.raises(ValueError, match="no shared seeds"):
        paired_difference({0: 1.0}, {1: 1.0})


def test_plateau_stopper_rule():
    s = PlateauStopper(patience=2, min_delta=0.01)
    # 0.5 best; 0.505 is not an improvement by >= 0.01; 0.52 is; then two stale evaluations stop it
    assert [s.update(a) for a in (0.5, 0.505, 0.52, 0.525, 0.51)] == [False, False, False, False, True]
    assert s.best == 0.52 and s.best_index == 2
    restored = PlateauStopper(2, 0.01)
    restored.load_state_dict(s.state_dict())
    assert restored.state_dict() == s.state_dict()
    with pytest.raises(ValueError, match="patience"):
        PlateauStopper(patience=0)
    with pytest.raises(ValueError, match="finite"):
        PlateauStopper().update(float("nan"))


@settings(max_examples=100, deadline=None)
@given(curves(min_size=1), st.integers(1, 4), st.floats(0.0, 0.1))
def test_stop_index_never_stops_while_improving(curve, patience, delta):
    i = stop_index(curve, patience, delta)
    assert 0 <= i < len(curve.accuracy)
    if i < len(curve.accuracy) - 1:  # it stopped: the last `patience` evaluations did not improve enough
        best_before = max(curve.accuracy[: i + 1 - patience])
        assert all(a < best_before + delta + 1e-12 for a in curve.accuracy[i + 1 - patience: i + 1])


def test_curve_validation_and_reading_from_metrics():
    with pytest.raises(ValueError, match="must not decrease"):
        Curve((2.0, 1.0), (0.1, 0.2))
    with pytest.raises(ValueError, match="2 FLOP values but 1"):
        Curve((1.0, 2.0), (0.1,))
    rows = [{"step": 1, "flops": 5.0}, {"step": 2, "flops": 10.0, "val/accuracy": 0.5}, {"flops": 15.0, "val/accuracy": 0.75}]
    assert curve_from_metrics(rows) == Curve((10.0, 15.0), (0.5, 0.75))
    with pytest.raises(ValueError, match="no row has"):
        curve_from_metrics(rows[:1])


def test_compare_methods_end_to_end():
    grpo = {s: Curve((1e10, 2e10, 3e10, 4e10), (0.4, 0.84, 0.965 - 0.005 * s, 0.96)) for s in range(5)}
    fork = {s: Curve((5e9, 1e10), (0.7, 0.85 - 0.01 * s)) for s in range(5)}
    out = compare_methods({"grpo": grpo, "fork-contrast": fork}, "grpo", search_flops={"fork-contrast": 4e10})
    assert out["target"] == pytest.approx(0.955) and out["target_rule"].startswith("best plateau")
    assert out["methods"]["fork-contrast"]["n_unreached"] == 5  # fork never comes within a point of GRPO
    assert out["ratios"]["fork-contrast/grpo"]["with_search"] is None
    fixed = compare_methods({"grpo": grpo, "fork-contrast": fork}, "grpo", target=0.8,
                            search_flops={"fork-contrast": 4e10})
    r = fixed["ratios"]["fork-contrast/grpo"]
    assert r["without_search"]["mean"] == pytest.approx(1e10 / 2e10)  # fork reaches 0.8 at 1e10 (seeds 0-4 >= 0.81)
    assert r["with_search"]["mean"] == pytest.approx(5e10 / 2e10)
    lb = fixed["flops_to_target_ratio_lb"]["fork-contrast/grpo"]
    assert lb["without_search"]["mean"] == pytest.approx(0.5) and lb["without_search"]["n_censored"] == 0
    # at the best-plateau target (0.955) every fork seed is censored at its whole budget, 1e10, over GRPO's
    # 3e10 (seeds 0-2) or 4e10 (seeds 3-4, at 0.95 and 0.945 on the third evaluation)
    censored = out["flops_to_target_ratio_lb"]["fork-contrast/grpo"]["without_search"]
    assert censored["n_censored"] == 5 and censored["mean"] == pytest.approx((3 / 3 + 2 / 4) / 5)
    diff = fixed["plateau_difference"]["fork-contrast-grpo"]
    expected = statistics.mean((0.85 - 0.01 * s) - max(0.965 - 0.005 * s, 0.96) for s in range(5))
    assert diff["mean"] == pytest.approx(expected) and diff["high"] < 0
    with pytest.raises(ValueError, match="reference"):
        compare_methods({"a": grpo}, "b")
    with pytest.raises(ValueError, match="unknown method"):
        compare_methods({"a": grpo}, "a", search_flops={"b": 1.0})


def test_plateau_target_and_leaves_and_seed_summary():
    assert plateau_target([Curve((1.0,), (0.5,)), Curve((1.0, 2.0), (0.2, 0.9))]) == pytest.approx(0.89)
    assert numeric_leaves({"a": {"b": 1, "c.d": 2.5, "s": "x", "t": True, "n": float("nan")}}) == {
        "a.b": 1.0, "a.[c.d]": 2.5}
    s = summarize_seeds({0: {"acc": 0.5, "only0": 1}, 1: {"acc": 0.7}})
    assert s["per_seed"] == {"acc": [0.5, 0.7]} and s["partial"] == {"only0": [0]}
    assert s["aggregate"]["acc"]["mean"] == pytest.approx(0.6)


def test_plot_accuracy_vs_flops_writes_png_and_svg(tmp_path):
    from forklens.report.plots import plot_curves_vs_flops

    curves_ = {"grpo": {0: ([1e9, 2e9, 3e9], [0.3, 0.8, 0.95]), 1: ([1.5e9, 3e9], [0.4, 0.9])},
               "fork-contrast": {0: ([5e8, 1e9], [0.6, 0.85])}}
    paths = plot_curves_vs_flops(curves_, tmp_path / "acc_vs_flops")
    assert [p.name for p in paths] == ["acc_vs_flops.png", "acc_vs_flops.svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and b"<svg" in paths[1].read_bytes()[:400]
    svg = paths[1].read_text()
    assert "grpo (mean of 2 seeds)" in svg and "fork-contrast (mean of 1 seed)" in svg
