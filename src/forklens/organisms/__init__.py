"""Model organisms: tiny HF models pretrained on synthetic tasks, grouped into families with
precondition and control variants (:mod:`forklens.organisms.zoo`, docs/organisms.md)."""

from forklens.organisms import addv, agent, arith, negctl  # noqa: F401  (each registers its family)
from forklens.organisms import agent_deep, agent_horizon, agent_tools, lengths, shortcut  # noqa: F401
from forklens.organisms import steer  # noqa: F401
from forklens.organisms import facts  # noqa: F401
from forklens.organisms import compose, entangled  # noqa: F401  (E060 teams)
from forklens.organisms import sort  # noqa: F401
from forklens.organisms import delegation  # noqa: F401
from forklens.organisms import skills  # noqa: F401
from forklens.organisms import agent_explore  # noqa: F401
from forklens.organisms.zoo import FAMILIES, Family, Variant, get_family, register, zoo_table

__all__ = ["FAMILIES", "Family", "Variant", "get_family", "register", "zoo_table"]
