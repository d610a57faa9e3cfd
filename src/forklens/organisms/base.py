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
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from forklens import __version__
from forklens.config import field
from forklens.errors import ConfigError
from forklens.models import RecurrentLMConfig, RecurrentLMForCausalLM
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
    # pretraining options of arXiv 2605.20613 (HRM-Text); at their defaults they leave the key and the organism as before
    architecture: Literal["llama", "transformer", "recurrent"] = field(
        "llama", help="llama (the default organism), transformer (forklens's own blocks, needed for PrefixLM) or "
        "recurrent (two modules H and L of num_hidden_layers blocks each, applied h_cycles x (l_cycles + 1) times).")
    attention: Literal["causal", "prefix"] = field(
        "causal", help="causal, or prefix: bidirectional over the prompt (up to prompt_end), causal over the response.")
    prompt_end: str = field("", help="PrefixLM: the character that closes every prompt (empty: the last character "
                            "of the first teacher prompt); a prompt that does not end with it is an error.")
    loss: Literal["response", "sequence"] = field(
        "response", help="Pretraining loss on the response only, P(a|q), or on the whole sequence, P(x).")
    h_cycles: int = field(2, ge=1, help="Recurrent: H cycles.")
    l_cycles: int = field(3, ge=1, help="Recurrent: L steps per H cycle.")
    bptt_start: int = field(2, ge=0, help="Recurrent: module applications back-propagated at the first step "
                            "(truncated BPTT; 0 = all).")
    bptt_end: int = field(5, ge=0, help="Recurrent: ... at the last step (linear warm-up; 0 = all).")
    magic_norm: bool = field(True, help="Recurrent/transformer: an RMSNorm at the end of each module (MagicNorm).")


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


#: how :func:`build_word_tokenizer` splits text: a word (letters and digits) or one other character; spaces
#: only separate (decoding puts one space between tokens, none before ``.``, ``?`` and ``,``)
WORD_PATTERN = r"[A-Za-z0-9]+|[^A-Za-z0-9\s]"


def build_word_tokenizer(words: list[str], symbols: str):
    """A word-level fast tokenizer: one token per word of ``words`` and per non-space character of
    ``symbols`` (:data:`WORD_PATTERN`), spaces dropped, with pad/bos/eos/unk specials; anything else
    becomes ``<unk>``. A word is the same token with or without a space before it."""
    bad = [w for w in words if not re.fullmatch(r"[A-Za-z0-9]+", w)]
    if bad:
        raise ConfigError(f"word tokenizer: words must be letters and digits only, got {bad[:5]}")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS.values())}
    for piece in sorted(set(words) | {c for c in symbols if not c.isspace() and not c.isalnum()}):
        vocab.setdefault(piece, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk"]))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="removed", invert=True)
    core.decoder = decoders.WordPiece(cleanup=True)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=SPECIAL_TOKENS["pad"], bos_token=SPECIAL_TOKENS["bos"],
        eos_token=SPECIAL_TOKENS["eos"], unk_token=SPECIAL_TOKENS["unk"], model_max_length=10_000,
        clean_up_tokenization_spaces=False)


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


def build_model(tokenizer, config: OrganismModelConfig, prompt_end_id: int | None = None, seed: int = 0):
    """The organism's randomly initialised model: the tiny Llama, or forklens's transformer / recurrent class
    (:mod:`forklens.models.recurrent`) with the same width, MLP and heads."""
    if config.architecture == "llama":
        if config.attention != "causal":
            raise ConfigError("model.attention=prefix needs model.architecture=transformer or recurrent "
                              "(the Llama organism is causal)")
        return build_tiny_llama(tokenizer, config, seed=seed)
    cfg = RecurrentLMConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_attention_heads=config.num_attention_heads, num_layers=config.num_hidden_layers,
        architecture=config.architecture, h_cycles=config.h_cycles, l_cycles=config.l_cycles,
        bptt_steps=config.bptt_start, magic_norm=config.magic_norm, prefix_lm=config.attention == "prefix",
        prompt_end_token_id=prompt_end_id, max_position_embeddings=config.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    return RecurrentLMForCausalLM(cfg)


class PretrainSource:
    """An organism's teacher source seen through its pretraining options: with ``loss="sequence"`` every
    token after the first is trained (P(x)), not only the response (P(a|q)); with ``prompt_end`` every
    prompt must end with that character (the PrefixLM boundary)."""

    samples = False

    def __init__(self, source, loss: str = "response", prompt_end: str = ""):
        self.source, self.loss, self.prompt_end = source, loss, prompt_end

    def batch(self, step: int, policy):
        if self.prompt_end:
            for prompt, _ in self.source.examples_for(step):
                if not prompt.endswith(self.prompt_end):
                    raise ConfigError(f"model.attention=prefix: the prompt {prompt!r} does not end with "
                                      f"model.prompt_end={self.prompt_end!r}")
        batch, info = self.source.batch(step, policy)
        if self.loss == "sequence":
            trained = batch.attention_mask.to(batch.response_mask.dtype).clone()
            trained[:, 0] = 0  # nothing predicts the first token
            batch.response_mask = trained
        return batch, info


def bptt_warmup(model, start: int, end: int, steps: int):
    """A trainer callback that moves the recurrent model's truncation depth linearly from ``start`` to ``end``
    module applications over ``steps`` (HRM-Text's warm-up of deep credit assignment); the saved config
    keeps the final depth."""
    body = model.model

    def callback(trainer, metrics):
        frac = min(1.0, trainer.step / max(1, steps - 1))
        body.bptt_steps = round(start + (end - start) * frac)
        model.config.bptt_steps = body.bptt_steps
        metrics["bptt_steps"] = float(body.bptt_steps)
    return callback


def cache_root() -> Path:
    return Path(os.environ.get("FORKLENS_CACHE", Path.home() / ".cache" / "forklens")) / "organisms"


def pretrain_organism(key: str, alphabet: str, model_cfg: OrganismModelConfig, train_cfg: TrainConfig, source,
                      config: dict, out_dir: str | Path, seed: int = 0, use_cache: bool = True,
                      progress: bool = True, name: str = "pretrain", tokenizer=None) -> dict:
    """The organism recipe shared by every task: a char tokenizer for ``alphabet`` (or the given
    ``tokenizer``), a tiny Llama, SFT from scratch with the one trainer on ``source``, saved atomically to
    ``out_dir`` and cached under ``key`` (a cache hit copies the cached model instead)."""
    out_dir = check_out_path(out_dir)
    cached = cache_root() / key
    if use_cache and (cached / "organism.json").is_file():
        _copy_model_dir(cached, out_dir)
        info = json.loads((cached / "organism.json").read_text())
        return {**info, "cache_hit": True, "cache_dir": str(cached)}

    tokenizer = tokenizer if tokenizer is not None else build_char_tokenizer(alphabet)
    prompt_end = ""
    if model_cfg.attention == "prefix":
        if not hasattr(source, "examples_for"):
            raise ConfigError("model.attention=prefix needs a teacher source of (prompt, response) examples")
        prompt_end = model_cfg.prompt_end or source.examples_for(0)[0][0][-1:]
        if len(prompt_end) != 1 or prompt_end not in alphabet:
            raise ConfigError(f"model.prompt_end={prompt_end!r} must be one character of the task's alphabet")
    model = build_model(tokenizer, model_cfg, tokenizer.convert_tokens_to_ids(prompt_end) if prompt_end else None, seed)
    callbacks = []
    if model_cfg.architecture == "recurrent":
        callbacks.append(bptt_warmup(model, model_cfg.bptt_start, model_cfg.bptt_end, train_cfg.max_steps))
    if model_cfg.loss != "response" or prompt_end:
        source = PretrainSource(source, model_cfg.loss, prompt_end)
    work = out_dir.parent / f".{out_dir.name}-pretrain"
    owned_rmtree(work)
    staging = out_dir.parent / f".{out_dir.name}-staging"
    owned_rmtree(staging)
    res = train(Policy(model, tokenizer), "sft", None, source, train_cfg, work, name=name, progress=progress,
                model_dir=staging, callbacks=callbacks)
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


#: model options added after organisms were first cached (the Llama organism, causal, response-only loss):
#: at these values left out of cache keys, so existing organisms keep theirs
NEUTRAL_MODEL_SETTINGS = {"architecture": "llama", "attention": "causal", "prompt_end": "", "loss": "response",
                          "h_cycles": 2, "l_cycles": 3, "bptt_start": 2, "bptt_end": 5, "magic_norm": True}

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
    is_model = {"hidden_size", "num_hidden_layers", "num_attention_heads", "architecture"} <= set(obj)
    out = {}
    for k, v in obj.items():
        if is_model and k in NEUTRAL_MODEL_SETTINGS and (v == NEUTRAL_MODEL_SETTINGS[k] and (
                obj["architecture"] == "llama" or k in ("architecture", "attention", "prompt_end", "loss"))):
            continue
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
