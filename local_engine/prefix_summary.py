"""Prefix-cache summaries: what an engine replica publishes so that a router can send a request to
the replica that already holds its prompt's leading KV blocks, and how the router reads them.

Block hashes are the block manager's own: full block ``i`` of a token sequence is
``hash((hash of block i-1, tuple(its block_size tokens)))``, chained from ``ROOT_HASH``. Python's
hash of a tuple of ints does not depend on ``PYTHONHASHSEED`` (only str and bytes hashes are
salted), so every process running the same CPython computes the same chain; ``HASH_CHECK`` lets a
reader on another interpreter see that it would not, and ignore the summaries instead of routing on
noise.

The summary is a Bloom filter over every hash registered in the prefix cache: ``num_bits`` (a power
of two, 16 bits per KV block the engine has, so its size is fixed for a replica) and 4 bit
positions per hash by double hashing. About 0.24% false positives at a full cache; a false
positive can only make a router over-estimate one replica's cached prefix by a block or so, never
produce a wrong answer.

This module imports no torch: the gateway imports it (and ``local_engine.tokenizer``) to hash a
request's prompt with the engine's own tokenizer and chat template, which the engine publishes
once (``tokenizer_spec``) under a fingerprint the summary names.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import tokenizers

from local_engine.tokenizer import Tokenizer

# Must equal the block manager's chain root (tests/local_engine/test_prefix_summary.py checks it).
ROOT_HASH = 0x5EED
NUM_HASHES = 4
BITS_PER_BLOCK = 16
_MIN_BITS = 1024
_M64 = (1 << 64) - 1
_MIX = 0x9E3779B97F4A7C15  # 2^64 / golden ratio: spreads Python's int hash over all 64 bits


def chain_hashes(token_ids: Sequence[int], block_size: int) -> list[int]:
    """The prefix-cache hash of every full block of ``token_ids``, in order."""
    hashes: list[int] = []
    parent = ROOT_HASH
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = hash((parent, tuple(token_ids[start : start + block_size])))
        hashes.append(parent)
    return hashes


# What this interpreter's chain gives for a fixed block; readers compare it with the summary's.
HASH_CHECK = chain_hashes(list(range(16)), 16)[0]


def _bloom_bits(capacity: int) -> int:
    bits = _MIN_BITS
    while bits < capacity * BITS_PER_BLOCK:
        bits *= 2
    return bits


@dataclass(frozen=True, slots=True)
class BloomFilter:
    """A set of block hashes that answers "maybe" or "no"."""

    data: bytes
    num_bits: int

    @classmethod
    def build(cls, hashes: Iterable[int], capacity: int) -> BloomFilter:
        """A filter of ``hashes`` sized for ``capacity`` entries (numpy: the engine side)."""
        import numpy as np

        num_bits = _bloom_bits(capacity)
        bits = np.zeros(num_bits, dtype=bool)
        values = np.fromiter(hashes, dtype=np.int64)
        if values.size:
            x = values.view(np.uint64) * np.uint64(_MIX)  # wraps modulo 2^64, as _positions does
            h1 = x & np.uint64(0xFFFFFFFF)
            h2 = (x >> np.uint64(32)) | np.uint64(1)
            mask = np.uint64(num_bits - 1)
            for i in range(NUM_HASHES):
                bits[(h1 + np.uint64(i) * h2) & mask] = True
        return cls(np.packbits(bits, bitorder="little").tobytes(), num_bits)

    def __contains__(self, h: int) -> bool:
        x = ((h & _M64) * _MIX) & _M64
        h1 = x & 0xFFFFFFFF
        h2 = (x >> 32) | 1
        mask = self.num_bits - 1
        data = self.data
        for i in range(NUM_HASHES):
            p = (h1 + i * h2) & mask
            if not (data[p >> 3] >> (p & 7)) & 1:
                return False
        return True


@dataclass(frozen=True, slots=True)
class PrefixSummary:
    """One replica's prefix cache as published: the filter plus what a reader needs to use it."""

    block_size: int
    hash_check: int
    tokenizer: str  # fingerprint of the tokenizer spec (``tokenizer_fingerprint``)
    num_cached_blocks: int
    bloom: BloomFilter
    # Prefix-cache counters (tokens): looked up at admission, and found cached.
    queries: int = 0
    hits: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "block_size": self.block_size,
            "hash_check": self.hash_check,
            "tokenizer": self.tokenizer,
            "num_cached_blocks": self.num_cached_blocks,
            "bloom": {
                "num_bits": self.bloom.num_bits,
                "num_hashes": NUM_HASHES,
                "data": base64.b64encode(self.bloom.data).decode("ascii"),
            },
            "prefix_cache": {"queries": self.queries, "hits": self.hits},
        }

    @classmethod
    def from_json(cls, obj: Any) -> PrefixSummary:
        """Read a published summary; raises ``ValueError`` for anything malformed."""
        try:
            bloom = obj["bloom"]
            num_bits = int(bloom["num_bits"])
            data = base64.b64decode(bloom["data"], validate=True)
            power_of_two = num_bits > 0 and not num_bits & (num_bits - 1)
            if int(bloom["num_hashes"]) != NUM_HASHES or not power_of_two or len(data) * 8 != num_bits:
                raise ValueError("bloom filter: unsupported shape")
            counters = obj.get("prefix_cache") or {}
            return cls(
                block_size=int(obj["block_size"]),
                hash_check=int(obj["hash_check"]),
                tokenizer=str(obj["tokenizer"]),
                num_cached_blocks=int(obj["num_cached_blocks"]),
                bloom=BloomFilter(data, num_bits),
                queries=int(counters.get("queries", 0)),
                hits=int(counters.get("hits", 0)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"malformed prefix-cache summary: {exc}") from None


def summarize(
    cached_hashes: list[int], capacity: int, block_size: int, tokenizer: str, queries: int = 0, hits: int = 0
) -> PrefixSummary:
    """The summary of a prefix cache holding ``cached_hashes`` out of ``capacity`` blocks."""
    return PrefixSummary(
        block_size=block_size,
        hash_check=HASH_CHECK,
        tokenizer=tokenizer,
        num_cached_blocks=len(cached_hashes),
        bloom=BloomFilter.build(cached_hashes, capacity),
        queries=queries,
        hits=hits,
    )


# -- the tokenizer, as a reader needs it ----------------------------------------------------------


def tokenizer_spec(tok: Tokenizer) -> dict[str, Any]:
    """Everything that turns a request into the engine's prompt token ids (JSON-safe)."""
    return {
        "tokenizer_json": tok.backend.to_str(),
        "chat_template": tok.chat_template,
        "bos_token": tok.bos_token,
        "eos_token": tok.eos_token,
        "unk_token": tok.unk_token,
        "pad_token": tok.pad_token,
        "extra_special_tokens": tok.extra_special_tokens,
    }


def tokenizer_fingerprint(spec: dict[str, Any]) -> str:
    """A short digest naming ``spec``: replicas of one model share it, so a reader loads it once."""
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()[:32]


def tokenizer_from_spec(spec: dict[str, Any]) -> Tokenizer:
    """The ``Tokenizer`` a ``tokenizer_spec`` describes; raises ``ValueError`` when it is malformed."""
    try:
        backend = tokenizers.Tokenizer.from_str(spec["tokenizer_json"])
        return Tokenizer(
            backend=backend,
            chat_template=spec.get("chat_template"),
            bos_token=spec.get("bos_token"),
            eos_token=spec.get("eos_token"),
            unk_token=spec.get("unk_token"),
            pad_token=spec.get("pad_token"),
            extra_special_tokens=dict(spec.get("extra_special_tokens") or {}),
        )
    except Exception as exc:  # tokenizers raises its own exception type for a bad JSON
        raise ValueError(f"malformed tokenizer spec: {exc}") from None


class PromptEncoder:
    """``tokenizer.encode`` for rendered chat prompts, piece by piece, remembering each piece.

    A conversation's next turn re-renders every earlier message, and encoding is what costs (about
    2 ms for 600 tokens on one core); the rendered messages are separated by the template's
    special tokens, which the tokenizer matches before anything else, so the pieces that start at
    them encode on their own and a turn pays only for its new messages. Whether piecewise encoding
    equals the whole-text one depends on the tokenizer (a pre-tokenizer that treats only the text's
    start specially would differ), so the first ``CHECKS`` prompts are encoded both ways; one
    difference and this encoder encodes whole texts from then on.
    """

    CHECKS = 20
    MAX_PIECES = 16384

    def __init__(self, tok: Tokenizer) -> None:
        self.tok = tok
        specials = [t.content for t in tok.backend.get_added_tokens_decoder().values() if t.special]
        self._split = re.compile("(?=" + "|".join(map(re.escape, specials)) + ")") if specials else None
        self._pieces: dict[str, list[int]] = {}
        self.checks_left = self.CHECKS if self._split is not None else 0
        self.piecewise = self._split is not None

    def encode(self, text: str) -> list[int]:
        if not self.piecewise or self._split is None:
            return self.tok.encode(text)
        pieces = self._pieces
        ids: list[int] = []
        for piece in self._split.split(text):
            if not piece:
                continue
            cached = pieces.get(piece)
            if cached is None:
                if len(pieces) >= self.MAX_PIECES:
                    pieces.clear()  # a bound, not an LRU: old conversations' pieces simply go
                cached = pieces[piece] = self.tok.encode(piece)
            ids.extend(cached)
        if self.checks_left:
            self.checks_left -= 1
            if ids != self.tok.encode(text):
                self.piecewise = False
                pieces.clear()
                return self.tok.encode(text)
        return ids


def _message_text(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))


def prompt_ids(
    tok: Tokenizer, operation: str, body: dict[str, Any], encoder: PromptEncoder | None = None
) -> list[int] | None:
    """The prompt token ids the engine's server makes of an OpenAI ``body`` (as in
    ``local_engine.server.serving``), or None when it cannot tell (the engine would refuse it, or a
    multi-prompt completion). Only a router's guess: a difference costs cache hits, not answers.
    ``encoder`` (of ``tok``) encodes chat prompts piecewise."""
    try:
        if operation == "chat":
            messages = [
                {**{k: v for k, v in m.items() if v is not None}, "content": _message_text(m.get("content"))}
                for m in body["messages"]
            ]
            text = tok.apply_chat_template(
                messages,
                add_generation_prompt=body.get("add_generation_prompt", True),
                tools=body.get("tools"),
                **(body.get("chat_template_kwargs") or {}),
            )
            return encoder.encode(text) if encoder is not None else tok.encode(text)
        if operation == "completions":
            prompt = body["prompt"]
            if isinstance(prompt, str):
                return tok.encode(prompt)
            if prompt and all(isinstance(t, int) for t in prompt):
                return list(prompt)
    except Exception:  # any malformed body: the engine answers it with a 400 of its own
        return None
    return None
