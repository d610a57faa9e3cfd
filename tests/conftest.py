import os
import warnings

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", message=".*past_key_values.*")
torch.set_num_threads(2)

ALPHABET = "0123456789+=;A"


def make_tiny(arch: str = "llama", seed: int = 0, layers: int = 2, hidden: int = 32, alphabet: str = ALPHABET,
              max_pos: int = 96):
    """A random tiny causal LM of the given architecture with a char tokenizer (in memory)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from forklens.organisms.base import build_char_tokenizer

    tok = build_char_tokenizer(alphabet)
    torch.manual_seed(seed)
    common = dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id)
    if arch == "llama":
        cfg = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_pos, **common)
        model = LlamaForCausalLM(cfg)
    elif arch == "qwen2":
        cfg = Qwen2Config(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_pos,
                          tie_word_embeddings=True, **common)
        model = Qwen2ForCausalLM(cfg)
    elif arch in ("qwen3", "mistral"):
        from transformers import AutoConfig, AutoModelForCausalLM

        cfg = AutoConfig.for_model(arch, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4,
                                   max_position_embeddings=max_pos, **common)
        model = AutoModelForCausalLM.from_config(cfg)
    elif arch in ("recurrent", "recurrent-prefix", "transformer-prefix"):
        from forklens.models import RecurrentLMConfig, RecurrentLMForCausalLM

        cfg = RecurrentLMConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_attention_heads=4,
                                num_layers=max(1, layers // 2), architecture=arch.split("-")[0], h_cycles=2,
                                l_cycles=2, prefix_lm=arch.endswith("-prefix"),
                                prompt_end_token_id=tok.convert_tokens_to_ids("=") if "=" in alphabet else None,
                                max_position_embeddings=max_pos, **common)
        model = RecurrentLMForCausalLM(cfg)
    elif arch == "mamba":
        from transformers import MambaConfig, MambaForCausalLM

        cfg = MambaConfig(hidden_size=hidden, state_size=8, num_hidden_layers=layers, use_mambapy=True, **common)
        model = MambaForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = GPT2Config(n_embd=hidden, n_layer=layers, n_head=4, n_positions=max_pos, **common)
        model = GPT2LMHeadModel(cfg)
    else:
        raise ValueError(arch)
    model.eval()
    return model, tok


@pytest.fixture
def tiny_policy():
    from forklens.policy import Policy

    model, tok = make_tiny("llama")
    return Policy(model, tok)


@pytest.fixture
def tiny_dir(tmp_path):
    """A saved tiny Llama + tokenizer directory."""
    model, tok = make_tiny("llama")
    d = tmp_path / "tiny"
    model.save_pretrained(str(d))
    tok.save_pretrained(str(d))
    return d
