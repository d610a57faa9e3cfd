"""MaR graders and reward functions, the confidence-shaping arithmetic, on hand-built responses."""

import random

import pytest
from hypothesis import given, settings, strategies as st

from forklens.rewards import compose_rewards
from forklens.rewards.confidence import (POSITIONS, WEIGHTS, AgentForcing, ConfidenceReward, forcing_for,
                                         is_progressive, premature_penalty, spearman, truncate)
from forklens.rewards.metacognition import (AgentGrader, JudgeGrader, TaggedGrader, mar_component, mar_reward,
                                            parse_structured, write_structured)
from forklens.rewards.milestones import milestones
from forklens.tasks.agent import AgentTask
from forklens.tasks.arith import ArithTask
from forklens.tasks.base import Problem

TASK = AgentTask()
HUGE = "x" * 1_000_000


def bridge(depth=3, seed=1):
    return TASK.bridge(random.Random(seed), depth)


def text(segments):
    return "".join(t for t, _ in segments)


# ------------------------------------------------------------------------------------ MaR, agent


def test_agent_grader_gold_partial_and_shortcut():
    p = bridge(3)
    g = AgentGrader(TASK)
    assert g.grade(p, TASK.expert_response(p)) == {"kmr": 1.0, "rmr": 1.0, "cr": 1.0}
    # one hop then answer: in plan order (a = 1) but a shortcut past 2 open steps
    assert g.grade(p, text(TASK.trajectory(p, 1))) == pytest.approx({"kmr": 1 / 3, "rmr": 0.7, "cr": 0.0}, abs=1e-12)
    # no call at all: no reasoning to follow the plan (a = 0)
    assert g.grade(p, "!" + p.answer) == {"kmr": 0.0, "rmr": 0.0, "cr": 1.0}


def test_agent_grader_recovery_counts_in_kmr_and_off_plan_calls_lower_a():
    p = bridge(2)
    m = milestones(p)
    c = f"{m[0]}=x;?A(zzz)=-;{m[1]}=y;!{p.answer}"
    # k = 1 (before the off-plan call), r = 1 (recovered after it); 2 of 3 calls were the next plan step
    assert AgentGrader(TASK).grade(p, c) == pytest.approx({"kmr": 1.0, "rmr": 2 / 3, "cr": 1.0}, abs=1e-12)


@pytest.mark.parametrize("bad", ["", "?A(", "!", HUGE, "?" * 1_000_000 + "!abc", None, 17, b"bytes"])
def test_agent_grader_malformed_is_defined(bad):
    s = AgentGrader(TASK).grade(bridge(2), bad)
    assert set(s) == {"kmr", "rmr", "cr"}
    assert all(v == 0.0 for v in s.values())


def test_agent_grader_not_applicable():
    assert AgentGrader(TASK).grade(Problem("a", "1+1=", "2"), "A=2") == {"kmr": None, "rmr": None, "cr": None}


def test_mar_reward_sums_components_and_names():
    p = bridge(3)
    g = AgentGrader(TASK)
    comps = [TASK.expert_response(p), text(TASK.trajectory(p, 1)), None]
    cols = dict(problem=[p] * 3)
    assert mar_reward(g)(["q"] * 3, comps, **cols) == pytest.approx([3.0, 1 / 3 + 0.7, 0.0], abs=1e-12)
    assert mar_reward(g).__name__ == "mar"
    assert mar_reward(g, ("kmr", "rmr")).__name__ == "mar_kmr_rmr"
    assert mar_component(g, "rmr").__name__ == "rmr"
    assert mar_component(g, "kmr")(["q"], [comps[1]], **{"problem": [p]}) == pytest.approx([1 / 3], abs=1e-12)
    with pytest.raises(ValueError):
        mar_reward(g, ("kmr", "bogus"))
    total, parts = compose_rewards([mar_component(g, c) for c in ("kmr", "rmr", "cr")], None, ["q"] * 3, comps, **cols)
    assert set(parts) == {"kmr", "rmr", "cr"}
    assert total.tolist() == pytest.approx([3.0, 1 / 3 + 0.7, 0.0], abs=1e-6)


def test_mar_reward_none_for_other_tasks():
    assert mar_reward(AgentGrader(TASK))(["q"], ["A=2"], problem=[Problem("a", "1+1=", "2")]) == [None]


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 5), st.text(max_size=40))
def test_agent_grader_scores_in_unit_range(seed, n, junk):
    p = TASK.random_problem(random.Random(seed))
    c = text(TASK.trajectory(p, n)) + junk
    s = AgentGrader(TASK).grade(p, c)
    assert all(0.0 <= v <= 1.0 for v in s.values())
    assert mar_reward(AgentGrader(TASK))(["q"], [c], problem=[p])[0] == pytest.approx(sum(s.values()))


# ------------------------------------------------------------------------------------ MaR, tagged


TAGGED = Problem("t", "What is the capital of the country north of Spain?", "Paris",
                 meta={"knowledge": ["France is north of Spain", "Paris is the capital of France"],
                       "plan": ["find the country north of Spain", "find its capital"]})


def test_parse_structured_round_trip_and_missing_blocks():
    t = write_structured(["a fact", "b fact"], ["step one", "step two"], "reasoning here", "42", lookback=["c"])
    r = parse_structured(t)
    assert (r.knowledge, r.plan, r.lookback, r.reasoning, r.answer) == (["a fact", "b fact"], ["step one", "step two"],
                                                                        ["c"], "reasoning here", "42")
    r = parse_structured("<knowledge>\n- x\n</knowledge><answer>7</answer><plan>unclosed")
    assert (r.knowledge, r.plan, r.lookback, r.reasoning, r.answer) == (["x"], None, None, None, "7")
    assert parse_structured(None).answer is None
    assert parse_structured(HUGE).knowledge is None


def test_tagged_grader_exact_values():
    g = TaggedGrader()
    full = write_structured(TAGGED.meta["knowledge"], TAGGED.meta["plan"],
                            "First find the country north of Spain: France. Then find its capital: Paris.", "Paris")
    assert g.grade(TAGGED, full) == {"kmr": 1.0, "rmr": 1.0, "cr": 1.0}
    # one unit named, the other recovered in the lookback; reasoning skips step 2 and answers: shortcut
    partial = write_structured(["France is north of Spain"], ["guess"], "find the country north of Spain. so Paris",
                               "paris", lookback=["Paris is the capital of France"])
    assert g.grade(TAGGED, partial) == pytest.approx({"kmr": 1.0, "rmr": 0.5 * 0.7, "cr": 1.0}, abs=1e-12)
    # missing blocks, empty answer, huge and non-string outputs
    assert g.grade(TAGGED, "no blocks at all") == {"kmr": 0.0, "rmr": 0.0, "cr": 0.0}
    assert g.grade(TAGGED, "<answer></answer>") == {"kmr": 0.0, "rmr": 0.0, "cr": 0.0}
    assert g.grade(TAGGED, HUGE) == {"kmr": 0.0, "rmr": 0.0, "cr": 0.0}
    assert g.grade(TAGGED, 3.5) == {"kmr": 0.0, "rmr": 0.0, "cr": 0.0}
    assert g.grade(Problem("u", "q", None), full) == {"kmr": None, "rmr": None, "cr": None}


# ------------------------------------------------------------------------------------ MaR, judge


def test_judge_grader_plumbing(tiny_dir, tmp_path):
    from forklens.errors import ConfigError

    # the tiny char tokenizer has digits only: "1" = yes, "0" = no
    g = JudgeGrader(tiny_dir, template="{question}{response}{criterion}=", yes="1", no="0",
                    criteria={"kmr": "1", "rmr": "2", "cr": "3"})
    p = Problem("a", "12+3=", "15")
    out = g.grade_many([p, p, p], ["1+2;A=15", 42, "9" * 1_000_000])
    for s in out:
        assert set(s) == {"kmr", "rmr", "cr"}
        assert all(0.0 <= v <= 1.0 for v in s.values())
    assert out[1] == {"kmr": 0.0, "rmr": 0.0, "cr": 0.0}
    assert 0.0 < out[0]["kmr"] < 1.0 and out[0]["cr"] == 0.0  # no <answer> block: CR is exact 0
    # the judge's P(yes) equals a direct computation from the model's logits
    import torch

    ids = g.prompt_ids(p, "1+2;A=15", "1")
    with torch.no_grad():
        logits = g.policy.model(torch.tensor([ids])).logits[0, -1]
    lp = torch.log_softmax(logits.float(), -1)
    want = float(torch.softmax(torch.stack([lp[g.yes_id], lp[g.no_id]]), 0)[0])
    assert out[0]["kmr"] == pytest.approx(want, abs=1e-5)
    assert mar_reward(g)(["q"], ["1"], problem=[p])[0] == pytest.approx(sum(g.grade(p, "1").values()), abs=1e-9)
    with pytest.raises(ConfigError, match="response"):
        JudgeGrader(tiny_dir, template="{question} {criterion}", yes="1", no="0")
    with pytest.raises(ConfigError, match="different first tokens"):
        JudgeGrader(tiny_dir, template="{response}{criterion}", yes="1", no="12")
    from forklens.errors import ModelLoadError

    with pytest.raises(ModelLoadError):
        JudgeGrader(tmp_path / "missing", template="{response}{criterion}")


# ------------------------------------------------------------------------------------ confidence


def test_spearman_matches_hand_computation():
    assert spearman([0, 0.1, 0.2, 0.5, 0.9, 1.0], POSITIONS) == pytest.approx(1.0)
    assert spearman([1.0, 0.8, 0.6, 0.4, 0.2, 0.0], POSITIONS) == pytest.approx(-1.0)
    assert spearman([0.5] * 6, POSITIONS) == 0.0
    # ties: x ranks (1.5, 1.5, 3, 4), y ranks (1, 2, 3, 4): cov 4.5 / sqrt(4.5 * 5)
    assert spearman([0, 0, 1, 2], [1, 2, 3, 4]) == pytest.approx(4.5 / (4.5 * 5) ** 0.5, abs=1e-12)
    # d^2 formula without ties: rho = 1 - 6 sum d^2 / (n (n^2 - 1)); ranks (2,1,4,3,6,5) vs 1..6: sum d^2 = 6
    assert spearman([0.2, 0.1, 0.4, 0.3, 0.6, 0.5], POSITIONS) == pytest.approx(1 - 6 * 6 / (6 * 35), abs=1e-12)
    with pytest.raises(ValueError):
        spearman([1], [1])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 10), min_size=6, max_size=6))
def test_spearman_properties(c):
    r = spearman(c, POSITIONS)
    assert -1.0 - 1e-12 <= r <= 1.0 + 1e-12
    assert spearman([-x for x in c], POSITIONS) == pytest.approx(-r, abs=1e-12)
    assert spearman(sorted(c), POSITIONS) >= r - 1e-12  # sorting can only raise the rank correlation


def test_penalty_values():
    assert premature_penalty([1.0] * 6) == pytest.approx(0.0, abs=1e-12)  # weights sum to zero
    assert premature_penalty([1, 1, 1, 1, 1, 1], eta=2.0) == pytest.approx(0.0, abs=1e-12)
    assert premature_penalty([1, 0, 0, 0, 0, 0]) == pytest.approx(0.5)
    assert premature_penalty([0, 0, 0, 0, 0, 1]) == pytest.approx(-0.5)
    assert premature_penalty([0, 0.2, 0.4, 0.6, 0.8, 1.0]) == pytest.approx(0.06 + 0.04 - 0.06 - 0.24 - 0.5)
    assert is_progressive([0, 0.2, 0.4, 0.6, 0.8, 1.0]) and not is_progressive([1.0] * 6)
    with pytest.raises(ValueError):
        premature_penalty([1.0] * 5)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=6, max_size=6), st.floats(0, 3))
def test_penalty_bounded_and_shift_invariant(c, eta):
    p = premature_penalty(c, eta=eta)
    assert abs(p) <= eta * 0.9 + 1e-9  # at most the positive weights' sum
    # weights sum to zero: an affine change of the confidences scales P and ignores the offset
    assert premature_penalty([x * 0.5 + 0.25 for x in c], eta=eta) == pytest.approx(0.5 * p, abs=1e-9)


def test_forcing_rules():
    arith = ArithTask()
    f = forcing_for(arith)
    r = f.reasoning("7+5+0=12;4+8+1=13;3+4+1=08;A=0832")
    assert r == "7+5+0=12;4+8+1=13;3+4+1=08;"
    assert f.forced_prompt("347+485=", r) == "347+485=7+5+0=12;4+8+1=13;3+4+1=08;A="
    assert f.forced_prompt("347+485=", truncate(r, 0.2)) == "347+485=7+5+0;A="
    assert f.forced_prompt("347+485=", "") == "347+485=A="
    p = arith.make_problem(347, 485)
    assert f.correct(p, "0832") and f.correct(p, "832") and not f.correct(p, "0833") and not f.correct(p, "")
    g = forcing_for(TASK)
    assert isinstance(g, AgentForcing)
    b = bridge(2)
    gold = TASK.expert_response(b)
    assert g.reasoning(gold) == gold[: gold.rfind("!")]
    assert g.reasoning("?A(abc)=-;!") == "?A(abc)=-;!"  # a forced marker without an answer stays reasoning
    assert g.correct(b, b.answer) and not g.correct(b, "zzz")
    for bad in (None, 5, HUGE):
        assert isinstance(f.reasoning(bad), str) and len(f.reasoning(bad)) <= 100_000


def test_truncation_points():
    assert [truncate("abcdefghij", x) for x in POSITIONS] == ["", "ab", "abcd", "abcdef", "abcdefgh", "abcdefghij"]
    assert len(WEIGHTS) == len(POSITIONS) and sum(WEIGHTS) == pytest.approx(0.0, abs=1e-12)


def test_confidence_reward_on_a_tiny_policy(tiny_policy):
    arith = ArithTask()
    p = arith.make_problem(12, 34)
    fn = ConfidenceReward(tiny_policy, arith, m=3, seed=0)
    comps = ["2+4+0=06;1+3+0=04;0+0+0=00;A=046", "", None, HUGE[:200]]
    out = fn(["q"] * 4, comps, problem=[p] * 4)
    assert fn.__name__ == "confidence"
    assert out[2] == 0.0
    for v in out:
        assert -0.9 - 1e-9 <= v <= 0.9 + 1e-9
        # c_j are multiples of 1/3, so -P is a multiple of 1/30 (weights are multiples of 0.1)
        assert abs(v * 30 - round(v * 30)) < 1e-6
    assert fn.forced_samples == 3 * 6 * 3 and fn.tokens_processed > 0
    assert fn(["q"], ["A=1"], problem=[Problem("x", "1+1=", None)]) == [None]
