"""Model organisms: a char-level Hugging Face tokenizer, a tiny Llama, and its pretraining.

Everything is saved with ``save_pretrained`` so that loading goes through the same
``AutoTokenizer`` / ``AutoModelForCausalLM`` path as any checkpoint from the Hub. A base organism is
pretrained from scratch with the SFT objective in the one trainer, on traces from the task's noisy
teacher; see docs/organisms.md for why it is built this way.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from forklens.config import field
from forklens.tasks.arith import ArithConfig
from forklens.train.loop import TrainConfig

SPECIAL_TOKENS = {"pad": "<pad>", "bos": "<bos>", "eos": "<eos>", "unk": "<unk>"}


@dataclass
class OrganismModelConfig:
    hidden_size: int = field(128, ge=1, help="Model width.")
    intermediate_size: int = field(384, ge=1, help="MLP width.")
    num_hidden_layers: int = field(3, ge=1, help="Transformer layers.")
    num_attention_heads: int = field(4, ge=1, help="Attention heads.")
    max_position_embeddings: int = field(128, ge=1, help="Context length in tokens.")


def _pretrain_default() -> TrainConfig:
    return TrainConfig(max_steps=600, learning_rate=3e-3, warmup_steps=50, lr_schedule="cosine",
                       micro_batch_size=256, weight_decay=0.01)


@dataclass
class OrganismConfig:
    task: str = field("arith", help="Built-in task the organism is pretrained on.")
    arith: ArithConfig = field(default_factory=ArithConfig, help="Arithmetic task settings.")
    model: OrganismModelConfig = field(default_factory=OrganismModelConfig, help="Model size.")
    pretrain: TrainConfig = field(default_factory=_pretrain_default, help="Pretraining (SFT) settings.")
    batch_size: int = field(64, ge=1, help="Teacher traces per pretraining step.")
    seed: int = field(0, help="Seed of the initialisation and the teacher traces.")


def build_char_tokenizer(alphabet: str):
    """A character-level fast tokenizer (one token per character) with pad/bos/eos/unk specials."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

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
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

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


def organism_key(cfg: OrganismConfig) -> str:
    from forklens import __version__

    blob = json.dumps({"config": asdict(cfg), "version": __version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_base_organism(cfg: OrganismConfig, out_dir: str | Path, use_cache: bool = True,
                        progress: bool = True) -> dict:
    """Pretrain (or fetch from the cache) the base arith organism; save it to ``out_dir`` in HF format.

    Returns an info dict: cache key, whether the cache was used, pretraining steps, FLOPs, wall time.
    """
    from forklens.tasks import get_task
    from forklens.train.sources import SFTSource

    task = get_task(cfg.task, cfg.arith)
    source = SFTSource(lambda rng, n: [task.teacher_example(rng) for _ in range(n)], cfg.batch_size, cfg.seed)
    return pretrain_organism(organism_key(cfg), task.alphabet, cfg.model, replace(cfg.pretrain, seed=cfg.seed),
                             source, asdict(cfg), out_dir, seed=cfg.seed, use_cache=use_cache,
                             progress=progress, name="pretrain base")


def pretrain_organism(key: str, alphabet: str, model_cfg: OrganismModelConfig, train_cfg: TrainConfig, source,
                      config: dict, out_dir: str | Path, seed: int = 0, use_cache: bool = True,
                      progress: bool = True, name: str = "pretrain") -> dict:
    """The organism recipe shared by every task: a char tokenizer for ``alphabet``, a tiny Llama, SFT
    from scratch with the one trainer on ``source``, saved atomically to ``out_dir`` and cached under
    ``key`` (a cache hit copies the cached model instead)."""
    from forklens.policy import Policy
    from forklens.train.loop import Trainer

    out_dir = Path(out_dir)
    cached = cache_root() / key
    if use_cache and (cached / "organism.json").is_file():
        _copy_model_dir(cached, out_dir)
        info = json.loads((cached / "organism.json").read_text())
        return {**info, "cache_hit": True, "cache_dir": str(cached)}

    tokenizer = build_char_tokenizer(alphabet)
    model = build_tiny_llama(tokenizer, model_cfg, seed=seed)
    work = out_dir.parent / f".{out_dir.name}-pretrain"
    if work.exists():
        shutil.rmtree(work)
    trainer = Trainer(Policy(model, tokenizer), "sft", None, source, train_cfg, work, name=name, progress=progress)
    last = trainer.train()
    staging = out_dir.parent / f".{out_dir.name}-staging"
    if staging.exists():
        shutil.rmtree(staging)
    model.save_pretrained(str(staging))
    tokenizer.save_pretrained(str(staging))
    info = {"key": key, "steps": trainer.step, "flops": trainer.flops, "wall_s": trainer.wall_s,
            "final_loss": last.get("loss"), "config": config}
    (staging / "organism.json").write_text(json.dumps(info, indent=2))
    shutil.copy(work / "metrics.jsonl", staging / "pretrain_metrics.jsonl")
    shutil.rmtree(work, ignore_errors=True)
    if use_cache:
        _copy_model_dir(staging, cached)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(staging, out_dir)
    return {**info, "cache_hit": False, "cache_dir": str(cached) if use_cache else None}


def _copy_model_dir(src: Path, dst: Path) -> None:
    """Copy atomically: into a sibling temp dir, then rename over ``dst``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)
