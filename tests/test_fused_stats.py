"""The few-pass per-token statistics of `forklens diff` against their elementwise definition (issue 17)."""

from __future__ import annotations

import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from forklens.analysis import diff_fused
from forklens.analysis.diff_fused import fused_pair_stats, use_fused
from forklens.analysis.diff_scores import _exact_where_nonfinite, chunk_pair_stats, chunk_pair_stats_reference, pair_stats


def _fused_eager(lb, lr, targets, k):
    return _exact_where_nonfinite(fused_pair_stats(lb, lr, targets, k, compiled=False), lb, lr, targets, k)


def _check(lb, lr, targets, k=5, atol=2e-5, stats=chunk_pair_stats):
    fast = stats(lb, lr, targets, k)
    ref = chunk_pair_stats_reference(lb, lr, targets, k)
    for key in ("rl_token", "rank_under_base"):
        assert torch.equal(fast[key], ref[key]), key
    for key in ("base_logprob", "rl_logprob", "base_logprob_token", "rl_logprob_token", "base_entropy",
                "rl_entropy", "kl", "base_topk_logprobs", "rl_topk_logprobs"):
        assert torch.allclose(fast[key], ref[key], atol=atol, rtol=1e-5, equal_nan=True), key
    # top-k ids may only differ between values equal to float32 precision
    for side in ("base", "rl"):
        differ = fast[f"{side}_topk_ids"] != ref[f"{side}_topk_ids"]
        gap = (fast[f"{side}_topk_logprobs"] - ref[f"{side}_topk_logprobs"]).abs()
        assert bool((gap[differ] < 1e-5).all()), side
    return fast


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 12), vocab=st.sampled_from([7, 31, 128, 256, 384, 1000]),
       scale=st.sampled_from([0.1, 1.0, 8.0, 40.0]), seed=st.integers(0, 10_000))
@pytest.mark.parametrize("stats", [chunk_pair_stats, _fused_eager], ids=["few-pass", "fused-formulas"])
def test_fast_statistics_equal_the_definition(rows, vocab, scale, seed, stats):
    g = torch.Generator().manual_seed(seed)
    lb = torch.randn(rows, vocab, generator=g) * scale
    lr = lb + torch.randn(rows, vocab, generator=g) * scale * 0.5
    _check(lb, lr, torch.randint(0, vocab, (rows,), generator=g), stats=stats)


@pytest.mark.parametrize("stats", [chunk_pair_stats, _fused_eager], ids=["few-pass", "fused-formulas"])
def test_masked_logits_fall_back_to_the_definition(stats):
    g = torch.Generator().manual_seed(0)
    lb, lr = torch.randn(6, 256, generator=g), torch.randn(6, 256, generator=g)
    lb[1, :100] = float("-inf")  # a masked vocabulary slice in the base
    lr[3, 5] = float("-inf")
    lr[4, 200:] = float("-inf")
    out = _check(lb, lr, torch.tensor([0, 150, 3, 4, 5, 6]), stats=stats)
    assert torch.isfinite(out["base_entropy"]).all() and torch.isfinite(out["rl_entropy"]).all()
    assert torch.isinf(out["kl"][4]) or out["kl"][4] > 0  # base mass where the RL model has none


@pytest.mark.parametrize("stats", [chunk_pair_stats, _fused_eager], ids=["few-pass", "fused-formulas"])
def test_ties_keep_the_lowest_id_and_shared_rank(stats):
    lb = torch.tensor([[1.0, 3.0, 3.0, 0.0]] * 2)
    lr = torch.tensor([[0.0, 2.0, 2.0, 1.0], [5.0, 0.0, 0.0, 5.0]])
    out = _check(lb, lr, torch.tensor([0, 1]), k=2, stats=stats)
    assert out["rl_token"].tolist() == [1, 0]
    assert out["rank_under_base"].tolist() == [1, 3]


def test_large_vocabulary_blocked_dot_is_as_accurate_as_the_definition():
    g = torch.Generator().manual_seed(1)
    lb = torch.randn(64, 8192, generator=g)
    lr = lb + 0.3 * torch.randn(64, 8192, generator=g)
    fast = chunk_pair_stats(lb, lr, torch.zeros(64, dtype=torch.long), 5)
    ref = chunk_pair_stats_reference(lb, lr, torch.zeros(64, dtype=torch.long), 5)
    lpb, lpr = torch.log_softmax(lb.double(), -1), torch.log_softmax(lr.double(), -1)
    truth = {"base_entropy": -(lpb.exp() * lpb).sum(-1), "kl": (lpb.exp() * (lpb - lpr)).sum(-1)}
    for key, want in truth.items():
        err_fast = (fast[key].double() - want).abs().max()
        err_ref = (ref[key].double() - want).abs().max()
        assert err_fast <= max(2 * err_ref, 1e-6), key
    assert pytest.approx(float(fast["kl"].mean()), rel=1e-5) == float(ref["kl"].mean())


def test_fused_path_choice_follows_the_environment(monkeypatch):
    monkeypatch.setenv("FORKLENS_FUSED_STATS", "1")
    assert use_fused("cpu") is not diff_fused.compiled_failed()
    monkeypatch.setenv("FORKLENS_FUSED_STATS", "0")
    assert use_fused("cuda") is False
    monkeypatch.setenv("FORKLENS_FUSED_STATS", "auto")
    assert use_fused("cpu") is False  # compiling costs more than a short CPU diff saves
    big = diff_fused.CPU_MIN_ELEMENTS
    assert use_fused("cpu", big) is (shutil.which("g++") is not None and not diff_fused.compiled_failed())
    assert use_fused("cpu", big * 0.99) is False
    monkeypatch.setenv("FORKLENS_FUSED_STATS", "sometimes")
    with pytest.raises(ValueError, match="FORKLENS_FUSED_STATS='sometimes'"):
        use_fused("cpu")


def test_failed_compile_warns_once_and_falls_back(monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("no compiler\nmore lines")

    monkeypatch.setattr(diff_fused, "_COMPILED", broken)
    monkeypatch.setattr(diff_fused, "_FAILED", False)
    g = torch.Generator().manual_seed(2)
    lb, lr = torch.randn(3, 50, generator=g), torch.randn(3, 50, generator=g)
    t = torch.tensor([1, 2, 3])
    with pytest.warns(RuntimeWarning, match="no compiler"):
        out = pair_stats(lb, lr, t, 5, fused=True)
    assert diff_fused.compiled_failed()
    want = chunk_pair_stats(lb, lr, t, 5)
    assert all(torch.equal(out[k], want[k]) for k in want)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pair_stats(lb, lr, t, 5, fused=True)  # no second warning: the eager path from now on


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="inductor needs a C compiler")
def test_compiled_fused_statistics_equal_the_definition():
    """The torch.compile'd kernel (C++ on a CPU, Triton on a GPU), over changing shapes (one dynamic compile)."""
    assert not diff_fused.compiled_failed()
    g = torch.Generator().manual_seed(3)
    for rows, vocab, scale in ((5, 300, 1.0), (17, 1024, 8.0), (2, 7, 0.1)):
        lb = torch.randn(rows, vocab, generator=g) * scale
        lr = lb + torch.randn(rows, vocab, generator=g) * scale * 0.5
        lr[0, 3] = float("-inf")  # a masked entry: that row goes to the reference
        _check(lb, lr, torch.randint(0, vocab, (rows,), generator=g), stats=lambda *a: pair_stats(*a, fused=True))
    assert not diff_fused.compiled_failed()
