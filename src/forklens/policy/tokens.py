"""Showing tokens as text without losing them: byte-level BPE fragments, byte fallback, special tokens.

``tokenizer.decode([id])`` turns every token that holds part of a multi-byte UTF-8 character into
U+FFFD, so in byte-level BPE vocabularies (GPT-2, Llama 3, Qwen, DeepSeek) most CJK or emoji tokens
look identical. :class:`TokenTexts` recovers each token's bytes instead:

* **byte-level BPE** (a ``ByteLevel`` decoder): the token string maps back to bytes through the
  byte-to-printable-character table byte-level BPE is built on;
* **byte fallback** (SentencePiece-style ``<0xE4>`` tokens): the byte is in the token's name;
* otherwise the token's own decoded text.

:meth:`TokenTexts.display` shows one token alone: its bytes as text where they are valid UTF-8 and as
``\\xNN`` escapes where they are a fragment, so two different fragments never look the same.
:meth:`TokenTexts.spans` splits a decoded response over its tokens: each token gets the characters
it completes (a character split over three tokens appears on the third), so ``"".join(spans)`` is the
response text; bytes that can never form a character (a sampled lone continuation byte, a response cut
mid-character) appear as ``\\xNN`` there too, never as U+FFFD.
"""

from __future__ import annotations

import codecs
import json
import re
from functools import lru_cache
from typing import Sequence

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def byte_level_table() -> dict[str, int]:
    """Printable character -> byte, the alphabet of byte-level BPE (each of the 256 bytes is shown as
    one printable character: printable Latin-1 bytes as themselves, the rest shifted above U+0100)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, shift = {}, 0
    for b in range(256):
        if b in keep:
            table[chr(b)] = b
        else:
            table[chr(256 + shift)] = b
            shift += 1
    return table


def _decoder_types(tokenizer) -> set[str]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return set()
    try:
        dec = json.loads(backend.to_str()).get("decoder") or {}
    except (ValueError, AttributeError):
        return set()
    found, stack = set(), [dec]
    while stack:
        d = stack.pop()
        if isinstance(d, dict):
            found.add(str(d.get("type")))
            stack.extend(d.get("decoders") or [])
    return found


def escape_fragment(data: bytes) -> str:
    """``data`` as text: valid UTF-8 decoded, every byte of an incomplete or invalid sequence as ``\\xNN``."""
    return data.decode("utf-8", errors="backslashreplace")


class TokenTexts:
    """Per-token text for one tokenizer (cached per id)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        types = _decoder_types(tokenizer)
        self.byte_level = "ByteLevel" in types
        self.metaspace = bool(types & {"Metaspace", "Replace"})
        self.special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self._bytes: dict[int, bytes | None] = {}
        self._display: dict[int, str] = {}

    def _piece(self, token_id: int) -> str | None:
        piece = self.tokenizer.convert_ids_to_tokens(int(token_id))
        return piece if isinstance(piece, str) else None

    def bytes(self, token_id: int) -> bytes | None:
        """The token's bytes, or None for a special token (shown by its name)."""
        token_id = int(token_id)
        if token_id in self._bytes:
            return self._bytes[token_id]
        out: bytes | None
        piece = self._piece(token_id)
        if token_id in self.special or piece is None:
            out = None
        elif (m := _BYTE_TOKEN.match(piece)) is not None:
            out = bytes([int(m.group(1), 16)])
        elif self.byte_level and all(ch in byte_level_table() for ch in piece):
            table = byte_level_table()
            out = bytes(table[ch] for ch in piece)
        elif self.metaspace:
            out = piece.replace("\u2581", " ").encode("utf-8")
        else:
            out = self.tokenizer.decode([token_id], skip_special_tokens=False,
                                        clean_up_tokenization_spaces=False).encode("utf-8")
        self._bytes[token_id] = out
        return out

    def display(self, token_id: int) -> str:
        """One token alone, readable and unambiguous (fragments of a character as ``\\xNN``)."""
        token_id = int(token_id)
        if token_id not in self._display:
            data = self.bytes(token_id)
            if data is None:
                piece = self._piece(token_id)
                self._display[token_id] = piece if piece is not None else self.tokenizer.decode([token_id])
            else:
                self._display[token_id] = escape_fragment(data)
        return self._display[token_id]

    def spans(self, token_ids: Sequence[int]) -> list[str]:
        """The characters of the decoded sequence that each token completes (special tokens by name)."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="backslashreplace")
        out: list[str] = []
        for i in token_ids:
            data = self.bytes(int(i))
            if data is None:
                flushed = decoder.decode(b"", final=True)
                decoder.reset()
                if flushed and out:
                    out[-1] += flushed
                out.append(self.display(int(i)))
            else:
                out.append(decoder.decode(data, final=False))
        tail = decoder.decode(b"", final=True)
        if tail and out:
            out[-1] += tail
        return out
