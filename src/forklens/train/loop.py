"""The one training loop. SFT, GRPO and later objectives are (objective, data source) pairs.

Per optimizer step:

1. the data source returns the step's batch (it may sample from the policy);
2. for each of ``num_iterations`` passes and ``mini_batches`` parts, one optimizer update: the part is
   split into micro-batches and accumulated with global normalisation (:mod:`forklens.train.step`,
   which also holds the forward pass and mixed-precision autocast);
3. gradient clipping, optimizer and scheduler step, logging, and an atomic checkpoint every
   ``save_every`` steps.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal, Protocol

import torch

from forklens.config import field
from forklens.errors import ConfigError
from forklens.dist import group as _dist
from forklens.dist import world_size
from forklens.objectives import get_objective
from forklens.policy.score import TokenLogProbs
from forklens.policy.flops import attention_pairs, attention_shape, forward_flops
from forklens.rollouts import Rollouts
from forklens.train import fsdp
from forklens.train.checkpoint import (clear_checkpoints, load_training_state, load_weights, read_latest_intact,
                                       remove_stale_tmp, save_checkpoint)
from forklens.train.logging import StepLogger
from forklens.train.step import (accumulate_step, autocast_context, forward, mean_metrics, mini_batch_parts,
                                 null_context, resolve_precision)


@dataclass
class TrainConfig:
    max_steps: int = field(100, ge=1, help="Optimizer steps to run.")
    learning_rate: float = field(1e-4, gt=0, help="Peak learning rate (AdamW).")
    weight_decay: float = field(0.0, ge=0, help="AdamW weight decay.")
    adam_beta1: float = field(0.9, ge=0, lt=1, help="AdamW beta1.")
    adam_beta2: float = field(0.999, ge=0, lt=1, help="AdamW beta2.")
    warmup_steps: int = field(0, ge=0, help="Linear warm-up steps.")
    lr_schedule: Literal["constant", "cosine", "linear"] = field("constant", help="Decay after warm-up.")
    micro_batch_size: int = field(64, ge=1, help="Sequences per forward/backward pass; results do not depend on it.")
    max_grad_norm: float = field(1.0, ge=0, help="Gradient clipping norm (0 = off).")
    save_every: int = field(0, ge=0, help="Checkpoint every N steps (0 = only at the end).")
    keep_checkpoints: int = field(2, ge=1, help="How many checkpoints to keep.")
    log_every: int = field(1, ge=1, help="Print a log line every N steps (the JSONL log gets every step).")
    seed: int = field(0, help="Seed of the data order, sampling and initialisation.")
    tensorboard: bool = field(False, help="Also log to TensorBoard (needs the tensorboard extra); same as "
                              "report_to: [tensorboard].")
    report_to: list[str] = field(default_factory=list, help="Trackers to log every step to, as in TRL: any of "
                                 "tensorboard, wandb, trackio (each must be installed; a clear error otherwise). "
                                 "metrics.jsonl is always written.")
    fsdp: bool = field(False, help="Under a multi-process launcher, shard parameters, gradients and optimizer "
                       "state over the ranks (PyTorch FSDP2, one unit per decoder layer) instead of replicating "
                       "them (DDP). Also on when accelerate is configured for FSDP.")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = field(
        "auto", help="Autocast every forward pass to bf16 or fp16 with fp32 master weights and optimizer state (fp16 "
        "adds a gradient scaler); auto = ACCELERATE_MIXED_PRECISION when set, else no. forklens applies it itself, "
        "identically on one process or many.")
    gradient_checkpointing: bool = field(False, help="Recompute activations in the backward pass (Hugging Face "
                                         "gradient checkpointing, non-reentrant): less memory, ~30% more compute.")
    logits_chunk_mb: int = field(8192, ge=1, help="LM-head memory budget of the training forward in MiB: while "
                                 "~4 float32 copies of the response tokens' logits fit, they are computed at once; "
                                 "beyond it the head runs in checkpointed chunks (bounded memory for 16-32k-token "
                                 "responses; the backward recomputes each chunk's head once).")
    num_iterations: int = field(1, ge=1, help="Passes over each rollout batch (GRPO's mu, TRL's num_iterations). "
                                "Above 1 the behaviour log-probs are recorded before the first update, so the "
                                "importance ratio moves away from 1 and epsilon/epsilon_high clip.")
    mini_batches: int = field(1, ge=1, help="Optimizer steps per pass: the batch is split into this many parts "
                              "(PPO mini-batches), each normalised and stepped on its own. The LR schedule advances "
                              "once per batch.")
    simulate_bug: Literal["none", "offload-accum", "mean-of-means"] = field(
        "none", help="Reproduce a known training-stack bug, for experiments only: offload-accum (the optimizer "
        "sees g_0 + g_{K-1} of K micro-batches) or mean-of-means (per-micro-batch token means averaged).")


class DataSource(Protocol):
    """What a step trains on. ``batch(step, policy)`` must be deterministic in (seed, step) and the
    source's state; a source whose batches depend on history (a replay buffer, say) also defines
    ``state_dict()`` / ``load_state_dict(state)``, which checkpoints save and resume restores."""

    def batch(self, step: int, policy) -> tuple[Rollouts, dict[str, float]]:
        """The optimizer batch of ``step`` and its info metrics. Info may include ``sampled_tokens``
        and ``scored_tokens`` for FLOP accounting."""


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    def fn(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "constant":
            return 1.0
        span = max(1, cfg.max_steps - cfg.warmup_steps)
        frac = min(1.0, (step - cfg.warmup_steps) / span)
        return 0.5 * (1 + math.cos(math.pi * frac)) if cfg.lr_schedule == "cosine" else 1.0 - frac
    return fn


def _has_accelerator() -> bool:
    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


class Trainer:
    """Runs ``config.max_steps`` optimizer steps of ``objective`` on batches from ``source``."""

    def __init__(self, policy, objective: str, objective_config: Any, source: DataSource, config: TrainConfig,
                 out_dir: str | Path, accelerator=None, name: str = "train", progress: bool = True,
                 callbacks: list[Callable[["Trainer", dict], bool | None]] | None = None):
        self.policy = policy
        # called after every optimizer step with (trainer, the step's metrics, which they may extend
        # before it is logged); any returning True stops training cleanly after that step
        self.callbacks = list(callbacks or [])
        self.stopped_early = False
        self.objective = get_objective(objective)
        self.objective_name = objective
        self.objective_config = objective_config
        self.source = source
        self.config = config
        self.out_dir = Path(out_dir)
        self.name = name
        self.accelerator = accelerator
        self.progress = progress
        self.n_params = policy.num_params()
        self.attention_shape = attention_shape(policy.model)
        self.precision = resolve_precision(config.mixed_precision)
        if config.gradient_checkpointing:
            if not getattr(policy.model, "supports_gradient_checkpointing", False):
                raise ConfigError(f"train.gradient_checkpointing: {type(policy.model).__name__} does not support it")
            policy.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model = TokenLogProbs(policy.model, config.logits_chunk_mb * 2**20)  # what is differentiated (and wrapped by DDP / FSDP)
        if accelerator is None and world_size() > 1:
            from accelerate import Accelerator

            # launched with torchrun / accelerate launch: one rank of several. On a machine without
            # accelerators accelerate only goes multi-process when told it runs on CPU. Mixed precision is
            # forklens's own (autocast_context), so accelerate must not add its autocast on top.
            accelerator = Accelerator(cpu=not _has_accelerator(), mixed_precision="no")
            self.accelerator = accelerator
        if accelerator is not None and accelerator.num_processes != world_size():
            raise RuntimeError(
                f"accelerate sees {accelerator.num_processes} process(es) but {world_size()} were launched; "
                "gradients would not be synchronised. Launch with `accelerate launch` or set ACCELERATE_USE_CPU=1 "
                "for CPU runs under torchrun."
            )
        self.fsdp = world_size() > 1 and (config.fsdp or str(getattr(accelerator, "distributed_type", "")).endswith("FSDP"))
        if self.fsdp:
            fsdp.shard(self.model)  # our own FSDP2 wrapping, also when accelerate was configured for FSDP
        elif accelerator is not None and accelerator.num_processes > 1:
            self.model = accelerator.prepare_model(self.model)  # DDP: gradients averaged over ranks
        params = [p for p in self.model.parameters() if p.requires_grad]  # after wrapping (FSDP shards)
        self.optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay,
                                           betas=(config.adam_beta1, config.adam_beta2))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(config))
        device = next(self.model.parameters()).device
        self.autocast = autocast_context(self.precision, device)
        self.scaler = torch.amp.GradScaler(device.type) if self.precision == "fp16" else None
        self.step = 0
        self.flops = 0.0
        self.wall_s = 0.0
        self.metric_lines = 0

    @property
    def is_main(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process

    def resume(self) -> bool:
        """Restore the newest intact checkpoint in ``out_dir/checkpoints`` (weights, optimizer, scheduler,
        every RNG, the source's state) and cut ``metrics.jsonl`` back to it. A newer unreadable
        checkpoint is skipped with a warning naming what was wrong; returns False when there is none."""
        root = self.out_dir / "checkpoints"
        if self.is_main:
            remove_stale_tmp(root)
        loaded = read_latest_intact(root)
        if loaded is None:
            return False
        for why in loaded.skipped:
            self._warn(f"checkpoint {why}; falling back to {loaded.path.name}")
        if self.fsdp:
            fsdp.load_full_model_state(self.model, loaded.weights)
            load_optimizer = lambda st: fsdp.load_full_optimizer_state(self.model, self.optimizer, st)  # noqa: E731
        else:
            load_weights(self.policy.model, loaded.path, loaded.weights)
            load_optimizer = None
        self.policy.weights_version = getattr(self.policy, "weights_version", 0) + 1
        state = load_training_state(loaded, self.optimizer, self.scheduler, self.source, load_optimizer)
        self.step, self.flops, self.wall_s = state["step"], state["flops"], state["wall_s"]
        self.metric_lines = state["metric_lines"]
        self._cut_metrics()
        return True

    def _warn(self, message: str) -> None:
        if self.is_main:
            print(f"warning: {self.name}: {message}", file=sys.stderr, flush=True)  # one unwrapped line

    def _cut_metrics(self) -> None:
        """Keep the first ``metric_lines`` lines of metrics.jsonl (those logged up to the restored step)."""
        log = self.out_dir / "metrics.jsonl"
        if log.exists() and self.is_main:
            lines = log.read_text().splitlines(keepends=True)
            if len(lines) > self.metric_lines:
                log.write_text("".join(lines[: self.metric_lines]))

    def _start_fresh(self, resume_asked: bool) -> None:
        """Step 0: seed once (the only seeding of the run; a resume restores the saved RNG states
        instead), and drop what an earlier run left in ``out_dir`` (its checkpoints and metric lines), so
        logs and checkpoints never mix. ``--resume`` without any checkpoint starts here too, and says so."""
        torch.manual_seed(self.config.seed)
        log = self.out_dir / "metrics.jsonl"
        if resume_asked and self.is_main:
            old = len(log.read_text().splitlines()) if log.exists() else 0
            dropped = f"; the {old} line(s) of metrics.jsonl from the earlier run are dropped" if old else ""
            self._warn(f"--resume: no checkpoint in {self.out_dir / 'checkpoints'}, starting from step 0{dropped}")
        if self.is_main:
            clear_checkpoints(self.out_dir / "checkpoints")
        self.metric_lines = 0
        self._cut_metrics()

    def save(self) -> Path | None:
        model_state = optimizer_state = None
        if self.fsdp:  # gathering is a collective: every rank takes part, rank 0 writes
            model_state = fsdp.full_model_state(self.model)
            optimizer_state = fsdp.full_optimizer_state(self.model, self.optimizer)
        if not self.is_main:
            return None
        state = {"step": self.step, "flops": self.flops, "wall_s": self.wall_s, "metric_lines": self.metric_lines,
                 "objective": self.objective_name, "train_config": asdict(self.config),
                 "objective_config": asdict(self.objective_config) if self.objective_config is not None and
                 hasattr(self.objective_config, "__dataclass_fields__") else None}
        return save_checkpoint(self.out_dir / "checkpoints", self.step, self.policy.model, self.policy.tokenizer,
                               self.optimizer, self.scheduler, state, keep=self.config.keep_checkpoints,
                               source_state=self.source.state_dict() if hasattr(self.source, "state_dict") else None,
                               model_state=model_state, optimizer_state=optimizer_state)

    def save_model(self, directory: str | Path) -> Path:
        """Save the trained model and tokenizer in Hugging Face format (main process only)."""
        directory = Path(directory)
        full = fsdp.full_model_state(self.model) if self.fsdp else None  # collective
        if self.is_main:
            self.policy.model.save_pretrained(str(directory), state_dict=full)
            self.policy.tokenizer.save_pretrained(str(directory))
        if _dist():
            _dist().barrier()
        return directory

    def _update(self, micro: list[Rollouts], no_sync) -> tuple[dict[str, float], float]:
        """One optimizer step on ``micro`` (the micro-batches of one batch or mini-batch)."""
        cfg = self.config
        self.optimizer.zero_grad(set_to_none=True)
        metrics = accumulate_step(self.model, self.objective, self.objective_config, micro,
                                  simulate_bug=cfg.simulate_bug, no_sync=no_sync, autocast=self.autocast,
                                  scaler=self.scaler)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        # clipping at infinity only measures the norm; under FSDP the norm is a DTensor
        gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf)
        gnorm = gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skipped when the scaled gradients overflowed
            self.scaler.update()
            metrics["loss_scale"] = float(self.scaler.get_scale())
        else:
            self.optimizer.step()
        return metrics, float(gnorm)

    @torch.no_grad()
    def _with_old_logprobs(self, batch: Rollouts, device) -> Rollouts:
        """``batch`` with the current (behaviour) policy's log-probs at every response token, taken in eval
        mode before the first of several updates on it."""
        self.model.eval()
        old = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
        for s in range(0, len(batch), self.config.micro_batch_size):
            rows = list(range(s, min(s + self.config.micro_batch_size, len(batch))))
            mb = batch.select(rows).to(device)
            with self.autocast():
                lp = forward(self.model, mb).logprobs.float().cpu()
            old[rows, : lp.shape[1]] = lp
        self.model.train()
        return replace(batch, old_logprobs=old)

    def train(self, resume: bool = False, stop_after: int | None = None) -> dict[str, Any]:
        """Train to ``max_steps`` (or ``stop_after`` steps from now, for tests); returns the last metrics."""
        cfg = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        resumed = resume and self.resume()
        if not resumed and self.step == 0:  # a Trainer that already ran steps here continues in-process
            self._start_fresh(resume_asked=resume)
        logger = StepLogger(self.out_dir / "metrics.jsonl", total=cfg.max_steps, start=self.step, name=self.name,
                            enabled=self.is_main, progress=self.progress, tensorboard=cfg.tensorboard,
                            report_to=cfg.report_to, config=asdict(cfg),
                            log_every=cfg.log_every)
        no_sync = getattr(self.model, "no_sync", None)
        last: dict[str, Any] = {}
        done_here = 0
        with logger:
            while self.step < cfg.max_steps:
                if stop_after is not None and done_here >= stop_after:
                    break
                t0 = time.perf_counter()
                self.model.train()
                gather = self.fsdp and getattr(self.source, "samples", True)  # sampling needs whole weights
                with fsdp.inference_params(self.model) if gather else null_context():
                    batch, info = self.source.batch(self.step, self.policy)
                device = next(self.model.parameters()).device
                updates = cfg.num_iterations * cfg.mini_batches
                behaviour_tokens = 0.0
                if updates > 1 and self.objective.uses_old_logprobs and batch.old_logprobs is None:
                    batch = self._with_old_logprobs(batch, device)
                    behaviour_tokens = float(batch.attention_mask.sum())
                per_update = []
                for _ in range(cfg.num_iterations):
                    for part in mini_batch_parts(batch, cfg.mini_batches):
                        per_update.append(self._update([mb.to(device) for mb in part.split(cfg.micro_batch_size)],
                                                       no_sync))
                metrics, gnorm = mean_metrics(per_update)
                if updates > 1:
                    metrics["optimizer_steps"] = float(updates)
                    metrics["behaviour_tokens"] = behaviour_tokens
                self.scheduler.step()
                self.policy.weights_version = getattr(self.policy, "weights_version", 0) + 1
                tokens = torch.tensor([float(batch.attention_mask.sum()), info.pop("sampled_tokens", 0.0),
                                       info.pop("scored_tokens", 0.0), attention_pairs(batch.attention_mask)],
                                      dtype=torch.float64)
                if _dist():
                    _dist().all_reduce(tokens)  # FLOPs of every rank
                trained_tokens = float(tokens[0]) * cfg.num_iterations
                inference_tokens = float(tokens[1] + tokens[2]) + metrics.get("prepass_tokens", 0.0)  # already global
                if behaviour_tokens:
                    b = torch.tensor([behaviour_tokens], dtype=torch.float64)
                    if _dist():
                        _dist().all_reduce(b)
                    inference_tokens += float(b[0])
                # attention (forklens.policy.flops): the inference tokens (sampling, reference and behaviour
                # scoring) are charged the batch's causal pairs per token; training is 3 passes per iteration
                passes = inference_tokens / float(tokens[0]) + 3 * cfg.num_iterations if tokens[0] else 0.0
                attention = forward_flops(0, 0.0, float(tokens[3]) * passes, self.attention_shape)
                metrics["attention_flops"] = attention
                self.flops += 2 * self.n_params * inference_tokens + 6 * self.n_params * trained_tokens + attention
                self.wall_s += time.perf_counter() - t0
                self.step += 1
                done_here += 1
                last = {"step": self.step, **metrics, **info, "grad_norm": float(gnorm),
                        "lr": self.scheduler.get_last_lr()[0], "trained_tokens": trained_tokens,
                        "flops": self.flops, "wall_s": self.wall_s}
                stop = any([bool(callback(self, last)) for callback in self.callbacks])  # every one runs
                logger.log(last)
                self.metric_lines += 1
                if stop:
                    self.stopped_early = True
                    break
                if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.max_steps:
                    self.save()
        if self.step >= cfg.max_steps or self.stopped_early:
            self.save()
        return last


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
