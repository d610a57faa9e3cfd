"""Recursive delegation (RAO, arXiv 2605.06639): the tree runner, node rewards, the leave-one-out baseline,
the reduce task and its environment, the rollout source and the experiment's code path."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from forklens.objectives.advantages import estimate_advantages
from forklens.organisms import get_family
from forklens.organisms.base import build_char_tokenizer
from forklens.policy import Policy
from forklens.policy.delegation import sample_trees, sibling_groups, tree_rewards, tree_stats
from forklens.tasks import get_task
from forklens.tasks.reduce import ReduceConfig, ReduceTask, reduce_answer, split_parts
from forklens.train.delegation_source import DelegationSource
from forklens.train.sources import SamplingConfig

TASK = ReduceTask(ReduceConfig(window=8))


class OracleReduceLM(torch.nn.Module):
    """A 'model' that plays the reduce task by rule: a node whose view holds more than ``split_above``
    digits (or is out of view) delegates with ``call``; otherwise it answers the sum of the digits it
    sees; after the children's answers it answers their sum (``combine_offset`` added, to plant errors);
    after a refusal it answers from its view. The KV cache is the context itself."""

    def __init__(self, tokenizer, split_above: int = 1, call: str = "/", combine_offset: int = 0):
        super().__init__()
        self.tok, self.split_above, self.call, self.offset = tokenizer, split_above, call, combine_offset
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(max_position_embeddings=64)

    def next_char(self, text: str) -> str | None:
        prompt, after = text[: text.index("=") + 1], text[text.index("=") + 1:]
        digits = prompt.rstrip("=").rstrip("+")
        if after == "":
            if "+" in prompt or len(digits) > self.split_above:
                return self.call
            return reduce_answer(digits)
        if after[-1].isdigit() and not after.endswith(">"):
            return None  # answered: EOS
        if after.endswith(">"):
            kids = after[1:-1]
            if "?" in kids:
                return "0"
            return str((sum(int(c) for c in kids) + self.offset) % 10)
        if after.endswith("x"):
            return reduce_answer(digits)
        raise AssertionError(f"unexpected context {text!r}")

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None, **_):
        ctx = input_ids if past_key_values is None else torch.cat([past_key_values, input_ids], dim=1)
        logits = torch.zeros(ctx.shape[0], 1, len(self.tok))
        for b in range(ctx.shape[0]):
            text = self.tok.decode(ctx[b][attention_mask[b].bool()].tolist(), skip_special_tokens=True)
            nxt = self.next_char(text)
            logits[b, 0, self.tok.eos_token_id if nxt is None else self.tok.convert_tokens_to_ids(nxt)] = 30.0
        return SimpleNamespace(logits=logits, past_key_values=ctx)


def oracle(**kw) -> Policy:
    tok = build_char_tokenizer(ReduceTask.alphabet)
    return Policy(OracleReduceLM(tok, **kw), tok)


def trees_of(policy, task, digits_list, **kw):
    probs = [task.problem(f"p{i}", d) for i, d in enumerate(digits_list)]
    c = task.config
    kw.setdefault("max_depth", c.max_depth)
    kw.setdefault("max_nodes", c.max_nodes)
    return probs, sample_trees(policy, task.env, probs, n=1, temperature=0.0, turn_tokens=4, **kw)


def test_full_binary_tree_is_hand_checked():
    probs, trees = trees_of(oracle(), TASK, ["39071234"])
    assert len(trees.nodes) == 15 and trees.roots == [0]
    root = trees.nodes[0]
    assert root.text == "/90>9" and root.answer == "9" == probs[0].answer and root.finished
    assert [trees.nodes[c].problem.meta["digits"] for c in root.children] == ["3907", "1234"]
    # own tokens: "/", then the env's "44>" (3 tokens), then "8" and EOS
    assert root.env_mask == [0, 1, 1, 1, 0, 0]
    leaves = [nd for nd in trees.nodes if not nd.children]
    assert len(leaves) == 8 and all(nd.depth == 3 and nd.text == nd.problem.meta["digits"] for nd in leaves)
    success = [TASK.verify(nd.problem, nd.text) for nd in trees.nodes]
    assert success == [1.0] * 15
    assert tree_rewards(trees, success) == [2.0 if nd.children else 1.0 for nd in trees.nodes]
    assert tree_rewards(trees, success, aggregate="sum") == [3.0 if nd.children else 1.0 for nd in trees.nodes]
    assert tree_rewards(trees, success, aggregate="none") == [1.0] * 15
    st = tree_stats(trees)
    assert st["nodes_per_tree"] == 15 and st["max_depth"] == 3 and st["delegation_rate"] == 7 / 15


def test_rollout_rows_mask_observations():
    _, trees = trees_of(oracle(), TASK, ["39071234"])
    samples = trees.as_samples()
    ro = samples.to_rollouts(0)
    assert ro.input_ids.shape[0] == 15
    P = len(trees.nodes[0].prompt_ids)
    assert ro.response_mask[0, P:P + 6].tolist() == [1.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    assert ro.tags["env_mask"][0, P:P + 6].tolist() == [0.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_out_of_view_list_is_only_solved_by_delegation():
    rng = random.Random(3)
    digits = "".join(rng.choice("0123456789") for _ in range(32))
    assert TASK.view(digits) == digits[:8] + "+="
    probs, trees = trees_of(oracle(), TASK, [digits])
    assert TASK.verify(probs[0], trees.nodes[0].text) == 1.0 and len(trees.nodes) == 63
    # flat (depth limit 0): the call is refused and the node answers from the 8 digits it sees
    probs, flat = trees_of(oracle(), TASK, [digits], max_depth=0)
    assert len(flat.nodes) == 1 and flat.nodes[0].text == "/x" + reduce_answer(digits[:8])
    assert flat.nodes[0].refused == 1 and flat.nodes[0].delegations == 0
    assert reduce_answer(digits[:8]) != probs[0].answer  # this list's prefix sum differs from its sum


def test_depth_limit_and_node_budget_refuse_calls():
    _, trees = trees_of(oracle(), TASK, ["39071234"], max_depth=1)
    assert len(trees.nodes) == 3
    assert [nd.text for nd in trees.nodes[1:]] == ["/x9", "/x0"] and trees.nodes[0].text == "/90>9"
    _, budget = trees_of(oracle(), TASK, ["39071234"], max_nodes=4)
    assert len(budget.nodes) == 3  # the children's calls would need 5 nodes
    assert all(nd.refused == 1 for nd in budget.nodes[1:])


def test_wide_call_and_planted_combine_errors():
    probs, trees = trees_of(oracle(call="#", combine_offset=1), TASK, ["39071234"])
    root = trees.nodes[0]
    assert [trees.nodes[c].problem.meta["digits"] for c in root.children] == ["39", "07", "12", "34"]
    success = [TASK.verify(nd.problem, nd.text) for nd in trees.nodes]
    # every combining node is off by one, every leaf is right
    assert [s for s, nd in zip(success, trees.nodes) if nd.children] == [0.0] * 5
    rewards = tree_rewards(trees, success)
    assert rewards[0] == 0.0  # its 4 children all combined wrongly
    assert all(r == 1.0 for r, nd in zip(rewards, trees.nodes) if nd.depth == 1)  # 0 + mean of 2 right leaves
    assert tree_rewards(trees, success, aggregate="sum")[1] == 2.0


def test_fixed_scaffold_splits_for_the_model():
    task = ReduceTask(ReduceConfig(window=8), scaffold_leaf=2)
    probs, trees = trees_of(oracle(split_above=99), task, ["39071234"])
    assert len(trees.nodes) == 7 and trees.nodes[0].env_mask[0] == 1  # the env wrote the call
    assert task.verify(probs[0], trees.nodes[0].text) == 1.0
    # at a leaf the scaffold refuses a call the model makes
    probs, trees = trees_of(oracle(split_above=1), task, ["39"])
    assert trees.nodes[0].text == "/x2" and len(trees.nodes) == 1


def test_split_parts_and_views():
    assert split_parts("12345", "/") == ["12", "345"]
    assert split_parts("12345", "#") == ["1", "2", "34", "5"]
    assert "".join(split_parts("1234567890", "#")) == "1234567890"
    assert split_parts("123", "#") == ["1", "2", "3"] and split_parts("7", "/") == []
    assert TASK.view("123") == "123="


def test_loo_advantages_hand_checked():
    rewards = torch.tensor([1.0, 0.0, 1.0, 2.0, 5.0, 3.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 2])
    adv, _ = estimate_advantages("loo", rewards, groups)
    assert adv.tolist() == pytest.approx([0.5, -1.0, 0.5, -3.0, 3.0, 0.0])


def test_sibling_groups_pair_same_subgoals_across_trees():
    probs = [TASK.problem("p", "3907")]
    trees = sample_trees(oracle(), TASK.env, probs, n=2, temperature=0.0, turn_tokens=4)
    g = sibling_groups(trees)
    assert len(trees.nodes) == 14 and len(set(g)) == 7  # each subgoal answered once per tree
    by = {}
    for nd, gid in zip(trees.nodes, g):
        by.setdefault(gid, set()).add(nd.problem.meta["digits"])
    assert all(len(v) == 1 for v in by.values())


def test_teacher_traces_by_variant():
    rng = random.Random(0)
    fam = get_family("delegation")
    split = fam.task(fam.variant_config("split"))
    nosplit = fam.task(fam.variant_config("nosplit"))
    for _ in range(300):
        prompt, segs = split.teacher_trajectory(rng)
        if "+" in prompt:
            assert segs[0][0] in "/#"
        _, segs = nosplit.teacher_trajectory(rng)
        assert len(segs) == 1 and segs[0][0].isdigit()
    prompt, segs = ReduceTask(ReduceConfig(p_direct=0.0, p_refuse=0.0, p_wide=0.0, p_short=1.0,
                                           teacher_max_length=8)).teacher_trajectory(random.Random(5))
    digits = prompt.rstrip("=")
    if len(digits) > 1:
        halves = split_parts(digits, "/")
        assert segs == [("/", False), ("".join(reduce_answer(h) for h in halves) + ">", True),
                        (reduce_answer(digits), False)]
    assert isinstance(get_task("reduce"), ReduceTask)


def test_delegation_source_rows_are_nodes():
    task = ReduceTask(ReduceConfig(window=8, train_lengths=[8], n_train=4))
    cfg = SamplingConfig(prompts_per_step=2, group_size=2, temperature=0.0, turn_tokens=4,
                         advantage_estimator="loo", scale_rewards="none")
    src = DelegationSource(task, task.problems("train"), cfg, seed=0)
    batch, info = src.batch(0, oracle())
    assert batch.input_ids.shape[0] == 4 * 15
    assert batch.rewards.tolist() == [2.0 if r > 1 else 1.0 for r in batch.rewards.tolist()]
    assert torch.all(batch.advantages == 0)  # deterministic trees: every sibling group agrees
    assert info["root_accuracy"] == 1.0 and info["nodes_per_tree"] == 15
    with pytest.raises(ValueError):
        DelegationSource(task, task.problems("train"), cfg, aggregate="max")


def test_experiment_quick_code_path(tmp_path, monkeypatch):
    from forklens.config import load_config, packaged_config
    from forklens.experiments.delegation import DelegationConfig, run_delegation

    monkeypatch.setenv("FORKLENS_CACHE", str(tmp_path / "cache"))
    cfg = load_config(DelegationConfig, packaged_config("delegation-quick"),
                      ["organism.pretrain.max_steps=10", "rl.train.max_steps=1", "flat_max_steps=2"])
    summary = run_delegation(cfg, tmp_path / "run")
    assert set(summary["arms"]) == {"base", "base-scaffold", "rao-mean", "rao-sum", "flat", "flat-norecursion",
                                    "scaffold"}
    assert summary["lengths"] == ["2", "8", "16"]
    assert set(summary["contrasts"]) >= {"rao-mean-flat", "rao-mean-scaffold", "mean-sum"}
    tr = summary["per_seed"][0]["train"]
    assert tr["rao-mean"]["steps"] == 1 and tr["flat"]["steps"] <= 2
    assert set(summary["base"]["combine_accuracy"]) == {"halves", "wide"}
    assert (tmp_path / "run" / "summary.json").is_file()


def test_parity_task_and_combine_context():
    task = ReduceTask(ReduceConfig(modulus=2, train_lengths=[2, 8], test_lengths=[2, 64], n_train=50,
                                   n_test_per_length=6))
    assert task.combine_context("1101") == "1101=/01>" and task.combine_context("1101", "#") == "1101=#1101>"
    assert task.problem("p", "1101").answer == "1"
    for split in ("train", "test"):
        assert all(set(p.meta["digits"]) <= {"0", "1"} for p in task.problems(split))
    # every bit list of 2 is a training list: the test split keeps them instead of redrawing forever
    assert len([p for p in task.problems("test") if p.meta["length"] == 2]) == 6
    prompt, segs = task.teacher_trajectory(random.Random(2))
    assert set(prompt) <= set("01+=") and all(set(t) <= set("01/#>x") for t, _ in segs)


def test_combine_check_with_an_oracle():
    from forklens.experiments.delegation import combine_check

    assert combine_check(oracle(), TASK, n=20) == {"halves": 1.0, "wide": 1.0}
    assert combine_check(oracle(combine_offset=1), TASK, n=20) == {"halves": 0.0, "wide": 0.0}
