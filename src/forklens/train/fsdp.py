"""Fully sharded data parallel training (PyTorch FSDP2, ``fully_shard``) for the one trainer.

With ``train.fsdp=true`` under a launcher (``torchrun`` / ``accelerate launch``) every decoder layer
and the trainer's forward module become FSDP units: parameters, gradients and optimizer state are
sharded over the ranks and gathered layer by layer for each forward and backward. Nothing else in
the loop changes: objectives still return sums, the trainer still divides once by the global count
(FSDP averages gradients over ranks like DDP, and the trainer undoes that average the same way).

Three places need whole tensors, and get them here:

* sampling (:func:`inference_params`): every unit is gathered once and kept gathered for the whole
  sampling call, so the sampler runs collective-free and ranks may decode different numbers of steps;
* checkpoints and the final model (:func:`full_model_state`, :func:`full_optimizer_state`): gathered
  on every rank (a collective), written by rank 0 in the same files as a DDP run;
* resume (:func:`load_full_model_state`, :func:`load_full_optimizer_state`).

An FSDP checkpoint stores the optimizer state by parameter name; resume it with FSDP again.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

PREFIX = "model."  # TokenLogProbs holds the causal LM as .model


def decoder_layers(model) -> list[torch.nn.Module]:
    """The repeated blocks of a Hugging Face causal LM (its ``_no_split_modules`` classes)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:  # fall back to the conventional container
        for path in ("model.layers", "transformer.h", "gpt_neox.layers"):
            obj = model
            try:
                for part in path.split("."):
                    obj = getattr(obj, part)
            except AttributeError:
                continue
            layers = list(obj)
            break
    return layers


def shard(module: torch.nn.Module) -> torch.nn.Module:
    """Apply FSDP2 to each decoder layer of ``module.model`` and to ``module`` (the root), then run
    one tiny forward so the root initialises before anything calls a layer directly. Afterwards
    ``module.parameters()`` are the sharded parameters (build the optimizer from them)."""
    from torch.distributed.fsdp import fully_shard

    layers = decoder_layers(module.model)
    if not layers:
        raise RuntimeError(f"FSDP: no decoder layers found in {type(module.model).__name__}")
    for layer in layers:
        fully_shard(layer)
    fully_shard(module)
    device = next(module.parameters()).device
    one = torch.ones(1, 2, dtype=torch.long, device=device)
    with torch.no_grad():
        module(one, one, one)
    for unit in _units(module):  # the root stays gathered after a forward; the optimizer needs the shards
        unit.reshard()
    return module


def is_sharded(module: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def _units(module):
    from torch.distributed.fsdp import FSDPModule

    return [m for m in module.modules() if isinstance(m, FSDPModule)]


@contextmanager
def inference_params(module):
    """Gather every FSDP unit of ``module`` for the duration (no collectives inside), then reshard."""
    if not is_sharded(module):
        yield
        return
    units = _units(module)
    for u in units:
        u.unshard()
        u.set_reshard_after_forward(False)
    try:
        yield
    finally:
        for u in units:
            u.reshard()
            u.set_reshard_after_forward(True)


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_model_state(module) -> dict[str, torch.Tensor]:
    """The causal LM's full state dict on CPU (a collective: call on every rank)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    sd = get_model_state_dict(module, options=_options(cpu_offload=True))
    return {k[len(PREFIX):] if k.startswith(PREFIX) else k: v for k, v in sd.items()}


def full_optimizer_state(module, optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(module, optimizer, options=_options(cpu_offload=True))


def load_full_model_state(module, state: dict[str, torch.Tensor]) -> None:
    """Load a full (checkpoint) state dict into the sharded module; tied weights may be absent."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    res = set_model_state_dict(module, {PREFIX + k: v for k, v in state.items()}, options=_options(strict=False))
    bad = [k for k in res.missing_keys if not (k.endswith("lm_head.weight") or "embed" in k)]
    if bad or res.unexpected_keys:
        raise RuntimeError(f"checkpoint does not match the model: missing {bad[:5]}, "
                           f"unexpected {list(res.unexpected_keys)[:5]}")


def load_full_optimizer_state(module, optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(module, optimizer, state, options=_options())
