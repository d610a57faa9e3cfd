"""The mutual-information proxy: retrieval accuracy of each rollout's own prompt."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from forklens.analysis.mi_proxy import mi_proxy, retrieval_accuracy, score_matrix
from forklens.policy import Policy, ScoredSequence
from tests.conftest import make_tiny


class KeyedPolicy:
    """A hand-built scorer: a response token is likely (log p = -0.1) when it equals the prompt's last
    token, unlikely (-4) otherwise. ``collapse`` makes every response equally likely under every prompt."""

    def __init__(self, collapse=False):
        self.collapse = collapse
        self.calls = 0

    def score(self, prompt_ids, response_ids, batch_tokens=16384):
        self.calls += 1
        out = []
        for p, r in zip(prompt_ids, response_ids):
            lp = torch.tensor([-1.0 if self.collapse else (-0.1 if t == p[-1] else -4.0) for t in r])
            out.append(ScoredSequence(token_ids=torch.tensor(r), logprob=lp, entropy=torch.zeros(len(r)),
                                      argmax=torch.zeros(len(r), dtype=torch.long)))
        return out


def test_each_response_likely_only_under_its_own_prompt_retrieves_perfectly():
    prompts = [[1, 5], [2, 6], [3, 7], [4, 8]]
    own = [0, 0, 1, 2, 3, 3, 2]
    responses = [[prompts[g][-1]] * (2 + k % 3) for k, g in enumerate(own)]
    pol = KeyedPolicy()
    out = mi_proxy(pol, [prompts[g] for g in own], responses)
    assert out["mi_proxy_acc"] == 1.0
    assert out["mi_proxy_chance"] == 0.25 and out["mi_proxy_prompts"] == 4
    assert pol.calls == 1  # one batched call over all R x P pairs
    assert out["scored_tokens"] == sum(len(p) + len(r) for r in responses for p in prompts)


def test_collapsed_policy_is_at_zero_not_above_chance():
    prompts = [[1, 5], [2, 6], [3, 7]]
    own = [0, 1, 2, 1]
    out = mi_proxy(KeyedPolicy(collapse=True), [prompts[g] for g in own], [[5, 6]] * 4)
    assert out["mi_proxy_acc"] == 0.0  # ties are misses


def test_half_the_responses_answer_another_prompt():
    prompts = [[1, 5], [2, 6]]
    own = [0, 0, 1, 1]
    responses = [[5], [6], [6], [5]]  # rows 1 and 3 look like the other prompt's
    assert mi_proxy(KeyedPolicy(), [prompts[g] for g in own], responses)["mi_proxy_acc"] == 0.5


def test_masks_restrict_the_score_to_marked_tokens():
    prompts = [[1, 5], [2, 6]]
    # the last token would point to the wrong prompt, but it is an observation (mask 0)
    responses = [[5, 6, 6, 6], [6, 5, 5, 5]]
    masks = [[1, 0, 0, 0], [1, 0, 0, 0]]
    assert mi_proxy(KeyedPolicy(), prompts, responses)["mi_proxy_acc"] == 0.0
    assert mi_proxy(KeyedPolicy(), prompts, responses, masks)["mi_proxy_acc"] == 1.0


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.floats(-50, 0), min_size=3, max_size=3), min_size=1, max_size=8),
       st.data())
def test_retrieval_accuracy_matches_a_loop(rows, data):
    scores = torch.tensor(rows, dtype=torch.float64)
    owners = data.draw(st.lists(st.integers(0, 2), min_size=len(rows), max_size=len(rows)))
    expected = sum(all(r[o] > r[j] for j in range(3) if j != o) for r, o in zip(rows, owners)) / len(rows)
    assert retrieval_accuracy(scores, owners) == pytest.approx(expected)


def test_score_matrix_equals_policy_score_one_pair_at_a_time():
    model, tok = make_tiny("llama", seed=3)
    pol = Policy(model, tok)
    prompts = [[4, 5, 6], [7, 8], [9, 10, 11, 12]]
    responses = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    m = score_matrix(pol, prompts, responses)
    for i, r in enumerate(responses):
        for j, p in enumerate(prompts):
            ref = float(pol.score([p], [r])[0].logprob.double().sum())
            assert float(m[i, j]) == pytest.approx(ref, rel=1e-5, abs=1e-6)


def test_grpo_source_logs_the_proxy_every_n_steps():
    from forklens.tasks.arith import ArithConfig, ArithTask
    from forklens.train.sources import GRPOSource, SamplingConfig

    task = ArithTask(ArithConfig(digits=2))
    model, tok = make_tiny("llama", seed=6)
    pol = Policy(model, tok)
    sc = SamplingConfig(prompts_per_step=3, group_size=2, max_new_tokens=6, mi_proxy_every=2)
    src = GRPOSource(task, task.problems("train"), sc, seed=1)
    _, i0 = src.batch(0, pol)
    n_prompts = len({p.prompt for p in src.last_chosen})
    _, i1 = src.batch(1, pol)
    assert "mi_proxy_acc" not in i1 and i1["scored_tokens"] == 0
    assert 0.0 <= i0["mi_proxy_acc"] <= 1.0
    assert i0["mi_proxy_chance"] == pytest.approx(1 / n_prompts)
    assert i0["scored_tokens"] > 0
