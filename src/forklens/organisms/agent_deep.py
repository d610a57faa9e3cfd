"""The `agent-deep` family: deep bridge chains whose every hop the base can do but whose full chain it
almost never samples (claim E011, arXiv 2604.14877: RL expands the capability boundary on compositional
tool use).

The noisy teacher of :mod:`forklens.tasks.agent` is run with ``p_continue = 1`` (it always makes the
``d`` lookups a question needs) and ``p_right < 1``: each lookup uses the right relation with
probability ``p_right`` and otherwise slips to one fixed wrong one (the nearest other listed relation,
:func:`~forklens.tasks.agent.slip_relation`) and goes on from the entity that came back. Every hop
position 1-6 is therefore demonstrated correctly in a ``p_right`` share of the pretraining lookups (the
*capability* is in the base at every test depth), while the all-right chain of depth ``d`` has
probability ``p_right ** d`` (the *strategy* is not): at ``p_right = 0.2`` that is 1.6e-3, 3.2e-4 and
6.4e-5 at depths 4, 5 and 6, all below 1/256. A stop coin (``p_continue`` 0.1-0.2) cannot do this: the
``i``-th hop is shown only after ``i - 1`` continues, so at 0.2 the 5th hop appears in 0.2^4 = 0.16% of
depth-5 pretraining trajectories and the base would lack the capability, not the strategy.

RL and SFT train on depths 1-3 (``train_depths``); the boundary is measured on depths 4-6
(``test_depths``). Pretraining covers depths 1-6. The control is the same organism at ``p_right = 0.5``
(today's coin value): its base already samples deep chains (0.5^6 = 1/64), so nothing deep lies far
outside its boundary at k = 64.
"""

from __future__ import annotations

from dataclasses import dataclass

from forklens.config import field
from forklens.organisms.agent import AgentOrganismConfig, build_agent_organism
from forklens.organisms.zoo import Family, Variant, register
from forklens.tasks.agent import AgentConfig, AgentTask


def deep_agent_config() -> AgentConfig:
    return AgentConfig(bridge_depths=[1, 2, 3, 4, 5, 6], p_comparison=0.0, p_continue=1.0, p_right=0.2,
                       train_depths=[1, 2, 3], test_depths=[4, 5, 6], n_train=200, n_test=60)


@dataclass
class AgentDeepOrganismConfig(AgentOrganismConfig):
    """The agent organism config (same model, 0.6M parameters, and 1000-step pretraining) with deep questions."""

    agent: AgentConfig = field(default_factory=deep_agent_config,
                               help="Deep bridge questions; the teacher slips a hop with probability 1 - p_right.")


AGENT_DEEP = register(Family(
    name="agent-deep",
    summary="Bridge chains of depth 1-6; the teacher does every hop but gets each right with probability p_right.",
    can_show="Whether RL trained on depths 1-3 solves depth 4-6 questions the base never solves at k = n "
    "(boundary expansion, E011), with the per-hop capability present at every test depth.",
    cannot_show="Expansion through new capabilities (each hop is already in the base); free-text queries with "
    "many good phrasings (one right call per hop); noisy retrieval (the tool returns exact facts).",
    config=AgentDeepOrganismConfig, build=build_agent_organism, task=lambda cfg: AgentTask(cfg.agent),
    claims=("E011",),
    variants={
        "deep": Variant("precondition", "Each hop right with probability 0.2: full chains at depths 4-6 have "
                        "base probability 1.6e-3 to 6.4e-5, below 1/256.", ("agent.p_right=0.2",), ("E011",)),
        "deeper": Variant("precondition", "Each hop right with probability 0.1: added after the built `deep` base "
                          "(before any RL result) gave the right call 0.29-0.44 per hop, not 0.2, so its gold "
                          "episodes averaged 6e-3, above 1/256.", ("agent.p_right=0.1",), ("E011",)),
        "coin": Variant("control", "Each hop right with probability 0.5 (today's coin): full chains at depths 4-6 "
                        "have probability 1/16 to 1/64, inside the base's boundary at k = 64.",
                        ("agent.p_right=0.5",), ("E011",)),
    },
))
