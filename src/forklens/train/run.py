"""The one place that wires a training run: load -> data source -> Trainer -> train -> save.

Commands, experiments, the demo and organism pretraining call :func:`train` (any objective and data
source) or :func:`run_grpo` (GRPO on a task, the recipe of ``forklens train grpo``); no other module
constructs a :class:`~forklens.train.loop.Trainer`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from forklens.config import field
from forklens.objectives.grpo import GRPOLossConfig
from forklens.policy import Policy
from forklens.rewards import RewardFn
from forklens.train.loop import DataSource, TrainConfig, Trainer
from forklens.train.lora import LoraSettings, apply_lora, check_lora_run
from forklens.train.sources import GRPOSource, SamplingConfig


@dataclass
class RunResult:
    """What a finished run reports: steps, FLOPs (sampling, scoring and training), training wall time,
    the last step's metrics, the saved model directory (None when not saved) and the model size."""

    steps: int
    flops: float
    wall_s: float
    last: dict[str, Any]
    model_dir: str | None
    n_params: int
    metrics_file: Path

    def info(self) -> dict[str, Any]:
        return {"steps": self.steps, "flops": self.flops, "wall_s": self.wall_s, "last": self.last,
                "model_dir": self.model_dir}


def train(policy, objective: str, objective_config: Any, source: DataSource, config: TrainConfig,
          out_dir: str | Path, *, name: str = "train", progress: bool = True, resume: bool = False,
          model_dir: str | Path | None = None, callbacks: list | None = None,
          lora: LoraSettings | None = None) -> RunResult:
    """Train ``policy`` with ``objective`` on batches from ``source`` into ``out_dir`` (checkpoints,
    ``metrics.jsonl``); save the final model and tokenizer to ``model_dir`` when given. ``callbacks``
    go to the :class:`Trainer` (e.g. :class:`~forklens.train.validation.ValidationCallback`).
    With ``lora.enabled`` only LoRA adapters train; they are saved to ``out_dir/adapter`` and merged
    into the model saved to ``model_dir`` (:mod:`forklens.train.lora`)."""
    use_lora = lora is not None and lora.enabled
    if use_lora:
        check_lora_run(lora, resume=resume, fsdp=config.fsdp)
        policy.model = apply_lora(policy.model, lora)
    trainer = Trainer(policy, objective, objective_config, source, config, out_dir, name=name, progress=progress,
                      callbacks=callbacks)
    last = trainer.train(resume=resume)
    if use_lora:
        if trainer.is_main:
            policy.model.save_pretrained(str(Path(out_dir) / "adapter"))
        policy.model = policy.model.merge_and_unload()
    saved = str(trainer.save_model(model_dir)) if model_dir is not None else None
    return RunResult(steps=trainer.step, flops=trainer.flops, wall_s=trainer.wall_s, last=last, model_dir=saved,
                     n_params=trainer.n_params, metrics_file=Path(out_dir) / "metrics.jsonl")


def stepwise_trainer(policy, objective: str, objective_config: Any, source: DataSource, config: TrainConfig,
                     out_dir: str | Path, *, name: str = "train", progress: bool = False) -> Trainer:
    """A Trainer driven a few steps at a time (``trainer.train(stop_after=k)``) from another run's callback:
    the second model of an alternating scheme (e.g. the rubric generator of :mod:`forklens.train.rubrics`).
    Each call appends to ``out_dir/metrics.jsonl``; ``trainer.flops`` counts its cost."""
    return Trainer(policy, objective, objective_config, source, config, out_dir, name=name, progress=progress)


def _rl_train_default() -> TrainConfig:
    return TrainConfig(max_steps=60, learning_rate=1e-4, micro_batch_size=128, save_every=20)


@dataclass
class RLConfig:
    train: TrainConfig = field(default_factory=_rl_train_default, help="Optimizer and loop settings.")
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=48),
                                     help="Rollout sampling.")
    loss: GRPOLossConfig = field(default_factory=GRPOLossConfig, help="GRPO loss settings.")
    lora: LoraSettings = field(default_factory=LoraSettings, help="LoRA adapters instead of all weights "
                               "(lora.enabled=true; merged into the saved model, adapters in OUT/adapter).")


def grpo_loss(rl: RLConfig) -> GRPOLossConfig:
    """The run's loss settings with the Dr. GRPO normaliser taken from the sampling cap (unless set)."""
    if rl.loss.max_new_tokens is not None:
        return rl.loss
    return replace(rl.loss, max_new_tokens=rl.sampling.max_new_tokens)


def run_grpo(base_dir: str | Path, task, rl: RLConfig, out_dir: str | Path, seed: int, resume: bool = False,
             progress: bool = True, reward_fns: list[RewardFn] | None = None, name: str = "GRPO",
             problems: list | None = None, callbacks: list | None = None, model_dir: str | Path | None = None,
             **source_kwargs) -> dict:
    """GRPO from the model in ``base_dir`` on ``task``'s training split, or on ``problems`` when given
    (e.g. the training split less a validation slice), with its own rollout (single-turn samples or
    multi-turn episodes); the final model is saved to ``model_dir`` (default ``out_dir / 'model'``).
    ``callbacks`` go to the Trainer.
    ``reward_fns`` default to the task's verifier; ``source_kwargs`` go to :class:`GRPOSource`
    (reward schedule, replay, expert traces)."""
    out_dir = Path(out_dir)
    policy = Policy.load(base_dir)
    if rl.sampling.backend != "torch":
        policy.use_backend(rl.sampling.backend, gpu_memory_utilization=rl.sampling.vllm_gpu_memory_utilization)
    ref = Policy.load(base_dir) if rl.loss.beta > 0 else None
    problems = task.problems("train") if problems is None else problems
    source = GRPOSource(task, problems, rl.sampling, reward_fns=reward_fns, seed=seed, ref_policy=ref, **source_kwargs)
    res = train(policy, "grpo", grpo_loss(rl), source, replace(rl.train, seed=seed), out_dir, name=name,
                progress=progress, resume=resume, model_dir=out_dir / "model" if model_dir is None else model_dir,
                callbacks=callbacks, lora=getattr(rl, "lora", None))  # RLConfig-shaped configs may have none
    return res.info()
