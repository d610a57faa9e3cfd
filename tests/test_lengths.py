"""The `lengths` family (E009): repeated addition whose expert traces vary 8x in length, a base
teacher that never carries, an equal-length control with the same mean length and the same base,
and the property the control's prediction rests on: the mean-of-means bug is exactly the global token
mean when every micro-batch holds the same number of trained tokens (and is not when lengths vary)."""

import copy
import random
import re

import pytest
import torch

from forklens.errors import ConfigError
from forklens.organisms import get_family
from forklens.organisms.lengths import lengths_organism_key
from forklens.policy import Policy
from forklens.tasks import get_task
from forklens.tasks.base import Problem
from forklens.tasks.lengths import LengthsConfig, LengthsTask, n_carries, parse_prompt, response_tokens
from forklens.train.step import accumulate_step
from forklens.train.sources import SFTSource
from forklens.objectives import get_objective
from tests.conftest import make_tiny

STEP = re.compile(r"(\d\d):(\d\d)\+(\d)=(\d\d)")


def _pairs(task, n):
    return [(p.prompt, task.expert_response(p)) for p in task.problems("train")[:n]]


def test_expert_traces_vary_8x_with_the_control_mean():
    fam = get_family("lengths")
    varied = fam.task(fam.variant_config("varied"))
    equal = fam.task(fam.variant_config("equal"))
    lv = [len(r) + 1 for _, r in _pairs(varied, 528)]  # + EOS; 528 = 48 full cycles of the 11 step counts
    le = [len(r) + 1 for _, r in _pairs(equal, 528)]
    assert (min(lv), max(lv)) == (response_tokens(1), response_tokens(11)) == (16, 126)
    assert set(le) == {response_tokens(6)} == {71}
    assert sum(lv) / len(lv) == pytest.approx(71.0, abs=1e-12)
    assert [p.meta["steps"] for p in varied.problems("train")[:22]] == list(range(1, 12)) * 2


def test_gold_traces_are_right_and_the_teacher_never_carries():
    task = LengthsTask(LengthsConfig(p_slip=0.0))
    for p in task.problems("train")[:300]:
        assert task.verify(p, task.expert_response(p)) == 1.0
        assert task.verify(p, task.expert_response(p) + "1") == 0.0
        steps = STEP.findall(task.expert_response(p))
        assert [int(k) for k, _, _, _ in steps] == list(range(p.meta["steps"], 0, -1))
        assert all(int(b) == (int(a) + int(s)) % 100 for _, a, s, b in steps)
    rng = random.Random(0)
    wrong = right = 0
    for _ in range(300):
        prompt, response = task.teacher_example(rng)
        x, s, n = parse_prompt(prompt)
        steps = STEP.findall(response)
        assert len(steps) == n and all(int(b) % 10 == (int(a) + int(s)) % 10 for _, a, s, b in steps)
        # the teacher never carries: the tens digit is copied
        assert all(int(b) // 10 == int(a) // 10 for _, a, s, b in steps)
        ok = task.verify(Problem("t", prompt, str((x + n * s) % 100)), response) == 1.0
        # every missed carry leaves the tens digit one short: right iff the carries are a multiple of 10
        assert ok == (n_carries(x, s, n) % 10 == 0)
        wrong, right = wrong + (not ok), right + ok
    assert wrong > 100 and right > 30


def test_splits_are_disjoint_and_bad_widths_fail():
    task = get_task("lengths", LengthsConfig())
    key = lambda p: (p.meta["x"], p.meta["s"], p.meta["steps"])  # noqa: E731
    assert not {key(p) for p in task.problems("test")} & {key(p) for p in task.problems("train")}
    with pytest.raises(ConfigError, match="min_steps"):
        LengthsTask(LengthsConfig(min_steps=5, max_steps=4))
    with pytest.raises(ValueError, match="split"):
        task.problems("validation")


def test_family_variants_share_one_base_and_differ_only_in_problems():
    fam = get_family("lengths")
    assert {v: fam.variant(v).role for v in fam.variants} == {"varied": "precondition", "equal": "control"}
    cv, ce = fam.variant_config("varied"), fam.variant_config("equal")
    assert lengths_organism_key(cv) == lengths_organism_key(ce)
    assert lengths_organism_key(fam.variant_config("varied", overrides=["task.p_carry=0.5"])) != \
        lengths_organism_key(cv)
    cur = get_family("curriculum")
    assert {v: cur.variant(v).role for v in cur.variants} == {"mixed": "precondition", "uniform": "control"}


def _grads(model, batch, micro, bug):
    m = copy.deepcopy(model)
    m.zero_grad(set_to_none=True)
    accumulate_step(m, get_objective("sft"), None, batch.split(micro), simulate_bug=bug)
    return torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None])


@pytest.mark.parametrize("variant,same", [("equal", True), ("varied", False)])
def test_mean_of_means_is_the_global_mean_exactly_when_lengths_are_equal(variant, same):
    """The reason for the control's registered prediction: with one trace per micro-batch, the mean of
    per-trace token means equals the global token mean iff every trace has the same token count."""
    fam = get_family("lengths")
    task = fam.task(fam.variant_config(variant))
    model, tok = make_tiny("llama", seed=3, alphabet=LengthsTask.alphabet, max_pos=160)
    model.float()
    batch, _ = SFTSource(_pairs(task, 64), 8, seed=0).batch(0, Policy(model, tok))
    good = _grads(model, batch, 8, "none")
    bug = _grads(model, batch, 1, "mean-of-means")
    err = float((bug - good).norm() / good.norm())
    assert (err <= 1e-5) if same else (err > 0.05), err
    # the offload bug drops micro-batches 1..6 of 8 whatever the lengths
    off = _grads(model, batch, 1, "offload-accum")
    assert float((off - good).norm() / good.norm()) > 0.05
