"""`forklens train reward-model`: a Bradley-Terry reward model on preference pairs (TRL's chosen/rejected)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from forklens.commands._common import (add_config_args, add_overwrite_arg, console, handle_config_flags, prepare_out,
                                       quiet_third_party, require, resolve_config)
from forklens.policy import Policy
from forklens.rewards.reward_model import RewardModel
from forklens.train.reward_model import RewardModelTrainConfig, fit_reward_model, read_preference_pairs


def register(tsub) -> None:
    p = tsub.add_parser("reward-model", help="Bradley-Terry reward model on preference pairs (chosen / rejected).",
                        description="Train a scalar reward head on a causal LM (its last hidden state at the last "
                        "response token; backbone=bag-of-tokens: token counts) on rows {\"prompt\"?, \"chosen\", "
                        "\"rejected\", \"label\"?} (TRL RewardTrainer's columns; label = P(chosen preferred), "
                        "default 1). Writes OUT/reward_model (load with forklens.rewards.reward_model.RewardModel.load) "
                        "and OUT/history.jsonl.")
    p.add_argument("--model", help="Hugging Face model directory the reward model is built on (required).")
    p.add_argument("--data", help="(required) JSONL/JSON/parquet file or datasets folder of preference pairs.")
    p.add_argument("--out", default="runs/reward-model", help="Output directory.")
    add_overwrite_arg(p)
    add_config_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    quiet_third_party()
    cfg = resolve_config(RewardModelTrainConfig, args)
    if handle_config_flags(RewardModelTrainConfig, cfg, args):
        return 0
    require(args, "--model", "--data")
    pairs = read_preference_pairs(args.data)
    out = prepare_out(args, "train-reward-model")
    policy = Policy.load(args.model)
    rm = RewardModel.from_causal_lm(policy) if cfg.backbone == "causal-lm" else RewardModel.bag_of_tokens(policy)
    torch.manual_seed(cfg.seed)
    rm.head.reset_parameters()
    res = fit_reward_model(rm, pairs, cfg)
    rm.save(Path(out) / "reward_model")
    (Path(out) / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in res.pop("history")))
    (Path(out) / "summary.json").write_text(json.dumps(res, indent=2))
    ev = res["eval_pair_accuracy"]
    console.print(f"reward model: {res['steps']} steps on {res['pairs']} pairs; pair accuracy train "
                  f"{res['train_pair_accuracy']:.3f}, held out {'—' if ev is None else f'{ev:.3f}'} "
                  f"({res['held_out']} pairs); saved to {Path(out) / 'reward_model'}", highlight=False)
    return 0
