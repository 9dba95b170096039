"""Incremental detokenization that never emits a broken UTF-8 character.

Decoding tokens one at a time is wrong for byte-level BPE (a character can span tokens) and for
sentencepiece (a token's leading space depends on what precedes it). Like vLLM, we decode a short
window ``ids[prefix_offset:]`` and emit the part beyond ``ids[prefix_offset:read_offset]``, holding
output back while it ends in U+FFFD (an incomplete multi-byte sequence).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Protocol

REPLACEMENT_CHAR = "\ufffd"
# How many already-emitted tokens stay in the decoding window as left context.
_CONTEXT_TOKENS = 5


class _Decoder(Protocol):
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...


class _Vocab(_Decoder, Protocol):
    def id_to_token(self, token_id: int) -> str | None: ...


_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@lru_cache(maxsize=1)
def _byte_level_chars() -> dict[str, int]:
    """GPT-2's byte-level alphabet inverted: the printable character each byte is spelled with."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars: dict[str, int] = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def token_bytes(tokenizer: _Vocab, token_id: int) -> bytes:
    """The raw bytes one token stands for. Decoding a lone token that holds part of a multi-byte
    character gives U+FFFD; its bytes come from the vocabulary entry instead: a byte-level BPE
    piece (GPT-2 alphabet) or a SentencePiece byte-fallback piece ``<0xNN>``."""
    text = tokenizer.decode([token_id], skip_special_tokens=False)
    if REPLACEMENT_CHAR not in text:
        return text.encode("utf-8")
    piece = tokenizer.id_to_token(token_id) or ""
    fallback = _BYTE_FALLBACK.fullmatch(piece)
    if fallback:
        return bytes([int(fallback.group(1), 16)])
    alphabet = _byte_level_chars()
    if piece and all(c in alphabet for c in piece):
        return bytes(alphabet[c] for c in piece)
    return text.encode("utf-8")


class IncrementalDetokenizer:
    """``push(token_id) -> new text``; ``flush()`` returns whatever is still held back at the end."""

    def __init__(
        self, tokenizer: _Decoder, skip_special_tokens: bool = True, prompt_token_ids: Sequence[int] = ()
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        # The prompt's last few tokens give the first generated token its left context.
        self.ids: list[int] = list(prompt_token_ids[-_CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.text = ""

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def push(self, token_id: int) -> str:
        """Add one generated token; returns the newly completed text (possibly empty)."""
        self.ids.append(int(token_id))
        prefix_text = self._decode(self.ids[self.prefix_offset : self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset :])
        if len(new_text) <= len(prefix_text) or new_text.endswith(REPLACEMENT_CHAR):
            return ""
        delta = new_text[len(prefix_text) :]
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.ids)
        # Bound memory: drop ids that can no longer be part of a window.
        if self.prefix_offset > 64:
            drop = self.prefix_offset
            del self.ids[:drop]
            self.prefix_offset -= drop
            self.read_offset -= drop
        self.text += delta
        return delta

    def flush(self) -> str:
        """At the end of generation: emit held-back text, even if it ends in U+FFFD."""
        if self.read_offset >= len(self.ids):
            return ""
        prefix_text = self._decode(self.ids[self.prefix_offset : self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset :])
        delta = new_text[len(prefix_text) :] if len(new_text) > len(prefix_text) else ""
        self.prefix_offset = self.read_offset = len(self.ids)
        self.text += delta
        return delta
