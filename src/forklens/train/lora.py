"""LoRA adapters (PEFT) for any objective: settings, wrapping a model, and saving the result.

A run with ``lora.enabled`` trains only the adapters; at the end the adapters are saved on their own
(``OUT/adapter``, loadable with ``PeftModel.from_pretrained`` or by any forklens command, which merges
them into the base named in ``adapter_config.json``) and merged into the model saved to ``OUT/model``,
so every later command sees a plain Hugging Face checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

from forklens.config import field
from forklens.errors import ConfigError


@dataclass
class LoraSettings:
    enabled: bool = field(False, help="Train LoRA adapters (needs peft) instead of all weights.")
    r: int = field(32, ge=1, help="LoRA rank.")
    alpha: int = field(64, gt=0, help="LoRA alpha.")
    dropout: float = field(0.0, ge=0, lt=1, help="LoRA dropout.")
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
                                      help="Modules that get adapters (comma-separated in --set; GPT-2: c_attn, c_proj).")


def apply_lora(model, lora: LoraSettings):
    """``model`` wrapped with trainable LoRA adapters on ``lora.target_modules`` (the rest frozen)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError("LoRA needs the peft package (pip install 'forklens[peft]'); "
                          "or train all weights with --set lora.enabled=false") from None
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [m for m in lora.target_modules if m not in names]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                         if type(m).__name__ in ("Linear", "Conv1D") and n})
        raise ConfigError(f"lora.target_modules: the model has no module named {', '.join(missing)} "
                          f"(its linear layers: {', '.join(linear)})")
    cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                     target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def check_lora_run(lora: LoraSettings | None, *, resume: bool = False, fsdp: bool = False) -> None:
    if lora is None or not lora.enabled:
        return
    if resume:
        raise ConfigError("--resume is supported with full fine-tuning only (--set lora.enabled=false)")
    if fsdp:
        raise ConfigError("LoRA with train.fsdp is not supported; use DDP (train.fsdp=false) or full fine-tuning")
