"""The `entangled` family (E060's control task): the compose message format on a random 10 x 10
table ``y = T(x1, x2)`` (:mod:`forklens.tasks.compose` with ``decomposable = False``).

The base's nodes read and write the same messages as on `compose` (noisy lookups of one input each),
but no message says anything about the answer: the sink and the single agent write ``T(x1, x2)`` with
probability ``p_right_table`` (else a decoy or a uniform digit), whatever they read. A team's split
of the adapter budget has no sub-computation to specialise on, so its advantage should vanish here.
"""

from __future__ import annotations

from forklens.organisms.compose import ComposeOrganismConfig, build_compose_organism
from forklens.organisms.zoo import Family, Variant, register
from forklens.tasks.compose import ComposeTask

ENTANGLED = register(Family(
    name="entangled",
    summary="The compose message format on a random table y = T(x1, x2): the messages exist but the answer "
    "does not decompose into them.",
    can_show="Whether a team's advantage over a single agent under one parameter budget needs a task that "
    "decomposes (the control of E060): the same graph, budget and reward without a sub-computation.",
    cannot_show="Anything about decomposable tasks; it is the control of `compose`.",
    config=ComposeOrganismConfig, build=build_compose_organism, task=lambda cfg: ComposeTask(cfg.task),
    claims=("E060",),
    variants={
        "table": Variant("control", "y = T(x1, x2), a random table: every node's message is irrelevant to the "
                         "answer, so splitting the budget by node has nothing to specialise on.",
                         ("task.decomposable=false",)),
        "table-long": Variant("control", "`table` pretrained 4x longer (2,400 steps), the control of `compose/sum-long`.",
                              ("task.decomposable=false", "pretrain.max_steps=2400", "pretrain.warmup_steps=100")),
    },
))
