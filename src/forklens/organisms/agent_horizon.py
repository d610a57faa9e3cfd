"""The `agent-horizon` family: long bridge chains (6-10 lookups) with sparse success, for milestone
shaping (E008, MiRA, arXiv 2603.19685) and reward-variance filtering under reward noise (E010, RAGEN-2,
arXiv 2604.06268).

The teacher makes every lookup and gets each hop right with probability ``p_right = 0.7`` (slips as in
:mod:`forklens.organisms.agent_deep`), so every hop is demonstrated at every depth and the all-right
chain has probability 0.7^d: 11.8% at depth 6 down to 2.8% at depth 10 (a few percent on average,
sparse outcome reward), while each hop's milestone is reached often (dense milestone reward). The
control `short` keeps the same teacher at depths 1-4 (0.7 to 0.24: outcome reward not sparse). The
`noisy-reward` variant is `long` with ``reward_flip = 0.2``: the organism is the same (same cache
entry); a caller wraps the verifier with :func:`forklens.rewards.noise.flipped` at that rate.

Two variant triples were added after the first measured levers run, each sharing one base between a
sparse precondition, its noisy copy and a dense control: ``*-mixed`` (pretrained on depths 1-10; RL and
test on 6-10 or 1-4) and ``*-hops`` (depths 1-4, each hop right with probability 0.35; RL and test on
3-4 or 1-2). At 2 x 64 the `long` base (depths 6-10 only) never learnt the lookups and the mixed base
stalled the same way; the hops base learns (docs/organisms.md, docs/results.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from forklens.config import field
from forklens.organisms.agent import AgentOrganismConfig, build_agent_organism
from forklens.organisms.base import OrganismModelConfig
from forklens.organisms.zoo import Family, Variant, register
from forklens.tasks.agent import AgentConfig, AgentTask


def horizon_agent_config() -> AgentConfig:
    return AgentConfig(bridge_depths=[6, 7, 8, 9, 10], p_comparison=0.0, p_continue=1.0, p_right=0.7)


def horizon_model() -> OrganismModelConfig:
    return OrganismModelConfig(max_position_embeddings=192)  # depth-10 episodes are ~150 tokens


@dataclass
class AgentHorizonOrganismConfig(AgentOrganismConfig):
    agent: AgentConfig = field(default_factory=horizon_agent_config, help="Long bridge chains, slipping teacher.")
    model: OrganismModelConfig = field(default_factory=horizon_model, help="Model size (context 192).")
    reward_flip: float = field(0.0, ge=0, le=1, help="Probability that the training reward is flipped "
                               "(applied by the caller to the verifier with forklens.rewards.noise.flipped; "
                               "not part of the organism).")


def build_horizon_organism(cfg: AgentHorizonOrganismConfig, out_dir: str | Path, use_cache: bool = True,
                           progress: bool = True) -> dict:
    """The agent organism of ``cfg`` without ``reward_flip`` (which is not part of the organism), so the
    noisy-reward variant shares its base with `long`."""
    base = {k: v for k, v in asdict(cfg).items() if k != "reward_flip"}
    org = AgentOrganismConfig(agent=cfg.agent, model=cfg.model, pretrain=cfg.pretrain,
                              batch_size=base["batch_size"], seed=base["seed"])
    return {**build_agent_organism(org, out_dir, use_cache=use_cache, progress=progress),
            "reward_flip": cfg.reward_flip}


#: the mixed variants' one base: the teacher demonstrates chains of every depth 1-10 in pretraining
MIXED = ("agent.bridge_depths=1,2,3,4,5,6,7,8,9,10",)

#: the hops variants' one base: depths 1-4, each hop right with probability 0.35
HOPS = ("agent.bridge_depths=1,2,3,4", "agent.p_right=0.35")

AGENT_HORIZON = register(Family(
    name="agent-horizon",
    summary="Bridge chains of 6-10 lookups, each hop right with probability 0.7: outcome success of a few "
    "percent, milestones reached often; a noisy-reward variant flips the training reward.",
    can_show="Whether milestone shaping helps when outcome success is sparse (E008) and whether reward-variance "
    "filtering helps more when the reward is noisy (E010), against the short-horizon control.",
    cannot_show="Web-scale long horizons (10 lookups of exact facts); exploration (the chain is given in the prompt).",
    config=AgentHorizonOrganismConfig, build=build_horizon_organism, task=lambda cfg: AgentTask(cfg.agent),
    claims=("E008", "E010"),
    variants={
        "long": Variant("precondition", "Depths 6-10: the all-right chain has probability 0.7^d = 2.8-11.8%.",
                        (), ("E008", "E010")),
        "noisy-reward": Variant("precondition", "`long` with the training reward flipped with probability 0.2 "
                                "(same organism).", ("reward_flip=0.2",), ("E010",)),
        "short": Variant("control", "Depths 1-4 with the same teacher: success 24-70%, not sparse.",
                         ("agent.bridge_depths=1,2,3,4",), ("E008", "E010")),
        # added after the measured levers run (results/levers-agent-horizon): its `long` base (2 x 64, 300
        # steps) plateaued at loss 1.65 and solved no depth-6-10 question (zero success, not sparse)
        "long-mixed": Variant("precondition", "One base pretrained on depths 1-10 (the mechanism is learnt on "
                              "short chains); RL and test on depths 6-10. Added after `long` came out degenerate.",
                              (*MIXED, "agent.train_depths=6,7,8,9,10", "agent.test_depths=6,7,8,9,10"),
                              ("E008", "E010")),
        "noisy-mixed": Variant("precondition", "`long-mixed` with the training reward flipped with probability "
                               "0.2 (same organism).", (*MIXED, "agent.train_depths=6,7,8,9,10",
                                                        "agent.test_depths=6,7,8,9,10", "reward_flip=0.2"), ("E010",)),
        "short-mixed": Variant("control", "The same base as `long-mixed`; RL and test on depths 1-4 (success "
                               "not sparse).", (*MIXED, "agent.train_depths=1,2,3,4", "agent.test_depths=1,2,3,4"),
                               ("E008", "E010")),
        # added when the mixed base (2 x 64) also stalled at loss 1.68 through step 181 of 600 (build stopped):
        # sparse success from slips, not length, at depths a small base learns (1-4)
        "sparse-hops": Variant("precondition", "One base on depths 1-4 whose teacher gets each hop right with "
                               "probability 0.35; RL and test on depths 3-4 (all-right chain 4.3% / 1.5%).",
                               (*HOPS, "agent.train_depths=3,4", "agent.test_depths=3,4"), ("E008", "E010")),
        "noisy-hops": Variant("precondition", "`sparse-hops` with the training reward flipped with probability 0.2 "
                              "(same organism).", (*HOPS, "agent.train_depths=3,4", "agent.test_depths=3,4",
                                                   "reward_flip=0.2"), ("E010",)),
        "dense-hops": Variant("control", "The same base as `sparse-hops`; RL and test on depths 1-2 (all-right "
                              "chain 35% / 12%: not sparse).", (*HOPS, "agent.train_depths=1,2",
                                                                "agent.test_depths=1,2"), ("E008", "E010")),
    },
))
