"""What every model organism shares: a char-level Hugging Face tokenizer, a tiny Llama, and its pretraining.

Everything is saved with ``save_pretrained`` so that loading goes through the same
``AutoTokenizer`` / ``AutoModelForCausalLM`` path as any checkpoint from the Hub. A base organism is
pretrained from scratch with the SFT objective in the one trainer, on traces from the task's noisy
teacher; see docs/organisms.md for why it is built this way. One module per organism family
(:mod:`forklens.organisms.arith`, :mod:`forklens.organisms.agent`) holds its config and recipe.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from forklens import __version__
from forklens.config import field
from forklens.policy import Policy
from forklens.runfolder import check_out_path, install_folder, owned_rmtree
from forklens.train.loop import TrainConfig
from forklens.train.step import resolve_precision
from forklens.train.run import train

SPECIAL_TOKENS = {"pad": "<pad>", "bos": "<bos>", "eos": "<eos>", "unk": "<unk>"}


@dataclass
class OrganismModelConfig:
    hidden_size: int = field(128, ge=1, help="Model width.")
    intermediate_size: int = field(384, ge=1, help="MLP width.")
    num_hidden_layers: int = field(3, ge=1, help="Transformer layers.")
    num_attention_heads: int = field(4, ge=1, help="Attention heads.")
    max_position_embeddings: int = field(128, ge=1, help="Context length in tokens.")


def build_char_tokenizer(alphabet: str):
    """A character-level fast tokenizer (one token per character) with pad/bos/eos/unk specials."""
    chars = sorted(set(alphabet))
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS.values())}
    for ch in chars:
        vocab[ch] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk"]))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=SPECIAL_TOKENS["pad"],
        bos_token=SPECIAL_TOKENS["bos"],
        eos_token=SPECIAL_TOKENS["eos"],
        unk_token=SPECIAL_TOKENS["unk"],
        model_max_length=10_000,
    )
    return tok


def build_tiny_llama(tokenizer, config: OrganismModelConfig, seed: int = 0):
    """A randomly initialised ``LlamaForCausalLM`` sized by ``config`` for ``tokenizer``."""
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_attention_heads,
        max_position_embeddings=config.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def cache_root() -> Path:
    return Path(os.environ.get("FORKLENS_CACHE", Path.home() / ".cache" / "forklens")) / "organisms"


def pretrain_organism(key: str, alphabet: str, model_cfg: OrganismModelConfig, train_cfg: TrainConfig, source,
                      config: dict, out_dir: str | Path, seed: int = 0, use_cache: bool = True,
                      progress: bool = True, name: str = "pretrain") -> dict:
    """The organism recipe shared by every task: a char tokenizer for ``alphabet``, a tiny Llama, SFT
    from scratch with the one trainer on ``source``, saved atomically to ``out_dir`` and cached under
    ``key`` (a cache hit copies the cached model instead)."""
    out_dir = check_out_path(out_dir)
    cached = cache_root() / key
    if use_cache and (cached / "organism.json").is_file():
        _copy_model_dir(cached, out_dir)
        info = json.loads((cached / "organism.json").read_text())
        return {**info, "cache_hit": True, "cache_dir": str(cached)}

    tokenizer = build_char_tokenizer(alphabet)
    model = build_tiny_llama(tokenizer, model_cfg, seed=seed)
    work = out_dir.parent / f".{out_dir.name}-pretrain"
    owned_rmtree(work)
    staging = out_dir.parent / f".{out_dir.name}-staging"
    owned_rmtree(staging)
    res = train(Policy(model, tokenizer), "sft", None, source, train_cfg, work, name=name, progress=progress,
                model_dir=staging)
    info = {"key": key, "steps": res.steps, "flops": res.flops, "wall_s": res.wall_s,
            "final_loss": res.last.get("loss"), "config": config}
    (staging / "organism.json").write_text(json.dumps(info, indent=2))
    shutil.copy(work / "metrics.jsonl", staging / "pretrain_metrics.jsonl")
    owned_rmtree(work)
    if use_cache:
        _copy_model_dir(staging, cached)
    install_folder(staging, out_dir, "organism")
    return {**info, "cache_hit": False, "cache_dir": str(cached) if use_cache else None}


def _copy_model_dir(src: Path, dst: Path) -> None:
    """Copy into a sibling temp dir, then install it as ``dst`` (replacing only what forklens wrote)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.tmp-{os.getpid()}"
    owned_rmtree(tmp)
    shutil.copytree(src, tmp)
    install_folder(tmp, dst, "organism")


#: trainer settings added after organisms were first cached that, at these values, change nothing in
#: pretraining: left out of cache keys so cached organisms (and the artifacts built on them) keep theirs
NEUTRAL_TRAIN_SETTINGS = {"num_iterations": 1, "mini_batches": 1, "gradient_checkpointing": False, "report_to": [],
                          "mixed_precision": "auto", "logits_chunk_mb": 8192}


def _without_neutral(obj):
    if isinstance(obj, list):
        return [_without_neutral(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    is_train = {"max_steps", "learning_rate", "micro_batch_size"} <= set(obj)
    out = {}
    for k, v in obj.items():
        if is_train and k in NEUTRAL_TRAIN_SETTINGS and v == NEUTRAL_TRAIN_SETTINGS[k]:
            if k != "mixed_precision" or resolve_precision("auto") == "no":  # auto under a bf16 env is not neutral
                continue
            v = resolve_precision("auto")
        out[k] = _without_neutral(v)
    return out


def cache_key(blob: dict) -> str:
    """The cache key of an organism: a hash of its config (and format) with the forklens version. Trainer
    settings at values that change nothing (:data:`NEUTRAL_TRAIN_SETTINGS`) are left out."""
    text = json.dumps({**_without_neutral(blob), "version": __version__}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
