"""Bradley-Terry reward-model training on preference pairs: `forklens train reward-model`.

Data: JSONL/JSON/parquet/datasets rows in TRL RewardTrainer's column names, ``chosen`` and ``rejected``
(strings, or chat messages whose last assistant turn is the response), with an optional ``prompt``
(TRL's explicit-prompt format; without it the prompt is empty, TRL's implicit format) and an optional
``label`` in [0, 1] (P(chosen preferred), default 1: a soft label such as sigma(U_c - U_r)).

The fit is a plain AdamW loop over shuffled mini-batches of pairs minimising the mean Bradley-Terry
loss (:func:`forklens.objectives.fpo.bradley_terry_loss`), on the reward head only or on the whole
model. It is small on purpose (one process, no accumulation); the iterative RLHF loop
(:mod:`forklens.train.rlhf`) calls :func:`refit_step` between policy steps.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from forklens.config import field
from forklens.errors import DataError
from forklens.objectives.fpo import bradley_terry_loss
from forklens.rewards.reward_model import RewardModel
from forklens.tasks.dataset import completion_text, read_rows


@dataclass(frozen=True)
class PreferencePair:
    prompt: str | list  # a string or chat messages
    chosen: str
    rejected: str
    label: float = 1.0  # P(chosen preferred)


@dataclass
class RewardModelTrainConfig:
    epochs: int = field(1, ge=1, help="Passes over the pairs.")
    batch_size: int = field(32, ge=1, help="Pairs per optimizer step.")
    learning_rate: float = field(1e-3, gt=0, help="AdamW learning rate.")
    weight_decay: float = field(0.0, ge=0, help="AdamW weight decay.")
    head_only: bool = field(True, help="Train the reward head only (the backbone frozen), as arXiv 2605.04266 does.")
    backbone: Literal["causal-lm", "bag-of-tokens"] = field("causal-lm", help="causal-lm (the model's last hidden state) or bag-of-tokens (token counts).")
    eval_fraction: float = field(0.1, ge=0, lt=1, help="Fraction of pairs held out for the pair-accuracy report.")
    seed: int = field(0, help="Seed of the head's initialisation, the split and the shuffling.")


def _split_chat(value, where: str, key: str) -> tuple[list, str]:
    """(messages before the last assistant message, its content) of a conversational row's column."""
    last = max((i for i, m in enumerate(value) if isinstance(m, dict) and m.get("role") == "assistant"), default=None)
    if last is None:
        raise DataError(f"{where}: \"{key}\" holds chat messages without an assistant message")
    return list(value[:last]), str(value[last].get("content", ""))


def read_preference_pairs(path: str) -> list[PreferencePair]:
    """The pairs of a preference file (see the module docstring); clear errors naming the row. A prompt
    given as chat messages is kept as messages (the reward model renders it with the chat template);
    without a prompt, conversational ``chosen`` / ``rejected`` share their messages before the last
    assistant turn, which become the prompt (TRL's implicit-prompt format)."""
    pairs = []
    for where, rec in read_rows(path):
        for key in ("chosen", "rejected"):
            if key not in rec:
                raise DataError(f"{where}: missing the required \"{key}\" field (TRL RewardTrainer columns: "
                                "chosen, rejected and an optional prompt)")
            if not isinstance(rec[key], (str, list)):
                raise DataError(f"{where}: \"{key}\" must be a string or chat messages, got "
                                f"{type(rec[key]).__name__}")
        prompt = rec.get("prompt", "")
        if not isinstance(prompt, (str, list)):
            raise DataError(f"{where}: \"prompt\" must be a string or chat messages, got {type(prompt).__name__}")
        chosen, rejected = rec["chosen"], rec["rejected"]
        if "prompt" not in rec and isinstance(chosen, list) and isinstance(rejected, list):
            prompt, chosen = _split_chat(chosen, where, "chosen")
            prefix, rejected = _split_chat(rejected, where, "rejected")
            if prefix != prompt:
                raise DataError(f"{where}: \"chosen\" and \"rejected\" differ before their last assistant message "
                                "(the implicit prompt must be shared)")
        label = rec.get("label", 1.0)
        if isinstance(label, bool) or not isinstance(label, (int, float)) or not 0.0 <= float(label) <= 1.0:
            raise DataError(f"{where}: \"label\" must be a number in [0, 1] (P(chosen preferred)), got {label!r}")
        pairs.append(PreferencePair(prompt if prompt else "", completion_text(chosen), completion_text(rejected),
                                    float(label)))
    if not pairs:
        raise DataError(f"{path}: no preference pairs")
    return pairs


def pair_loss(rm: RewardModel, pairs: Sequence[PreferencePair]) -> tuple[torch.Tensor, int, torch.Tensor]:
    """(summed Bradley-Terry loss, pair count, margins r_c - r_r) of ``pairs`` under ``rm``."""
    prompts = [p.prompt for p in pairs]
    r_c = rm(rm.encode(prompts, [p.chosen for p in pairs]))
    r_r = rm(rm.encode(prompts, [p.rejected for p in pairs]))
    label = torch.tensor([p.label for p in pairs], dtype=r_c.dtype, device=r_c.device)
    loss, n = bradley_terry_loss(r_c, r_r, label)
    return loss, n, (r_c - r_r).detach()


def trainable(rm: RewardModel, head_only: bool) -> list[torch.nn.Parameter]:
    for p in rm.backbone.parameters():
        p.requires_grad_(not head_only)
    return [p for p in rm.parameters() if p.requires_grad]


def refit_step(rm: RewardModel, optimizer: torch.optim.Optimizer, pairs: Sequence[PreferencePair]) -> dict[str, float]:
    """One optimizer step on the mean Bradley-Terry loss of ``pairs``; returns the loss before it."""
    rm.train()
    optimizer.zero_grad(set_to_none=True)
    loss, n, margin = pair_loss(rm, pairs)
    (loss / n).backward()
    optimizer.step()
    label = torch.tensor([p.label for p in pairs])
    agree = ((margin.cpu() > 0) == (label > 0.5)).float().mean()
    return {"rm_loss": float(loss.detach()) / n, "rm_pair_accuracy": float(agree)}


@torch.no_grad()
def pair_accuracy(rm: RewardModel, pairs: Sequence[PreferencePair], batch_size: int = 256) -> float:
    """Fraction of pairs (label != 0.5) whose reward margin has the label's sign."""
    hits, n = 0, 0
    for i in range(0, len(pairs), batch_size):
        part = [p for p in pairs[i:i + batch_size] if p.label != 0.5]
        if part:
            _, _, margin = pair_loss(rm, part)
            label = torch.tensor([p.label for p in part])
            hits += int(((margin.cpu() > 0) == (label > 0.5)).sum())
            n += len(part)
    return hits / n if n else float("nan")


def fit_reward_model(rm: RewardModel, pairs: Sequence[PreferencePair], config: RewardModelTrainConfig,
                     log=None) -> dict:
    """Train ``rm`` on ``pairs`` (a held-out ``eval_fraction`` is kept for the pair accuracy)."""
    if not pairs:
        raise DataError("no preference pairs to train on")
    rng = random.Random(config.seed)
    order = list(pairs)
    rng.shuffle(order)
    n_eval = int(len(order) * config.eval_fraction)
    held, train_pairs = order[:n_eval], order[n_eval:]
    if not train_pairs:
        raise DataError(f"{len(pairs)} pairs leave none to train on with eval_fraction={config.eval_fraction}")
    opt = torch.optim.AdamW(trainable(rm, config.head_only), lr=config.learning_rate,
                            weight_decay=config.weight_decay)
    history = []
    step = 0
    for epoch in range(config.epochs):
        rng.shuffle(train_pairs)
        for i in range(0, len(train_pairs), config.batch_size):
            step += 1
            m = refit_step(rm, opt, train_pairs[i:i + config.batch_size])
            history.append({"step": step, "epoch": epoch, **m})
            if log is not None:
                log(history[-1])
    rm.eval()
    return {"steps": step, "pairs": len(train_pairs), "held_out": len(held),
            "train_pair_accuracy": pair_accuracy(rm, train_pairs),
            "eval_pair_accuracy": pair_accuracy(rm, held) if held else None, "history": history}
