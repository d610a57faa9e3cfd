"""Tests for the unbiased pass@k estimator, its tables, the samples loader and `forklens passk`."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forklens.analysis.passk import (
    PassAtKValueError,
    boundary_sets,
    boundary_sets_to_json,
    default_ks,
    load_samples,
    pass_at_k,
    pass_at_k_table,
    sample_counts,
)
from forklens.cli import main
from forklens.errors import DataError

TOL = 1e-12


def exact_pass_at_k(n: int, c: int, k: int) -> Fraction:
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def make_records(model: str, T: int | None, outcomes: dict) -> list[dict]:
    """``outcomes``: {problem_id: list of bools}."""
    records = []
    for pid, results in outcomes.items():
        for ok in results:
            rec = {"problem_id": pid, "correct": ok, "model": model}
            if T is not None:
                rec["T"] = T
            records.append(rec)
    return records


def write_jsonl(path, lines) -> None:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))


# ------------------------------------------------------------------------------------ estimator


@st.composite
def nck(draw):
    n = draw(st.integers(min_value=1, max_value=40))
    c = draw(st.integers(min_value=0, max_value=n))
    k = draw(st.integers(min_value=1, max_value=n))
    return n, c, k


@settings(max_examples=400, deadline=None)
@given(nck())
def test_stable_form_matches_exact_combinatorial_form(args):
    n, c, k = args
    assert abs(pass_at_k(n, c, k) - float(exact_pass_at_k(n, c, k))) <= TOL


def test_stable_form_matches_exact_exhaustively_small_n():
    for n in range(1, 65):  # every 1 <= k <= n <= 64, 0 <= c <= n, against rational arithmetic
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert abs(pass_at_k(n, c, k) - float(exact_pass_at_k(n, c, k))) <= TOL, (n, c, k)


@pytest.mark.parametrize("n,k", [(1, 1), (5, 1), (5, 5), (40, 7), (256, 128)])
def test_no_correct_gives_zero(n, k):
    assert pass_at_k(n, 0, k) == 0.0


@pytest.mark.parametrize("n,k", [(1, 1), (5, 3), (40, 40), (256, 1)])
def test_all_correct_gives_one(n, k):
    assert pass_at_k(n, n, k) == 1.0


@pytest.mark.parametrize("n,c,k", [(10, 8, 3), (10, 1, 10), (4, 2, 3), (256, 200, 64)])
def test_fewer_incorrect_than_k_gives_one(n, c, k):
    assert n - c < k
    assert pass_at_k(n, c, k) == 1.0


def test_known_values():
    assert abs(pass_at_k(10, 3, 1) - 0.3) <= TOL
    assert abs(pass_at_k(4, 1, 2) - 0.5) <= TOL
    assert abs(pass_at_k(200, 13, 10) - float(exact_pass_at_k(200, 13, 10))) <= TOL


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=0, max_value=4096))
def test_n_4096_finite_bounded_and_monotone_in_k(c):
    values = [pass_at_k(4096, c, k) for k in range(1, 4097, 7)] + [pass_at_k(4096, c, 4096)]
    assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values)
    assert all(a <= b + 1e-15 for a, b in zip(values, values[1:]))


def test_large_n_stays_finite_and_monotone_in_k():
    values = [pass_at_k(1024, 3, k) for k in (1, 2, 4, 8, 16, 64, 256, 1021, 1022)]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert values == sorted(values)
    assert abs(values[-2] - float(exact_pass_at_k(1024, 3, 1021))) <= TOL  # 1 - 1 / C(1024, 3)
    assert values[-2] < 1.0 and values[-1] == 1.0


def test_k_above_n_raises_value_error_derived_data_error():
    with pytest.raises(PassAtKValueError, match=r"k <= n") as info:
        pass_at_k(4, 1, 5)
    assert isinstance(info.value, DataError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("n,c,k", [(4, 5, 1), (4, -1, 1), (4, 1, 0), (-1, 0, 1)])
def test_invalid_arguments_raise(n, c, k):
    with pytest.raises(PassAtKValueError):
        pass_at_k(n, c, k)


def test_non_integer_arguments_raise():
    with pytest.raises(PassAtKValueError):
        pass_at_k(4.0, 1, 1)
    with pytest.raises(PassAtKValueError):
        pass_at_k(4, True, 1)


# ------------------------------------------------------------------------------------ tables


def test_table_mean_over_problems():
    outcomes = {"a": [True, False, False, False], "b": [True, True, False, False], "c": [False] * 4}
    table = pass_at_k_table(make_records("m", None, outcomes), ks=[1, 2, 4])
    assert table.ks == [1, 2, 4]
    per = table.per_problem["m"][0]
    for pid, results in outcomes.items():
        n, c = len(results), sum(results)
        assert table.counts["m"][0][pid] == (n, c)
        for k in (1, 2, 4):
            assert abs(per[pid][k] - float(exact_pass_at_k(n, c, k))) <= TOL
    for k in (1, 2, 4):
        expected = sum(float(exact_pass_at_k(len(r), sum(r), k)) for r in outcomes.values()) / 3
        assert abs(table.mean["m"][0][k] - expected) <= TOL
    assert abs(table.mean["m"][0][1] - (0.25 + 0.5 + 0.0) / 3) <= TOL
    assert abs(table.mean["m"][0][2] - (0.5 + 5 / 6 + 0.0) / 3) <= TOL
    assert table.mean["m"][0][4] == pytest.approx(2 / 3, abs=TOL)
    assert table.skipped == [] and table.skipped_means == []


def test_table_defaults_model_and_T():
    table = pass_at_k_table([{"problem_id": 1, "correct": 1}, {"problem_id": 1, "correct": 0}], ks=[1])
    assert list(table.mean) == ["model"]
    assert list(table.mean["model"]) == [0]
    assert table.mean_json() == {"model": {"0": {"1": 0.5}}}


def test_table_groups_by_model_and_T():
    records = (
        make_records("base", 0, {"p": [True, False]})
        + make_records("base", 4, {"p": [True, True]})
        + make_records("rl", 0, {"p": [False, False]})
    )
    table = pass_at_k_table(records, ks=[1, 2])
    assert table.mean == {
        "base": {0: {1: 0.5, 2: 1.0}, 4: {1: 1.0, 2: 1.0}},
        "rl": {0: {1: 0.0, 2: 0.0}},
    }
    assert json.loads(json.dumps(table.mean_json()))["base"]["4"]["2"] == 1.0


def test_table_k_above_n_raises_without_skip_policy():
    records = make_records("m", None, {"a": [True] * 8, "b": [False] * 3})
    with pytest.raises(PassAtKValueError, match=r"problem_id='b' has n=3"):
        pass_at_k_table(records, ks=[1, 4])


def test_table_k_above_n_skipped_with_policy():
    records = make_records("m", None, {"a": [True, False] * 4, "b": [False, True, False]})
    table = pass_at_k_table(records, ks=[1, 2, 4, 8], skip_k_above_n=True)
    assert set(table.per_problem["m"][0]["a"]) == {1, 2, 4, 8}
    assert set(table.per_problem["m"][0]["b"]) == {1, 2}
    assert {(s["problem_id"], s["k"], s["n"]) for s in table.skipped} == {("b", 4, 3), ("b", 8, 3)}
    # No mean from a partial population: k=4 and k=8 are left out and reported.
    assert set(table.mean["m"][0]) == {1, 2}
    assert {s["k"] for s in table.skipped_means} == {4, 8}
    assert abs(table.mean["m"][0][1] - (0.5 + 1 / 3) / 2) <= TOL
    row_b = [r for r in table.per_problem_rows() if r["problem_id"] == "b"][0]
    assert row_b["skipped_k"] == [4, 8] and set(row_b["pass_at_k"]) == {"1", "2"}


def test_n_may_differ_across_models_each_problem_limited_by_its_own_n():
    records = make_records("big", 0, {"p": [True] + [False] * 15}) + make_records("small", 0, {"p": [True, False]})
    with pytest.raises(PassAtKValueError):
        pass_at_k_table(records, ks=[1, 2, 4])
    table = pass_at_k_table(records, ks=[1, 2, 4], skip_k_above_n=True)
    assert set(table.mean["big"][0]) == {1, 2, 4}
    assert set(table.mean["small"][0]) == {1, 2}
    assert default_ks(sample_counts(records)) == [1, 2]


def test_default_ks_are_powers_of_two_up_to_min_n():
    counts = sample_counts(make_records("m", 0, {"a": [True] * 13, "b": [False] * 20}))
    assert default_ks(counts) == [1, 2, 4, 8]
    assert default_ks(sample_counts(make_records("m", 0, {"a": [True]}))) == [1]


def test_table_rejects_bad_ks_and_empty_records():
    with pytest.raises(PassAtKValueError):
        pass_at_k_table(make_records("m", 0, {"a": [True]}), ks=[])
    with pytest.raises(PassAtKValueError):
        pass_at_k_table(make_records("m", 0, {"a": [True]}), ks=[0, 1])
    with pytest.raises(DataError, match="no sample records"):
        pass_at_k_table([], ks=[1])
    with pytest.raises(DataError, match=r"record 1: missing required field 'correct'"):
        pass_at_k_table([{"problem_id": "a", "correct": True}, {"problem_id": "a"}], ks=[1])


# ------------------------------------------------------------------------------------ boundary sets


def test_boundary_sets_hand_built():
    records = (
        make_records("A", 0, {"p1": [True, False, False, False], "p2": [False] * 4, "p3": [True] * 4,
                              "p4": [True, False, False, False]})
        + make_records("B", 0, {"p1": [False] * 4, "p2": [False, False, True, False], "p3": [True] * 4})
        + make_records("C", 0, {"p1": [False] * 4, "p2": [False] * 4, "p3": [False] * 4, "p4": [False] * 4})
    )
    table = pass_at_k_table(records, ks=[1, 4])
    sets = boundary_sets(table, 4)
    assert sets["k"] == 4 and sets["skipped"] == []
    t0 = sets["by_T"][0]
    assert t0["models"] == ["A", "B", "C"]
    assert t0["solved"] == {"A": ["p1", "p3", "p4"], "B": ["p2", "p3"], "C": []}
    assert t0["a_not_b"]["A"]["B"] == ["p1"]  # p4 was never sampled for B: not a B failure
    assert t0["a_not_b"]["B"]["A"] == ["p2"]
    assert t0["a_not_b"]["A"]["C"] == ["p1", "p3", "p4"]
    assert t0["a_not_b"]["C"]["A"] == []
    assert t0["a_not_b"]["B"]["C"] == ["p2", "p3"]
    assert t0["shared_problems"]["A"]["B"] == 3 and t0["shared_problems"]["A"]["C"] == 4
    # pass@k > 0 iff c > 0: the same sets at any k <= n.
    assert boundary_sets(table, 1)["by_T"] == sets["by_T"]
    for model, solved in t0["solved"].items():
        for pid, values in table.per_problem[model][0].items():
            assert (values[4] > 0) == (pid in solved)
    dumped = json.loads(json.dumps(boundary_sets_to_json(sets)))
    assert dumped["by_T"]["0"]["a_not_b"]["A"]["B"] == ["p1"]


def test_boundary_sets_per_T_and_budget_above_n():
    records = (
        make_records("A", 0, {"p": [True, False]}) + make_records("B", 0, {"p": [False, False]})
        + make_records("A", 2, {"p": [False, False]}) + make_records("B", 2, {"p": [False, True]})
    )
    table = pass_at_k_table(records, ks=[1, 2])
    sets = boundary_sets(table, 2)
    assert sets["by_T"][0]["a_not_b"] == {"A": {"B": ["p"]}, "B": {"A": []}}
    assert sets["by_T"][2]["a_not_b"] == {"A": {"B": []}, "B": {"A": ["p"]}}
    with pytest.raises(PassAtKValueError, match="budget k=3"):
        boundary_sets(table, 3)
    skipping = pass_at_k_table(records, ks=[1, 2, 3], skip_k_above_n=True)
    skipped = boundary_sets(skipping, 3)
    assert len(skipped["skipped"]) == 4
    assert skipped["by_T"][0]["solved"] == {"A": [], "B": []}


# ------------------------------------------------------------------------------------ loading


def test_load_samples_normalises(tmp_path):
    path = tmp_path / "s.jsonl"
    write_jsonl(
        path,
        [
            {"problem_id": "a", "correct": True, "extra": 1},
            "",
            {"problem_id": 7, "correct": 0, "T": 3, "model": "rl"},
            {"problem_id": "a", "correct": 1, "T": None, "model": None},
        ],
    )
    assert load_samples(path) == [
        {"model": "model", "T": 0, "problem_id": "a", "correct": True},
        {"model": "rl", "T": 3, "problem_id": 7, "correct": False},
        {"model": "model", "T": 0, "problem_id": "a", "correct": True},
    ]


def test_load_samples_missing_file(tmp_path):
    with pytest.raises(DataError, match="samples file not found"):
        load_samples(tmp_path / "nope.jsonl")


def test_load_samples_directory(tmp_path):
    with pytest.raises(DataError, match="not a file"):
        load_samples(tmp_path)


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_load_samples_empty_file(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match="samples file is empty"):
        load_samples(path)


@pytest.mark.parametrize(
    "bad_line,pattern",
    [
        ('{"problem_id": "a", "correct": tru}', r"malformed JSON"),
        ('[1, 2]', r"expected a JSON object"),
        ('{"correct": true}', r"missing required field 'problem_id'"),
        ('{"problem_id": "a"}', r"missing required field 'correct'"),
        ('{"T": 1}', r"missing required fields 'problem_id', 'correct'"),
        ('{"problem_id": "a", "correct": 2}', r"'correct' must be true/false or 0/1, got 2"),
        ('{"problem_id": "a", "correct": "yes"}', r"'correct' must be true/false or 0/1, got 'yes'"),
        ('{"problem_id": "a", "correct": 1.0}', r"'correct' must be true/false or 0/1"),
        ('{"problem_id": "a", "correct": null}', r"'correct' must be true/false or 0/1"),
        ('{"problem_id": null, "correct": true}', r"'problem_id' must be"),
        ('{"problem_id": "a", "correct": true, "T": -1}', r"'T' \(tool-round cap\)"),
        ('{"problem_id": "a", "correct": true, "T": "4"}', r"'T' \(tool-round cap\)"),
        ('{"problem_id": "a", "correct": true, "model": 3}', r"'model' must be"),
    ],
)
def test_load_samples_bad_lines_report_line_number(tmp_path, bad_line, pattern):
    path = tmp_path / "bad.jsonl"
    write_jsonl(path, [{"problem_id": "a", "correct": True}, "", {"problem_id": "b", "correct": False}, bad_line])
    with pytest.raises(DataError, match=pattern) as info:
        load_samples(path)
    assert f"{path}:4:" in str(info.value)


# ------------------------------------------------------------------------------------ CLI


def _write_two_model_samples(path):
    records = (
        make_records("base", 0, {"p1": [True, False, False, False], "p2": [False] * 4, "p3": [False] * 4})
        + make_records("base", 2, {"p1": [True, True, False, False], "p2": [False] * 4, "p3": [True, False, False, False]})
        + make_records("rl", 0, {"p1": [True, True, True, False], "p2": [True, False, False, False], "p3": [False] * 4})
        + make_records("rl", 2, {"p1": [True] * 4, "p2": [True, True, False, False], "p3": [False] * 4})
    )
    write_jsonl(path, records)
    return records


def test_cli_end_to_end(tmp_path, capsys):
    samples = tmp_path / "samples.jsonl"
    records = _write_two_model_samples(samples)
    out = tmp_path / "out"
    assert main(["passk", "--samples", str(samples), "--out", str(out)]) == 0

    summary = json.loads((out / "summary.json").read_text())
    assert summary["ks"] == [1, 2, 4]  # powers of two up to the minimum n = 4
    expected = pass_at_k_table(records, [1, 2, 4]).mean_json()
    assert set(summary["pass_at_k"]) == {"base", "rl"}
    for model, by_T in expected.items():
        assert set(summary["pass_at_k"][model]) == {"0", "2"}
        for T, by_k in by_T.items():
            for k, value in by_k.items():
                assert abs(summary["pass_at_k"][model][T][k] - value) <= TOL
    assert abs(summary["pass_at_k"]["rl"]["0"]["1"] - (0.75 + 0.25 + 0) / 3) <= TOL
    boundary = summary["boundary_sets"]
    assert boundary["k"] == 4
    assert boundary["by_T"]["0"]["a_not_b"]["rl"]["base"] == ["p2"]
    assert boundary["by_T"]["2"]["a_not_b"]["base"]["rl"] == ["p3"]

    rows = [json.loads(line) for line in (out / "per_problem.jsonl").read_text().splitlines()]
    assert len(rows) == 12
    assert {"model", "T", "problem_id", "n", "c", "pass_at_k", "skipped_k"} <= set(rows[0])

    png = out / "pass_at_k.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "pass_at_k.svg").read_text().lstrip().startswith(("<?xml", "<svg"))

    printed = capsys.readouterr().out
    assert "summary.json" in printed and "pass_at_k.png" in printed


def test_cli_single_model_explicit_k(tmp_path):
    samples = tmp_path / "s.jsonl"
    write_jsonl(samples, make_records("m", None, {"a": [True, False] * 4, "b": [False] * 8}))
    out = tmp_path / "o"
    assert main(["passk", "--samples", str(samples), "--k", "1, 8", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["boundary_sets"] is None
    assert set(summary["pass_at_k"]) == {"m"} and set(summary["pass_at_k"]["m"]["0"]) == {"1", "8"}
    assert abs(summary["pass_at_k"]["m"]["0"]["1"] - 0.25) <= TOL
    assert abs(summary["pass_at_k"]["m"]["0"]["8"] - 0.5) <= TOL
    assert (out / "pass_at_k.png").stat().st_size > 0


def test_cli_k_above_n_fails_then_skips(tmp_path, capsys):
    samples = tmp_path / "s.jsonl"
    write_jsonl(samples, [{"problem_id": pid, "correct": ok} for pid, results in
                          {"a": [True, False, False, False], "b": [True, False]}.items() for ok in results])
    out = tmp_path / "o"
    assert main(["passk", "--samples", str(samples), "--k", "1,2,4", "--out", str(out)]) == 2
    assert "k <= n" in capsys.readouterr().err
    assert not (out / "summary.json").exists()

    assert main(["passk", "--samples", str(samples), "--k", "1,2,4", "--skip-k-above-n", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["pass_at_k"]["model"]["0"]) == {"1", "2"}
    assert summary["skipped"] == [{"model": "model", "T": 0, "problem_id": "b", "n": 2, "k": 4}]
    assert summary["skipped_means"][0]["k"] == 4


def test_cli_bad_file_reports_line(tmp_path, capsys):
    samples = tmp_path / "s.jsonl"
    write_jsonl(samples, [{"problem_id": "a", "correct": True}, "{oops"])
    assert main(["passk", "--samples", str(samples), "--out", str(tmp_path / "o")]) == 2
    assert f"{samples}:2: malformed JSON" in capsys.readouterr().err


def test_cli_missing_file(tmp_path, capsys):
    assert main(["passk", "--samples", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert "samples file not found" in capsys.readouterr().err


def test_cli_rejects_bad_k_and_samples_with_model(tmp_path):
    samples = tmp_path / "s.jsonl"
    write_jsonl(samples, make_records("m", None, {"a": [True, False]}))
    with pytest.raises(SystemExit) as info:
        main(["passk", "--samples", str(samples), "--k", "1,x"])
    assert info.value.code == 2
    with pytest.raises(SystemExit):  # --samples (evaluate saved samples) and --model (generate) exclude each other
        main(["passk", "--samples", str(samples), "--model", "some/dir"])
