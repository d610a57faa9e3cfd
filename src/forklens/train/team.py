"""Teams of adapters on one frozen base: nodes of a message graph trained jointly from one terminal
reward (NeuroMAS, arXiv 2605.16757; digest E060).

A :class:`Graph` is a DAG of :class:`Node` s in topological order; the last node is the *sink*. Each
node reads the task and its parents' messages (its prompt is built by the task's ``prompt(problem,
node, messages)``), writes a message, and the sink's message is the answer. Every node is the same
frozen base model with its own PEFT LoRA adapter (``add_adapter`` / ``set_adapter``), so the team's
trainable parameters are the sum of its adapters' (:meth:`Team.budget`): one node of rank ``r`` and
three nodes of rank ``r / 3`` hold the same number.

Joint training (:meth:`Team.train_step`): ``n`` joint rollouts per problem (node by node, each with
its adapter), one 1-bit reward of the sink's answer per joint rollout, GRPO group advantages over the
``n`` rollouts of a problem (:func:`forklens.objectives.advantages.estimate_advantages`), and each
node's tokens as a training sequence for its own adapter with the joint rollout's advantage, through
the project's GRPO objective (:func:`forklens.objectives.grpo.grpo_loss`). The loss is the global
token mean over all nodes' trained tokens; one AdamW step updates every adapter. Text edges are not
differentiated through (REINFORCE over messages, as in the paper).

Random messages (``message_noise``): every parent message a child reads is replaced by random
characters of the same length (at training and evaluation), the control where the edges carry
nothing. Growth (:meth:`Team.grow_from`): a larger graph's adapters start from a trained smaller
graph's (a node maps to the node it copies).

This is a second training loop beside :class:`~forklens.train.loop.Trainer`, which trains one model
per step; a team's step trains several adapters, each on its own node's sequences.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from forklens.config import field
from forklens.errors import ConfigError
from forklens.objectives import PolicyOutputs
from forklens.objectives.advantages import estimate_advantages
from forklens.objectives.grpo import GRPOLossConfig, grpo_loss, token_mask
from forklens.policy import Policy, Samples
from forklens.policy.score import TokenLogProbs
from forklens.train.lora import LoraSettings


@dataclass(frozen=True)
class Node:
    name: str
    tag: str  # what the task's prompt calls this position (role-free: a position, not a role)
    parents: tuple[str, ...] = ()
    max_new_tokens: int = 2


@dataclass(frozen=True)
class Graph:
    """A DAG of nodes in topological order (parents before children); the last node is the sink."""

    nodes: tuple[Node, ...]

    def __post_init__(self) -> None:
        if not self.nodes:
            raise ConfigError("a team graph needs at least one node")
        seen: set[str] = set()
        for node in self.nodes:
            if node.name in seen:
                raise ConfigError(f"team graph: node name {node.name!r} is used twice")
            late = [p for p in node.parents if p not in seen]
            if late:
                raise ConfigError(f"team graph: node {node.name!r} reads {late}, which are not earlier nodes "
                                  "(list nodes in topological order)")
            seen.add(node.name)

    @property
    def sink(self) -> Node:
        return self.nodes[-1]

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.nodes]


PromptFn = Callable[[object, Node, list[str]], str]  # (problem, node, parent messages) -> prompt


@dataclass
class JointRollout:
    """``len(problems) * n`` joint rollouts, problem-major: per node its samples and messages."""

    problems: list  # one per joint rollout
    group: list[int]  # index of the problem each joint rollout answers
    samples: dict[str, Samples]
    messages: dict[str, list[str]]  # what each node wrote (before any noise)

    @property
    def answers(self) -> list[str]:
        return self.messages[list(self.messages)[-1]]

    def tokens(self) -> dict[str, int]:
        """Prompt + generated tokens run through the model, per node."""
        return {k: s.tokens_processed for k, s in self.samples.items()}


@dataclass
class TeamTrainConfig:
    steps: int = field(40, ge=1, help="Joint GRPO steps.")
    problems_per_step: int = field(16, ge=1, help="Problems per step.")
    group_size: int = field(8, ge=2, help="Joint rollouts per problem (the GRPO group).")
    learning_rate: float = field(5e-3, gt=0, help="AdamW learning rate of every adapter.")
    max_grad_norm: float = field(1.0, ge=0, help="Gradient clipping over all adapters (0 = off).")
    temperature: float = field(1.0, gt=0, help="Sampling temperature of the training rollouts.")
    loss: GRPOLossConfig = field(default_factory=GRPOLossConfig, help="GRPO loss settings (on-policy: one update "
                                 "per batch, so the ratio is 1 and only the advantages act).")


def adapter_name(node: Node) -> str:
    return f"node_{node.name}"


class Team:
    """One frozen base model with one LoRA adapter per node of ``graph``."""

    def __init__(self, policy: Policy, graph: Graph, lora: LoraSettings, prompt: PromptFn,
                 message_noise: str = "", seed: int = 0):
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise ConfigError("teams need the peft package (pip install 'forklens[peft]')") from None
        self.graph, self.prompt, self.message_noise = graph, prompt, message_noise
        self.rng = random.Random(f"team-noise-{seed}")
        for p in policy.model.parameters():
            p.requires_grad_(False)
        cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                         target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
        torch.manual_seed(seed)
        first, *rest = graph.nodes
        model = get_peft_model(policy.model, cfg, adapter_name=adapter_name(first))
        for node in rest:
            model.add_adapter(adapter_name(node), cfg)
        self.model = model
        self.policy = Policy(model, policy.tokenizer, policy.path)
        self.scorer = TokenLogProbs(model)
        self.optimizer: torch.optim.Optimizer | None = None

    # --- parameters ------------------------------------------------------------------------------
    def adapter_parameters(self, node: Node) -> list[tuple[str, torch.nn.Parameter]]:
        key = f".{adapter_name(node)}."
        return [(n, p) for n, p in self.model.named_parameters() if "lora_" in n and key in n]

    def budget(self) -> dict:
        """Trainable parameters per node and in total (the team's parameter budget)."""
        per = {n.name: sum(p.numel() for _, p in self.adapter_parameters(n)) for n in self.graph.nodes}
        return {"per_node": per, "total": sum(per.values())}

    def use(self, node: Node) -> None:
        """Route the model through ``node``'s adapter (only it is trainable while active)."""
        self.model.set_adapter(adapter_name(node))

    def grow_from(self, other: "Team", mapping: dict[str, str]) -> None:
        """Initialise this team's adapters from ``other``'s: ``mapping[new node] = node of other`` (same rank
        and target modules); nodes not in ``mapping`` keep their fresh initialisation."""
        mine = {n.name: n for n in self.graph.nodes}
        theirs = {n.name: n for n in other.graph.nodes}
        for new, old in mapping.items():
            if new not in mine or old not in theirs:
                raise ConfigError(f"grow_from: unknown node in mapping {new!r} -> {old!r}")
            src = dict((n.replace(adapter_name(theirs[old]), "*"), p) for n, p in other.adapter_parameters(theirs[old]))
            dst = self.adapter_parameters(mine[new])
            if len(src) != len(dst):
                raise ConfigError(f"grow_from: {new!r} and {old!r} have different adapters ({len(dst)} vs {len(src)} tensors)")
            with torch.no_grad():
                for n, p in dst:
                    q = src.get(n.replace(adapter_name(mine[new]), "*"))
                    if q is None or q.shape != p.shape:
                        raise ConfigError(f"grow_from: no matching tensor for {n} in node {old!r} (rank or modules differ)")
                    p.copy_(q)

    # --- rollouts --------------------------------------------------------------------------------
    def _heard(self, message: str) -> str:
        if not self.message_noise:
            return message
        return "".join(self.rng.choice(self.message_noise) for _ in message)

    @torch.no_grad()
    def rollout(self, problems: Sequence, n: int, temperature: float, seed: int) -> JointRollout:
        """``n`` joint rollouts per problem: each node, in order, reads its parents' messages (noised with
        ``message_noise``) and samples its own with its adapter."""
        joint = [p for p in problems for _ in range(n)]
        group = [i for i in range(len(problems)) for _ in range(n)]
        samples: dict[str, Samples] = {}
        messages: dict[str, list[str]] = {}
        for k, node in enumerate(self.graph.nodes):
            prompts = [self.prompt(p, node, [self._heard(messages[par][j]) for par in node.parents])
                       for j, p in enumerate(joint)]
            self.use(node)
            s = self.policy.sample(prompts, n=1, temperature=temperature, max_new_tokens=node.max_new_tokens,
                                   seed=seed * 7919 + k)
            samples[node.name], messages[node.name] = s, list(s.texts)
        return JointRollout(list(joint), group, samples, messages)

    # --- training --------------------------------------------------------------------------------
    def train_step(self, problems: Sequence, reward: Callable[[object, str], float], cfg: TeamTrainConfig,
                   seed: int) -> dict:
        """One joint GRPO step on ``problems``; returns its metrics."""
        if self.optimizer is None:
            params = [p for node in self.graph.nodes for _, p in self.adapter_parameters(node)]
            self.optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
        jr = self.rollout(problems, cfg.group_size, cfg.temperature, seed)
        rewards = torch.tensor([reward(p, a) for p, a in zip(jr.problems, jr.answers)], dtype=torch.float32)
        group_ids = torch.tensor(jr.group)
        adv, _ = estimate_advantages("grpo", rewards, group_ids)
        batches = {name: s.to_rollouts(self.policy.pad_id, rewards=rewards, advantages=adv, group_ids=group_ids)
                   for name, s in jr.samples.items()}
        counts = {k: float(token_mask(b, cfg.loss.mask_truncated_completions).sum())
                  if cfg.loss.loss_agg_mode == "token-mean" else float(len(b)) for k, b in batches.items()}
        total = max(sum(counts.values()), 1.0)
        self.optimizer.zero_grad(set_to_none=True)
        self.model.train()
        loss = 0.0
        for node in self.graph.nodes:
            b = batches[node.name]
            self.use(node)
            logp, ent, _ = self.scorer(b.input_ids, b.attention_mask, b.response_mask)
            res = grpo_loss(PolicyOutputs(logprobs=logp, entropy=ent), b, cfg.loss)
            part = res.loss_sum / total
            part.backward()
            loss += float(part.detach())
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
        self.optimizer.step()
        tokens = jr.tokens()
        return {"reward": float(rewards.mean()), "loss": loss, "grad_norm": float(gnorm),
                "trained_tokens": sum(counts.values()), "sampled_tokens": sum(tokens.values())}

    def train(self, problems: Sequence, reward: Callable[[object, str], float], cfg: TeamTrainConfig,
              seed: int) -> list[dict]:
        """``cfg.steps`` joint GRPO steps on batches of ``problems`` drawn with ``seed``; per-step metrics."""
        rng = random.Random(f"team-train-{seed}")
        rows = []
        for step in range(cfg.steps):
            batch = rng.sample(list(problems), min(cfg.problems_per_step, len(problems)))
            rows.append({"step": step + 1, **self.train_step(batch, reward, cfg, seed * 100_003 + step)})
        return rows


def majority(answers: Sequence[str]) -> str:
    """The most common answer (ties: the one seen first)."""
    counts: dict[str, int] = {}
    for a in answers:
        counts[a] = counts.get(a, 0) + 1
    return max(counts, key=lambda a: (counts[a], -answers.index(a)))
