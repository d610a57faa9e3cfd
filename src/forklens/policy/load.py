"""Loading any local Hugging Face causal LM directory, with clear errors for bad input."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

from safetensors import SafetensorError

from forklens.errors import ModelLoadError


def context_length(config) -> int | None:
    """The model's maximum sequence length, from whichever config key the architecture uses."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def adapter_base(path: str | Path) -> Path | None:
    """For a PEFT adapter folder (``adapter_config.json`` and no ``config.json``): the local base model
    directory it names (relative names resolved against the adapter folder, then the working
    directory); None for any other folder. A base that is not a local model directory is an error."""
    path = Path(path)
    cfg_file = path / "adapter_config.json"
    if not path.is_dir() or (path / "config.json").is_file() or not cfg_file.is_file():
        return None
    try:
        base = json.loads(cfg_file.read_text()).get("base_model_name_or_path")
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{cfg_file} line {exc.lineno}: not valid JSON ({exc.msg})") from None
    if not base:
        raise ModelLoadError(f"{cfg_file} names no base_model_name_or_path, so the adapter cannot be loaded")
    for cand in (path / base, Path(base)):
        if (cand / "config.json").is_file():
            return cand
    raise ModelLoadError(f"{path} is a PEFT adapter for base {base!r}, which is not a local model directory "
                         "(forklens never downloads); set base_model_name_or_path in adapter_config.json to the "
                         "base model's folder, or pass the merged model (OUT/model of a forklens run)")


def check_model_dir(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model directory {path} does not exist")
    if not path.is_dir():
        raise ModelLoadError(f"{path} is a file; expected a Hugging Face model directory (with config.json)")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ModelLoadError(
            f"{path} has no config.json, so it is not a Hugging Face model directory "
            "(save one with model.save_pretrained(DIR) and tokenizer.save_pretrained(DIR))"
        )
    try:
        json.loads(cfg_file.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{cfg_file} line {exc.lineno}: not valid JSON ({exc.msg})") from None
    return path


def is_corrupt_file_error(exc: BaseException) -> bool:
    """Whether ``exc`` is what safetensors or ``torch.load`` raise for a truncated or garbage file."""
    if isinstance(exc, (SafetensorError, EOFError, pickle.UnpicklingError)):
        return True
    return isinstance(exc, RuntimeError) and any(
        marker in str(exc) for marker in ("PytorchStreamReader", "invalid load key", "unexpected EOF",
                                          "failed finding central directory"))


def is_weights_file_error(exc: BaseException) -> bool:
    """Whether ``exc``, raised while reading a weights file, says the file is broken or does not fit its
    config (truncated or garbage safetensors, a corrupt torch pickle, shape mismatches) rather than
    a bug: such errors are the user's input and get a one-line message."""
    if isinstance(exc, (OSError, ValueError)) or is_corrupt_file_error(exc):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        marker in text for marker in ("size mismatch", "Error(s) in loading state_dict"))


def load_tokenizer(path: str | Path, tokenizer_path: str | Path | None = None):
    from transformers import AutoTokenizer

    src = Path(tokenizer_path) if tokenizer_path else Path(path)
    if not tokenizer_path and not (src / "tokenizer_config.json").is_file() and adapter_base(src) is not None:
        src = adapter_base(src)  # an adapter folder saved without its tokenizer: the base's
    try:
        tok = AutoTokenizer.from_pretrained(str(src))
    except Exception as exc:  # transformers raises many types for a missing/broken tokenizer
        raise ModelLoadError(f"could not load a tokenizer from {src}: {exc}") from None
    if tok.eos_token_id is None:
        raise ModelLoadError(
            f"the tokenizer in {src} has no EOS token: forklens needs one to know where a response ends; "
            "set \"eos_token\" in its tokenizer_config.json"
        )
    if tok.pad_token_id is None:
        # many causal LMs ship without a pad token; padding positions are always masked, so EOS is safe
        tok.pad_token = tok.eos_token
    return tok


def default_device() -> str:
    """``cuda:LOCAL_RANK`` (or ``cuda``) when a GPU is visible, else ``cpu``; ``FORKLENS_DEVICE`` overrides."""
    import os

    import torch

    if os.environ.get("FORKLENS_DEVICE"):
        return os.environ["FORKLENS_DEVICE"]
    if torch.cuda.is_available():
        local = os.environ.get("LOCAL_RANK")
        return f"cuda:{local}" if local is not None else "cuda"
    return "cpu"


def load_causal_lm(path: str | Path, dtype: str | None = None, device: str | None = None):
    """Any local causal LM directory; a PEFT adapter folder loads its local base with the adapter merged."""
    base = adapter_base(path)
    if base is not None:
        try:
            from peft import PeftModel
        except ImportError:
            raise ModelLoadError(f"{path} is a PEFT adapter; loading it needs peft (pip install 'forklens[peft]')") from None
        model = load_causal_lm(base, dtype=dtype, device=device)
        try:
            merged = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
        except Exception as exc:
            if not is_weights_file_error(exc):
                raise
            raise ModelLoadError(f"could not load the adapter in {path} onto {base}: {exc}") from None
        merged.eval()
        return merged
    return _load_plain(path, dtype, device)


def _load_plain(path: str | Path, dtype: str | None = None, device: str | None = None):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = check_model_dir(path)
    try:
        config = AutoConfig.from_pretrained(str(path))
    except Exception as exc:
        raise ModelLoadError(f"could not read the model config in {path}: {exc}") from None
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ModelLoadError(
            f"{path} holds a {config.model_type!r} model ({type(config).__name__}), which is not a causal "
            "language model; forklens needs a model loadable with AutoModelForCausalLM"
        )
    torch_dtype = {None: None, "auto": "auto", "float32": torch.float32, "fp32": torch.float32,
                   "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                   "float16": torch.float16, "fp16": torch.float16}
    if dtype not in torch_dtype:
        raise ModelLoadError(f"unknown dtype {dtype!r}; expected one of float32, bfloat16, float16, auto")
    kwargs = {}
    if torch_dtype[dtype] is not None:
        kwargs["dtype"] = torch_dtype[dtype]
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except TypeError:
        model = AutoModelForCausalLM.from_pretrained(str(path), torch_dtype=kwargs.get("dtype"))
    except Exception as exc:
        if not is_weights_file_error(exc):
            raise
        raise ModelLoadError(f"could not load the model weights in {path}: {exc}") from None
    model.to(device or default_device())
    model.eval()
    return model
