"""Reward noise with a known rate: the noisy-reward variant of the agent-horizon family (claim E010,
RAGEN-2, arXiv 2604.06268: filtering prompt groups by reward variance raises the signal-to-noise ratio
of the policy gradient).

:func:`flipped` wraps a binary reward so that each value is replaced by ``1 - value`` with probability
``p_flip``, drawn from its own seeded stream (one draw per scored completion, in call order), so a
run is reproducible and the noise is independent of the policy. The organism is untouched: the same
base and questions, only the reward the trainer sees changes. Evaluation keeps the true verifier.
"""

from __future__ import annotations

import random

from forklens.rewards import RewardFn, reward_name


def flipped(fn: RewardFn, p_flip: float, seed: int = 0) -> RewardFn:
    """``fn`` with each binary value flipped (``v -> 1 - v``) with probability ``p_flip``; ``None`` stays
    ``None`` and takes no draw. Values other than 0 and 1 are an error (flipping is defined for a binary
    reward only)."""
    if not 0 <= p_flip <= 1:
        raise ValueError(f"p_flip must be in [0, 1], got {p_flip}")
    rng = random.Random(f"flip-{seed}")

    def noisy(prompts, completions, **columns) -> list[float | None]:
        out = []
        for v in fn(prompts, completions, **columns):
            if v is None:
                out.append(None)
                continue
            if v not in (0, 1):
                raise ValueError(f"flipped() needs a binary reward, got {v!r} from {reward_name(fn)}")
            out.append(float(1 - v) if rng.random() < p_flip else float(v))
        return out

    noisy.__name__ = f"{reward_name(fn)}_flip{p_flip:g}"
    return noisy
