"""The agent task with an exploration behaviour in its teacher, for exploration interleaving (E052,
arXiv 2605.16143: task-focused GRPO drops exploration checkpoint coverage on unfamiliar environments;
interleaving exploration rollouts rewarded by coverage recovers it).

The questions, knowledge bases, tool and verifier are those of :mod:`forklens.tasks.agent`; only the
pretraining stream differs. With probability ``p_explore`` a pretraining example is an **exploration
episode** instead of a task episode: the exploration prompt of a fresh question
(:func:`~forklens.tasks.agent.exploration_problem`, ``?qwe>``: the question's entities, no question),
then the teacher looks up the first ``k`` checkpoints of each listed entity in the canonical order
``A B C D E F X Y Z`` (every relation, then every attribute) and ends with the answer marker::

    prompt    ?qwe>
    episode   ?A(qwe)[=rty;]?B(qwe)[=uio;]?C(qwe)[=pas;]!<eos>

``k`` is drawn uniformly from ``explore_probes`` (a teacher that is sometimes thorough and sometimes
not), so a base that learned the behaviour has an exploration checkpoint coverage (ECC,
:func:`~forklens.tasks.agent.coverage`) of about ``mean(explore_probes) / 9`` on one-entity prompts.
With ``p_explore = 0`` the stream is exactly the agent task's (the control base has no exploration
behaviour). Every knowledge base is private and random, so an environment is never familiar in the
sense of a known layout: "familiar" here means the kind of environment the base explored in
pretraining, "unfamiliar" a held-out one it never saw.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from forklens.config import field
from forklens.tasks.agent import (ANSWER_MARKER, ATTRIBUTES, RELATIONS, AgentConfig, AgentTask, Segment,
                                  exploration_problem, listed_entities)
from forklens.tasks.base import Problem

#: the canonical order in which the exploration teacher looks up an entity's checkpoints
CHECKPOINT_ORDER = RELATIONS + ATTRIBUTES


@dataclass
class ExploreAgentConfig(AgentConfig):
    p_explore: float = field(0.25, ge=0, le=1, help="Share of pretraining examples that are exploration episodes "
                             "(0 = the agent task's stream: no exploration behaviour).")
    explore_probes: list[int] = field(default_factory=lambda: [3, 4, 5, 6, 7, 8, 9], ge=1, le=len(CHECKPOINT_ORDER),
                                      help="Checkpoints per listed entity the exploration teacher looks up "
                                      "(drawn uniformly), in the order A-F then X-Z.")


class ExploreAgentTask(AgentTask):
    """:class:`~forklens.tasks.agent.AgentTask` whose teacher also demonstrates exploration episodes."""

    name = "agent-explore"

    def __init__(self, config: ExploreAgentConfig | None = None):
        super().__init__(config or ExploreAgentConfig())
        if not self.config.explore_probes:
            raise ValueError("explore_probes must be a non-empty list of checkpoint counts in 1..9")

    def exploration_trajectory(self, problem: Problem, probes: int) -> list[Segment]:
        """The exploration teacher on ``problem``'s exploration prompt: the first ``probes`` checkpoints of
        each listed entity (order A-F, X-Z), then the answer marker (no answer: the episode ends)."""
        if not 1 <= probes <= len(CHECKPOINT_ORDER):
            raise ValueError(f"probes must be in 1..{len(CHECKPOINT_ORDER)}, got {probes}")
        segs: list[Segment] = []
        for entity in listed_entities(problem):
            for name in CHECKPOINT_ORDER[:probes]:
                segs += self._call(problem, name, entity)
        return segs + [(ANSWER_MARKER, False)]

    def teacher_example(self, rng: random.Random) -> tuple[str, list[Segment]]:
        """With probability ``p_explore`` an exploration episode on a fresh question's exploration prompt,
        else the agent task's noisy-teacher episode. At ``p_explore = 0`` no extra draw is made, so the
        stream is the agent task's."""
        if self.config.p_explore > 0 and rng.random() < self.config.p_explore:
            problem = exploration_problem(self.random_problem(rng))
            return problem.prompt, self.exploration_trajectory(problem, rng.choice(self.config.explore_probes))
        return super().teacher_example(rng)
