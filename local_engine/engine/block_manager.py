"""The paged KV cache's bookkeeping: fixed-size blocks, per-sequence block tables, reference counts
and automatic prefix caching.

Prefix caching: every FULL block of a sequence is identified by a hash chain
``hash((parent_hash, tokens_of_block))``. A block is registered under its hash only once its K/V is
computed (so a chunked prefill never lets another sequence read unwritten K/V). Freed blocks with a
hash stay cached (LRU) and are handed out again on a hit (refcount + 1) until evicted to make room.
A sequence's partially filled last block is never registered, so it is never shared.
"""

from __future__ import annotations

from collections import OrderedDict

from local_engine.sequence import Sequence

_NO_HASH = -1
_ROOT_HASH = 0x5EED


class NoFreeBlocksError(RuntimeError):
    """Raised when an allocation is attempted without checking ``can_allocate``/``can_append`` first."""


class BlockManager:
    """Allocates KV-cache blocks to sequences and tracks prefix-cache hits."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks: must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.block_hash = [_NO_HASH] * num_blocks
        self.block_tokens: list[tuple[int, ...] | None] = [None] * num_blocks
        # Free blocks: never-registered ones (a stack) and cached ones (LRU, oldest first).
        self._free_plain: list[int] = list(range(num_blocks - 1, -1, -1))
        self._evictable: OrderedDict[int, None] = OrderedDict()
        self._hash_to_block: dict[int, int] = {}
        # Prefix-cache counters (tokens): looked up at admission, and found cached.
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0

    # -- queries -----------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        return len(self._free_plain) + len(self._evictable)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._hash_to_block)

    def cached_hashes(self) -> list[int]:
        """Every hash registered in the prefix cache. One C-level copy under the GIL, so the server
        may call it while the step thread mutates the cache (``local_engine.prefix_summary``)."""
        return list(self._hash_to_block)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _ensure_hashes(self, seq: Sequence, num_full: int) -> list[int]:
        hashes = seq.block_hashes
        bs = self.block_size
        tokens = seq.token_ids
        parent = hashes[-1] if hashes else _ROOT_HASH
        for i in range(len(hashes), num_full):
            parent = hash((parent, tuple(tokens[i * bs : (i + 1) * bs])))
            hashes.append(parent)
        return hashes

    def _lookup(self, seq: Sequence, i: int) -> int | None:
        """The cached block holding full block ``i`` of ``seq`` (hashes must be ensured)."""
        block = self._hash_to_block.get(seq.block_hashes[i])
        if block is None:
            return None
        bs = self.block_size
        if self.block_tokens[block] != tuple(seq.token_ids[i * bs : (i + 1) * bs]):
            return None  # a hash collision; treat as a miss
        return block

    def _cache_hits(self, seq: Sequence) -> list[int]:
        """Leading blocks of ``seq`` found in the cache. The block holding the last token is never a
        hit, so at least one token is computed (its logits are needed for sampling)."""
        if not self.enable_prefix_caching:
            return []
        num_candidates = (seq.num_tokens - 1) // self.block_size
        self._ensure_hashes(seq, num_candidates)
        hits: list[int] = []
        for i in range(num_candidates):
            block = self._lookup(seq, i)
            if block is None:
                break
            hits.append(block)
        return hits

    def can_allocate(self, seq: Sequence) -> bool:
        """Whether blocks for all of ``seq``'s current tokens can be found now."""
        needed = self.blocks_needed(seq.num_tokens)
        hits = self._cache_hits(seq)
        # Hits on blocks still in use cost nothing; hits on free cached blocks use up a free block.
        in_use = sum(1 for b in hits if self.ref_counts[b] > 0)
        return needed - in_use <= self.num_free_blocks

    def _blocks_short(self, seq: Sequence, num_lookahead: int) -> int:
        return max(0, self.blocks_needed(seq.num_tokens + num_lookahead) - len(seq.block_table))

    def can_append(self, seq: Sequence, num_lookahead: int = 0) -> bool:
        """Whether ``seq`` can get slots for its next uncomputed token and ``num_lookahead`` draft
        tokens after it (speculative decoding)."""
        return self._blocks_short(seq, num_lookahead) <= self.num_free_blocks

    # -- mutations ---------------------------------------------------------------------------

    def _take_free_block(self) -> int:
        if self._free_plain:
            block = self._free_plain.pop()
        elif self._evictable:
            block, _ = self._evictable.popitem(last=False)
            h = self.block_hash[block]
            if self._hash_to_block.get(h) == block:
                del self._hash_to_block[h]
            self.block_hash[block] = _NO_HASH
            self.block_tokens[block] = None
        else:
            raise NoFreeBlocksError("no free KV-cache blocks")
        self.ref_counts[block] = 1
        return block

    def allocate(self, seq: Sequence) -> None:
        """Give a waiting ``seq`` blocks for all its tokens, reusing prefix-cached blocks."""
        if seq.block_table:
            raise RuntimeError(f"sequence {seq.seq_id} already has blocks")
        hits = self._cache_hits(seq)
        needed = self.blocks_needed(seq.num_tokens)
        if needed - sum(1 for b in hits if self.ref_counts[b] > 0) > self.num_free_blocks:
            raise NoFreeBlocksError(f"not enough free blocks for sequence {seq.seq_id}")
        table = seq.block_table
        for block in hits:
            if self.ref_counts[block] == 0:
                del self._evictable[block]
            self.ref_counts[block] += 1
            table.append(block)
        for _ in range(needed - len(hits)):
            table.append(self._take_free_block())
        cached = len(hits) * self.block_size
        if self.enable_prefix_caching:
            self.prefix_cache_queries += seq.num_tokens
            self.prefix_cache_hits += cached
        seq.num_cached_tokens = cached
        seq.num_computed_tokens = cached
        seq.num_registered_blocks = len(hits)

    def append_slot(self, seq: Sequence, num_lookahead: int = 0) -> None:
        """Make room for ``seq``'s next token and ``num_lookahead`` draft tokens after it (new blocks
        when the last one fills up)."""
        for _ in range(self._blocks_short(seq, num_lookahead)):
            seq.block_table.append(self._take_free_block())

    def trim(self, seq: Sequence) -> None:
        """Free the blocks past ``seq``'s tokens, taken for draft tokens that were rejected. They were
        never registered (only computed full blocks are), so they go straight back to the free list."""
        keep = self.blocks_needed(seq.num_tokens)
        table = seq.block_table
        while len(table) > keep:
            block = table.pop()
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                self._free_plain.append(block)

    def commit(self, seq: Sequence) -> None:
        """Register ``seq``'s newly computed full blocks in the prefix cache (after a step)."""
        if not self.enable_prefix_caching:
            return
        num_full = min(seq.num_computed_tokens // self.block_size, len(seq.block_table))
        if seq.num_registered_blocks >= num_full:
            return
        hashes = self._ensure_hashes(seq, num_full)
        bs = self.block_size
        for i in range(seq.num_registered_blocks, num_full):
            block = seq.block_table[i]
            if self.block_hash[block] == _NO_HASH:
                h = hashes[i]
                self.block_hash[block] = h
                self.block_tokens[block] = tuple(seq.token_ids[i * bs : (i + 1) * bs])
                self._hash_to_block.setdefault(h, block)
        seq.num_registered_blocks = num_full

    def free(self, seq: Sequence) -> None:
        """Release ``seq``'s blocks. Registered blocks stay cached until evicted."""
        for block in reversed(seq.block_table):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                if self.block_hash[block] != _NO_HASH:
                    self._evictable[block] = None  # freed tail blocks are evicted first
                else:
                    self._free_plain.append(block)
        seq.block_table = []
        seq.num_computed_tokens = 0  # num_cached_tokens stays: it reports the last admission's hits
        seq.num_registered_blocks = 0

    def reset_prefix_cache(self) -> None:
        """Forget every cached (unused) block and reset the hit counters."""
        for block in list(self._evictable):
            h = self.block_hash[block]
            if self._hash_to_block.get(h) == block:
                del self._hash_to_block[h]
            self.block_hash[block] = _NO_HASH
            self.block_tokens[block] = None
            self._free_plain.append(block)
        self._evictable.clear()
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0
