"""The `agent-tools` family: predictable vs random tool observations, for ECHO (E084, arXiv 2605.24517:
next-token loss on the environment's tokens inside rollouts helps when observations carry learnable
structure).

Same questions and noisy teacher as the `agent` organism (depths 1-4, ``p_continue = 0.5``); only the
knowledge base differs. `predictable` (precondition) answers every call from one global tool that is
a computable function of the call (:data:`~forklens.tasks.agent.SHIFT_KB`: relation ``r`` shifts every
letter by ``r + 1``, an attribute is a letter sum mod 10), so a model trained on observation tokens can
learn to predict them. `random` (control) is today's private random knowledge base per question: an
observation cannot be predicted from anything the model sees, so a loss on it has nothing to teach.
"""

from __future__ import annotations

from forklens.organisms.agent import AgentOrganismConfig, build_agent_organism
from forklens.organisms.zoo import Family, Variant, register
from forklens.tasks.agent import AgentTask

AGENT_TOOLS = register(Family(
    name="agent-tools",
    summary="The agent organism with a predictable tool (one global, computable knowledge base) or today's "
    "random per-question one.",
    can_show="Whether training on observation tokens (ECHO) helps when observations are predictable and not "
    "when they are random.",
    cannot_show="Terminal-style observations with partial structure; whether a model predicts a tool it never "
    "calls (it predicts only what its episodes observe).",
    config=AgentOrganismConfig, build=build_agent_organism, task=lambda cfg: AgentTask(cfg.agent),
    claims=("E084",),
    variants={
        "predictable": Variant("precondition", "Every observation is a computable function of the call "
                               "(letter shift / letter sum).", ("agent.kb=shift",), ("E084",)),
        "random": Variant("control", "A private random knowledge base per question: observations are "
                          "unpredictable.", (), ("E084",)),
    },
))
