"""Draft tokens by prompt lookup (n-gram speculation, no draft model).

For a sequence whose last ``n`` tokens (``n`` from ``max_n`` down to ``min_n``) occurred earlier in
its prompt + output, the ``k`` tokens that followed that earlier occurrence are proposed as the next
ones; the model then checks them all in one forward pass (``LLMEngine``). The most recent earlier
occurrence is used: when a model copies a passage, the latest match is the one it is copying along.

Each sequence keeps an index from every n-gram to the position just after its latest occurrence,
extended by the tokens appended since the last lookup, so a lookup costs O(new tokens), not O(length).
Token lists only grow (rejected drafts are never appended), so the index never needs rolling back.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class NgramIndex:
    """Per sequence: for each ``n``, n-gram -> the position right after its latest occurrence."""

    tables: dict[int, dict[tuple[int, ...], int]] = field(default_factory=dict)
    indexed: int = 0  # occurrences ending before this position are in the tables


class NgramProposer:
    """Proposes up to ``num_tokens`` draft tokens from the longest matching suffix n-gram."""

    def __init__(self, num_tokens: int, min_n: int, max_n: int) -> None:
        self.num_tokens = num_tokens
        self.min_n = min_n
        self.max_n = max_n

    def _extend(self, index: NgramIndex, tokens: list[int]) -> None:
        """Record every n-gram occurrence that some token follows (the final suffix is the query)."""
        end = len(tokens)
        tables = index.tables
        for n in range(self.min_n, self.max_n + 1):
            table = tables.setdefault(n, {})
            # Position ``i`` follows the n-gram ``tokens[i - n:i]``; ``i`` stops at end - 1 so every
            # match has at least one token to propose.
            for i in range(max(n, index.indexed), end):
                table[tuple(tokens[i - n : i])] = i
        index.indexed = max(index.indexed, end)

    def propose(self, index: NgramIndex, tokens: list[int], limit: int) -> list[int]:
        """Up to ``min(limit, num_tokens)`` tokens likely to follow ``tokens``; [] when none match."""
        limit = min(limit, self.num_tokens)
        if limit < 1:
            return []
        end = len(tokens)
        if index.indexed < end:
            self._extend(index, tokens)
        for n in range(min(self.max_n, end - 1), self.min_n - 1, -1):
            start = index.tables.get(n, {}).get(tuple(tokens[end - n :]))
            if start is not None:
                return tokens[start : start + limit]
        return []
