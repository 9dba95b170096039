"""Per-sequence grammar state and the logits mask it produces.

One ``Guide`` per sequence wraps an ``llguidance.LLMatcher``: before each sampling step it writes
the allowed-token bitmask (one bit per vocabulary entry, 32 per int32 word) into a row of a batch
bitmask; after the step it consumes the sampled token. The ``GuideFactory`` holds the engine's
``LLTokenizer`` (built once, ~0.2 s, on the first guided request).
"""

from __future__ import annotations

from collections.abc import Sequence

import llguidance
import numpy as np
import torch

from local_engine.structured.grammar import GrammarError
from local_engine.tokenizer import Tokenizer

_COMPILED_CACHE = 64


class Guide:
    """The grammar state of one sequence."""

    def __init__(self, matcher: llguidance.LLMatcher, words: int) -> None:
        self._matcher = matcher
        self.words = words

    def fill(self, row: torch.Tensor) -> None:
        """Write the allowed-token bitmask into ``row`` (contiguous CPU int32, ``words`` long)."""
        self._matcher.unsafe_compute_mask_ptr(row.data_ptr(), self.words * 4)

    def accept(self, token_id: int) -> bool:
        """Advance past the sampled token; False if the grammar rejects it."""
        return self._matcher.consume_token(token_id)

    @property
    def finished(self) -> bool:
        """The grammar is complete and allows nothing but end of sequence."""
        return self._matcher.is_stopped()

    @property
    def error(self) -> str:
        return self._matcher.get_error()


class GuideFactory:
    """Makes ``Guide``s for one model (its tokenizer, logits width and end-of-sequence ids)."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, eos_token_ids: Sequence[int]) -> None:
        self._tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._eos = sorted(eos_token_ids)
        self._ll: llguidance.LLTokenizer | None = None
        self._compiled: dict[str, llguidance.LLMatcher] = {}

    def _ll_tokenizer(self) -> llguidance.LLTokenizer:
        if self._ll is None:
            self._ll = llguidance.LLTokenizer(
                self._tokenizer.backend.to_str(), n_vocab=self.vocab_size, eos_token=self._eos
            )
        return self._ll

    def new(self, grammar: str) -> Guide:
        # Compiling a JSON schema grammar takes ~5 ms on the engine's step thread; a copy of a
        # compiled, untouched matcher takes ~20 us, and requests often repeat a schema.
        pristine = self._compiled.pop(grammar, None)
        if pristine is None:
            pristine = llguidance.LLMatcher(self._ll_tokenizer(), grammar, log_level=0)
            if pristine.is_error():
                raise GrammarError(f"grammar: {pristine.get_error()}")
        self._compiled[grammar] = pristine  # most recently used last
        if len(self._compiled) > _COMPILED_CACHE:
            del self._compiled[next(iter(self._compiled))]
        return Guide(pristine.deep_copy(), (self.vocab_size + 31) // 32)


def apply_bitmask(logits: torch.Tensor, rows: list[int], bitmask: torch.Tensor) -> None:
    """Set ``logits[rows[i], t]`` to -inf wherever bit ``t`` of ``bitmask[i]`` is clear."""
    vocab = logits.shape[1]
    # The inverted words' bits, one byte per token (numpy's unpackbits; torch has no bit unpacking):
    # 1 where the token is banned. Words are little-endian: token t is byte t // 8, bit t % 8.
    banned = np.unpackbits(np.invert(bitmask.numpy()).view(np.uint8), axis=1, bitorder="little")
    banned = banned[:, :vocab].view(np.bool_)
    if logits.device.type == "cpu":
        # numpy's putmask stores without a branch per element; torch's masked_fill_ and where were
        # 2-5x slower on these half-allowed, half-banned rows.
        array = logits.numpy()
        for j, row in enumerate(rows):
            np.putmask(array[row], banned[j], -np.inf)
        return
    index = torch.tensor(rows, device=logits.device)
    mask = torch.from_numpy(banned).to(logits.device)
    logits[index] = logits[index].masked_fill(mask, float("-inf"))
