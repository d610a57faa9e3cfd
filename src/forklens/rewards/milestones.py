"""Milestone shaping for the agent organism (after MiRA, arXiv 2603.19685; docs/rewards.md).

**Milestones.** A question of depth ``d`` has ``d`` milestones, one per lookup it needs, known
exactly from the task generator:

* bridge ``qwe.A.C>``: hop ``i`` is the call ``?{relations[i]}({chain[i]})`` (the chain entity it
  needs is only known once hop ``i - 1`` is resolved, so reaching hop ``i`` means resolving it);
* comparison ``^X(qwe,rty)>``: milestone ``i`` is the call ``?X({entities[i]})``.

A milestone is *reached* the first time the episode makes its call; repeats add nothing.

**Potential.** ``Phi(s_t)`` = fraction of milestones reached after the model's first ``t`` tool calls,
in ``[0, 1]``, with ``Phi(s_0) = 0``. One step is one tool call (the answer turn reaches no
milestone).

**What the reward implements.** Potential-based shaping adds ``F_t = gamma * Phi(s_{t+1}) - Phi(s_t)``
to the reward of step ``t`` (Ng et al. 1999, which keeps the optimal policy). GRPO scores whole
episodes, so the episode gets the discounted sum of the shaping terms, which telescopes::

    sum_{t=0}^{T-1} gamma^t F_t = gamma^T Phi(s_T) - Phi(s_0) = gamma^T Phi(s_T)

with ``T`` the number of tool calls. :func:`milestone_reward` returns exactly that value (computed as
the sum of the per-step terms; :func:`shaping_terms` exposes them and the tests check the
telescoping). With the default ``gamma = 1`` it is the final fraction of milestones reached; with
``gamma < 1`` every extra call costs a factor ``gamma``. Add it to the outcome reward with
:func:`forklens.rewards.compose_rewards` (``reward_weights`` scale it).

**Runtime checklist.** :class:`ChecklistEnv` wraps the tool environment so that the milestones also
serve as a checklist the model reads at run time (MiRA uses them the same way): after every
observation it appends how many milestones are still open, as one digit. This is text the base
organism never saw in pretraining, so it is an intervention on the prompt distribution; it is off
unless a caller wraps the environment.
"""

from __future__ import annotations

from typing import Sequence

from forklens.rewards import as_problem, texts_of
from forklens.tasks.agent import tool_calls

MAX_SCAN_CHARS = 100_000  # a transcript is scanned up to here: a huge output costs bounded time


def milestones(problem) -> list[str] | None:
    """The tool calls that reach the question's milestones, in order (None for a non-agent problem)."""
    meta = getattr(problem, "meta", None) or {}
    kind = meta.get("type")
    if kind == "bridge":
        return [f"?{r}({e})" for r, e in zip(meta["relations"], meta["chain"])]
    if kind == "comparison":
        return [f"?{meta['attribute']}({e})" for e in meta["entities"]]
    return None


def episode_calls(completion, episode=None) -> list[str]:
    """The model's tool calls: from the sampled episode when there is one, else parsed from the text."""
    calls = getattr(episode, "calls", None)
    if calls is not None:
        return [c for c in calls if isinstance(c, str)]
    if not isinstance(completion, str):
        return []
    return tool_calls(completion[:MAX_SCAN_CHARS])


def potentials(problem, calls: Sequence[str]) -> list[float] | None:
    """``[Phi(s_0), ..., Phi(s_T)]`` after each of the ``T`` calls (None for a non-agent problem)."""
    goal = milestones(problem)
    if goal is None:
        return None
    want, reached = set(goal), set()
    out = [0.0]
    for c in calls:
        if c in want:
            reached.add(c)
        out.append(len(reached) / len(goal))
    return out


def shaping_terms(phi: Sequence[float], gamma: float = 1.0) -> list[float]:
    """The per-step shaping terms ``F_t = gamma * Phi_{t+1} - Phi_t``."""
    return [gamma * phi[t + 1] - phi[t] for t in range(len(phi) - 1)]


def shaped_return(phi: Sequence[float], gamma: float = 1.0) -> float:
    """``sum_t gamma^t F_t`` (equals ``gamma^T Phi_T - Phi_0``)."""
    return sum(gamma ** t * f for t, f in enumerate(shaping_terms(phi, gamma)))


def milestone_reward(task=None, gamma: float = 1.0):
    """The episode-level milestone shaping reward in TRL's signature.

    Needs the ``problem`` column (agent :class:`~forklens.tasks.base.Problem`); uses the ``episode``
    column's tool calls when present, else parses ``?R(ent)`` calls from the completion text (so it
    also works on plain transcripts, e.g. in TRL). Returns ``gamma^T * Phi(s_T)`` per completion,
    ``None`` for problems without milestones, and ``0.0`` for a completion that is not a string.
    ``task`` is accepted for symmetry with the other reward builders (the milestones come from the
    problems' metadata).
    """
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")

    def reward(prompts, completions, problem=None, episode=None, **_) -> list[float | None]:
        n = len(completions)
        problems = [as_problem(p) for p in problem] if problem is not None else [None] * n
        eps = episode if episode is not None else [None] * n
        out: list[float | None] = []
        for p, c, e in zip(problems, texts_of(completions), eps):  # chat-format completions as their text
            phi = potentials(p, episode_calls(c, e))
            out.append(None if phi is None else shaped_return(phi, gamma))
        return out

    reward.__name__ = "milestones" if gamma == 1.0 else f"milestones_g{gamma:g}"
    return reward


class ChecklistEnv:
    """A tool environment whose observations end with the number of milestones still open (a digit).

    ``=rty;`` becomes ``=rty;2`` when two milestones remain. The opening text (after the prompt)
    states the full count. Everything else is delegated to the wrapped environment.
    """

    def __init__(self, env):
        self.env = env
        self.stop_strings = env.stop_strings

    @staticmethod
    def _open(problem, calls) -> int:
        goal = milestones(problem) or []
        return len(set(goal) - set(calls))

    def reset(self, problem, T: int):
        state, opening = self.env.reset(problem, T)
        if opening:  # the forced answer marker comes last: the next turn must be the answer
            return state, opening
        return state, str(min(self._open(problem, []), 9))

    def step(self, problem, state, turn_text: str):
        obs, done = self.env.step(problem, state, turn_text)
        if done or not obs:
            return obs, done
        left = str(min(self._open(problem, state.calls), 9))
        if obs.endswith("!"):  # keep the forced answer marker last
            return obs[:-1] + left + "!", done
        return obs + left, done
