"""Token texts without U+FFFD: byte-level BPE fragments, byte fallback, char vocabularies, and the diff's
tokens.jsonl / report.html on a byte-level GPT-2 without a pad token."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from forklens.analysis.diff import run_diff
from forklens.organisms.base import build_char_tokenizer
from forklens.policy import Policy
from forklens.policy.tokens import TokenTexts, byte_level_table, escape_fragment

TEXT = "世界 🎉 火箭发射成功"
CORPUS = ["hello world " + TEXT + " the quick brown fox jumps", "naïve café 東京 ümlaut 😀 ok"] * 40


@pytest.fixture(scope="module")
def bpe():
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=320, special_tokens=["<eos>"],
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>")  # no pad token, like GPT-2


@pytest.fixture(scope="module")
def fallback():
    """A SentencePiece-style vocabulary: whole characters, with <0xNN> byte tokens for the rest."""
    vocab = {"<unk>": 0, "<eos>": 1, "\u2581": 2, "a": 3, "b": 4, "世": 5}
    vocab.update({f"<0x{b:02X}>": 6 + b for b in range(256)})
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    core.pre_tokenizer = pre_tokenizers.Metaspace()
    core.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", unk_token="<unk>")


def test_byte_level_table_is_a_bijection_over_bytes():
    table = byte_level_table()
    assert sorted(table.values()) == list(range(256)) and len(table) == 256
    assert table["Ġ"] == 0x20 and table["a"] == ord("a")


def test_issue_example_has_no_replacement_characters(bpe):
    texts = TokenTexts(bpe)
    ids = bpe.encode(TEXT)
    naive = [bpe.decode([i]) for i in ids]
    assert sum("\ufffd" in t for t in naive) >= 4  # the bug this module exists for
    shown = [texts.display(i) for i in ids]
    assert not any("\ufffd" in t for t in shown)
    assert len(set(shown)) == len(set(ids))  # different tokens never look the same
    assert "".join(texts.spans(ids)) == TEXT
    assert b"".join(texts.bytes(i) for i in ids) == TEXT.encode()


def test_fragment_display_escapes_only_the_fragment(bpe):
    texts = TokenTexts(bpe)
    emoji = "🎉".encode()
    assert escape_fragment(emoji[:2]) == "\\xf0\\x9f"
    assert escape_fragment("a".encode() + emoji) == "a🎉"
    ids = bpe.encode(TEXT)
    # a token that carries a fragment shows it as \xNN and the span puts the whole character on the last token
    spans = texts.spans(ids)
    for i, sp in zip(ids, spans):
        data = texts.bytes(i)
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            assert "\\x" in texts.display(i)
    assert any("🎉" in sp for sp in spans) and all(sp.count("🎉") <= 1 for sp in spans)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=24))
def test_spans_reassemble_any_text(bpe, s):
    texts = TokenTexts(bpe)
    ids = bpe.encode(s)
    spans = texts.spans(ids)
    assert len(spans) == len(ids)
    assert "".join(spans) == bpe.decode(ids)


def test_special_tokens_keep_their_names(bpe):
    texts = TokenTexts(bpe)
    ids = bpe.encode("ok") + [bpe.eos_token_id]
    assert texts.display(bpe.eos_token_id) == "<eos>"
    assert texts.spans(ids)[-1] == "<eos>" and "".join(texts.spans(ids)) == "ok<eos>"


def test_byte_fallback_tokens(fallback):
    texts = TokenTexts(fallback)
    ids = fallback.encode("ab世界")
    assert "".join(texts.spans(ids)).strip() == "ab世界"
    shown = [texts.display(i) for i in ids]
    assert not any("\ufffd" in t for t in shown)
    assert any(t.startswith("\\x") for t in shown)  # 界 is three <0xNN> tokens


def test_char_vocabulary_is_unchanged():
    tok = build_char_tokenizer("0123456789+=;A")
    texts = TokenTexts(tok)
    ids = tok.encode("12+3=", add_special_tokens=False)
    assert [texts.display(i) for i in ids] == list("12+3=")
    assert texts.spans(ids) == list("12+3=")


def test_diff_on_byte_level_gpt2_without_pad_token(bpe, tmp_path):
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(bpe), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                     eos_token_id=bpe.eos_token_id, bos_token_id=bpe.eos_token_id)
    dirs = []
    for name, scale in (("base", 1.0), ("rl", 1.3)):
        model = GPT2LMHeadModel(cfg)
        with torch.no_grad():
            model.lm_head.weight.mul_(scale * 20)
        model.save_pretrained(tmp_path / name)
        bpe.save_pretrained(tmp_path / name)
        dirs.append(tmp_path / name)
    base, rl = Policy.load(dirs[0]), Policy.load(dirs[1])
    out = tmp_path / "diff"
    run_diff(base, rl, [{"id": "u", "prompt": TEXT}], max_new_tokens=24, out_dir=out, responses="rl-greedy", progress=False)
    rows = [json.loads(line) for line in (out / "tokens.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows
    for r in rows:
        for text in (r["token_text"], r["rl_token_text"], *r["base_topk_texts"], *r["rl_topk_texts"]):
            assert "\ufffd" not in text
        assert isinstance(r["token_id"], int) and len(r["base_topk_ids"]) == len(r["base_topk_texts"])
    response = json.loads((out / "responses.jsonl").read_text(encoding="utf-8").splitlines()[0])
    ids = [r["token_id"] for r in rows]
    texts, expected, run = TokenTexts(bpe), "", b""
    for i in ids:  # bytes between special tokens, then the special token's name
        if i == bpe.eos_token_id:
            expected, run = expected + escape_fragment(run) + "<eos>", b""
        else:
            run += texts.bytes(i)
    assert "".join(r["span_text"] for r in rows) == expected + escape_fragment(run)
    html = (out / "report.html").read_text(encoding="utf-8")
    i = html.find("\ufffd"); assert i < 0, html[max(0, i - 300):i + 100]
    assert response["n_tokens"] == len(rows)
