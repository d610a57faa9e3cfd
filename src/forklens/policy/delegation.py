"""Recursive delegation: episodes whose ``delegate(subgoal)`` action starts fresh episodes of the same policy.

The runner of Recursive Agent Optimization (RAO, arXiv 2605.06639) at organism scale. An episode is a
*node*; when a model turn is a delegation call, the environment names the subgoals it delegates
(:meth:`TreeEnv.subgoals`), the runner starts one fresh episode of the same policy per subgoal (a
*child*: its own context, only the subgoal's prompt), and the parent waits. When every child has
finished, the environment turns the children's answers into one observation appended to the parent
(:meth:`TreeEnv.children_done`), and the parent takes its next turn. The calls form a tree per root
episode, bounded by a depth limit (a node at ``max_depth`` cannot delegate) and a node budget per tree
(a call whose children would exceed it is refused); a refused call gets :meth:`TreeEnv.refuse`'s
observation, and the node goes on by itself.

Scheduling is level-free: every round gives each *ready* node (not finished, not waiting for children)
one model turn, all in one batched decode (:func:`forklens.policy.sample.sample_batch`), exactly as
:func:`forklens.policy.episodes.sample_episodes` does for flat episodes; with ``max_depth = 0`` every
delegation is refused and the runner is a flat episode sampler. Draws come from one seeded generator
consumed in node-creation order, so a seed reproduces the trees.

**Every node is a training sequence**: :meth:`TreeBatch.as_samples` returns one row per node (its own
prompt and turns, observations marked in ``env_masks``), so the existing objectives and the
normalisation rule (docs/architecture.md) apply unchanged. :func:`tree_rewards` gives a node its own
success plus a delegation bonus over its children's success (the mean, as RAO: it rewards *when* to
delegate, not spawning; the sum is the control), and :func:`sibling_groups` the groups of the
leave-one-out baseline (``loo`` in :mod:`forklens.objectives.advantages`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Sequence

import torch

from forklens.errors import DataError
from forklens.policy import Samples
from forklens.policy.episodes import Episode, _encode, stop_token_ids
from forklens.policy.sample import sample_batch

Aggregate = Literal["mean", "sum", "none"]


class TreeEnv(Protocol):
    """An environment whose action space has a delegation call (see the module docstring)."""

    stop_strings: Sequence[str]

    def reset(self, problem, depth: int) -> tuple[Any, str]:
        """(state, text appended after the prompt before the first turn); the text may itself be a
        delegation call written by the environment (a fixed scaffold)."""

    def subgoals(self, problem, state, turn_text: str) -> list | None:
        """The subgoal problems of a delegation call, ``[]`` for a call the environment refuses, or None
        when the turn is not a delegation call."""

    def refuse(self, problem, state) -> str:
        """The observation appended after a refused delegation call."""

    def step(self, problem, state, turn_text: str) -> tuple[str, bool]:
        """(observation, done) after a turn that is not a delegation call."""

    def children_done(self, problem, state, answers: list[str | None]) -> tuple[str, bool]:
        """(observation, done) once every child has finished; ``answers[i]`` is child i's answer."""

    def answer(self, text: str) -> str | None:
        """The final answer of a node's transcript (None: it gave none)."""


@dataclass
class Node(Episode):
    """One episode of a delegation tree (``problem_index`` is the index of the tree's root problem)."""

    problem: Any = None
    index: int = 0  # position in the batch's node list
    depth: int = 0
    parent: int | None = None  # index of the parent node (None at a root)
    root: int = 0  # index of the tree's root node
    children: list[int] = field(default_factory=list)
    waiting: bool = False  # waiting for its children
    delegations: int = 0  # delegation calls whose children ran
    refused: int = 0  # delegation calls refused (depth limit, node budget or the environment)
    answer: str | None = None


@dataclass
class TreeBatch:
    nodes: list[Node]
    roots: list[int]  # index of each root node, prompt-major (problem 0's n trees first)
    tokens_processed: int = 0  # tokens run through the model over every node (prefills + decoding)

    def tree(self, root: int) -> list[Node]:
        return [nd for nd in self.nodes if nd.root == root]

    def as_samples(self) -> Samples:
        """Every node as one completion; ``group`` is the index of its tree's root problem."""
        nodes = self.nodes
        return Samples(prompt_ids=[nd.prompt_ids for nd in nodes], response_ids=[nd.response_ids for nd in nodes],
                       finished=[nd.finished for nd in nodes], group=[nd.problem_index for nd in nodes],
                       texts=[nd.text for nd in nodes], tokens_processed=self.tokens_processed,
                       env_masks=[nd.env_mask for nd in nodes], episodes=list(nodes))


@torch.no_grad()
def sample_trees(policy, env: TreeEnv, problems: Sequence, n: int = 1, temperature: float = 1.0, top_p: float = 1.0,
                 turn_tokens: int = 4, max_depth: int = 4, max_nodes: int = 64, seed: int = 0,
                 batch_size: int = 1024) -> TreeBatch:
    """``n`` delegation trees per problem (see the module docstring). A node ends at EOS, when the
    environment says so, or truncated (``finished = False``) when a turn runs past ``turn_tokens`` or
    its context would outgrow the model's; a child that ends without an answer reports None."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if turn_tokens < 1 or max_depth < 0 or max_nodes < 1:
        raise ValueError(f"need turn_tokens >= 1, max_depth >= 0, max_nodes >= 1 (got {turn_tokens}, {max_depth}, "
                         f"{max_nodes})")
    stops = set(stop_token_ids(policy.tokenizer, env.stop_strings))
    eos = set(policy.eos_ids)
    run = _TreeRun(policy, env, max_depth, max_nodes, stops | eos, eos)
    for g, p in enumerate(problems):
        for _ in range(n):
            run.roots.append(run.spawn(p, g, depth=0, parent=None))
    gen = torch.Generator(device=policy.device).manual_seed(int(seed))
    was_training = policy.model.training
    policy.model.eval()
    try:
        while True:
            run.resolve()
            ready = [nd for nd in run.nodes if not nd.done and not nd.waiting]
            for nd in ready:  # a node whose next turn could not fit is cut here
                if policy.context is not None and len(nd.context()) + turn_tokens > policy.context:
                    run.finish(nd, finished=False)
            ready = [nd for nd in ready if not nd.done]
            if not ready:
                break
            for s in range(0, len(ready), batch_size):
                chunk = ready[s:s + batch_size]
                turns, _, count = sample_batch(policy.model, [nd.context() for nd in chunk], pad_id=policy.pad_id,
                                               eos_ids=sorted(stops | eos), max_new_tokens=turn_tokens,
                                               temperature=temperature, top_p=top_p, generator=gen)
                run.processed += int(count)
                for nd, turn in zip(chunk, turns):
                    run.apply_turn(nd, list(turn))
    finally:
        policy.model.train(was_training)
    if any(nd.waiting for nd in run.nodes):
        raise RuntimeError("delegation runner ended with a node still waiting for its children")
    return TreeBatch(nodes=run.nodes, roots=run.roots, tokens_processed=run.processed)


class _TreeRun:
    """The mutable state of one :func:`sample_trees` call."""

    def __init__(self, policy, env, max_depth: int, max_nodes: int, stop_set: set[int], eos_set: set[int]):
        self.policy, self.env = policy, env
        self.max_depth, self.max_nodes = max_depth, max_nodes
        self.stop_set, self.eos_set = stop_set, eos_set
        self.nodes: list[Node] = []
        self.roots: list[int] = []
        self.tree_size: dict[int, int] = {}
        self.processed = 0

    def spawn(self, problem, group: int, depth: int, parent: int | None) -> int:
        prompt = self.policy.encode_prompt(problem.prompt)
        if not prompt:
            raise DataError(f"the prompt of problem {getattr(problem, 'id', '?')!r} is empty after tokenization")
        idx = len(self.nodes)
        root = idx if parent is None else self.nodes[parent].root
        state, opening = self.env.reset(problem, depth)
        nd = Node(problem_index=group, prompt_ids=prompt, state=state, problem=problem, index=idx, depth=depth,
                  parent=parent, root=root)
        self.nodes.append(nd)
        self.tree_size[root] = self.tree_size.get(root, 0) + 1
        if opening:
            nd.segments.append((_encode(self.policy, opening), True))
            self.delegate_or_step(nd, opening, written_by_env=True)
        return idx

    def finish(self, nd: Node, finished: bool) -> None:
        nd.done, nd.finished = True, finished
        nd.text = self.policy.decode(nd.response_ids)
        nd.answer = self.env.answer(nd.text) if finished else None

    def apply_turn(self, nd: Node, turn: list[int]) -> None:
        nd.segments.append((turn, False))
        if not turn or turn[-1] not in self.stop_set:  # ran out of turn tokens
            self.finish(nd, finished=False)
        elif turn[-1] in self.eos_set:
            self.finish(nd, finished=True)
        else:
            self.delegate_or_step(nd, self.policy.decode(turn))

    def delegate_or_step(self, nd: Node, text: str, written_by_env: bool = False) -> None:
        goals = self.env.subgoals(nd.problem, nd.state, text)
        if goals is None:
            if written_by_env:
                return
            obs, done = self.env.step(nd.problem, nd.state, text)
            self.observe(nd, obs, done)
            return
        allowed = bool(goals) and nd.depth < self.max_depth and \
            self.tree_size[nd.root] + len(goals) <= self.max_nodes
        if not allowed:
            nd.refused += 1
            self.observe(nd, self.env.refuse(nd.problem, nd.state), False)
            return
        nd.delegations += 1
        nd.waiting = True
        nd.children = [self.spawn(g, nd.problem_index, nd.depth + 1, nd.index) for g in goals]

    def observe(self, nd: Node, obs: str, done: bool) -> None:
        if obs:
            nd.segments.append((_encode(self.policy, obs), True))
        if done:
            self.finish(nd, finished=True)

    def resolve(self) -> None:
        """Hand every waiting node whose children have all finished their answers (deepest first, so a
        chain of finished subtrees resolves in one call)."""
        for nd in sorted((x for x in self.nodes if x.waiting), key=lambda x: -x.depth):
            kids = [self.nodes[c] for c in nd.children]
            if all(k.done for k in kids):
                nd.waiting = False
                obs, done = self.env.children_done(nd.problem, nd.state, [k.answer for k in kids])
                self.observe(nd, obs, done)


def tree_rewards(batch: TreeBatch, success: Sequence[float], bonus: float = 1.0,
                 aggregate: Aggregate = "mean") -> list[float]:
    """Per node: its own success plus ``bonus`` times the mean (RAO), the sum (the control) or nothing
    (``none``) of its immediate children's success; a node without children gets no bonus."""
    if len(success) != len(batch.nodes):
        raise ValueError(f"{len(success)} success values for {len(batch.nodes)} nodes")
    if aggregate not in ("mean", "sum", "none"):
        raise ValueError(f"unknown aggregate {aggregate!r}; expected mean, sum or none")
    out = []
    for nd, own in zip(batch.nodes, success):
        kids = [float(success[c]) for c in nd.children]
        extra = 0.0
        if kids and aggregate != "none":
            extra = sum(kids) / (len(kids) if aggregate == "mean" else 1)
        out.append(float(own) + bonus * extra)
    return out


def sibling_groups(batch: TreeBatch) -> list[int]:
    """Group ids of the leave-one-out baseline: the nodes of one root problem's ``n`` trees that answer
    the same subgoal (same prompt) are sibling samples of one another; a subgoal only one tree reached
    is grouped with the nodes at its depth under the same root problem instead."""
    by_prompt: dict[tuple, list[int]] = {}
    for i, nd in enumerate(batch.nodes):
        by_prompt.setdefault((nd.problem_index, tuple(nd.prompt_ids)), []).append(i)
    keys: list[tuple] = [()] * len(batch.nodes)
    for key, members in by_prompt.items():
        for i in members:
            nd = batch.nodes[i]
            keys[i] = ("prompt",) + key if len(members) > 1 else ("depth", nd.problem_index, nd.depth)
    ids: dict[tuple, int] = {}
    return [ids.setdefault(k, len(ids)) for k in keys]


def tree_stats(batch: TreeBatch) -> dict[str, float]:
    """Tree shape of a batch: nodes per tree, depth, delegations and refusals per node, truncations."""
    nodes, trees = batch.nodes, max(1, len(batch.roots))
    k = max(1, len(nodes))
    return {"nodes_per_tree": len(nodes) / trees, "max_depth": float(max((nd.depth for nd in nodes), default=0)),
            "delegation_rate": sum(nd.delegations > 0 for nd in nodes) / k,
            "refusal_rate": sum(nd.refused > 0 for nd in nodes) / k,
            "truncated_frac": sum(not nd.finished for nd in nodes) / k}
