"""Block manager: allocation, reference counts, prefix caching (hash chain over full blocks), LRU eviction."""

from __future__ import annotations

import pytest

from local_engine.engine.block_manager import BlockManager, NoFreeBlocksError
from local_engine.sampling_params import SamplingParams
from local_engine.sequence import Sequence


def make_seq(tokens: list[int], request_id: str = "r") -> Sequence:
    return Sequence(request_id, 0, list(tokens), SamplingParams())


def compute_all(bm: BlockManager, seq: Sequence) -> None:
    """What a step does after the model ran over every token of ``seq``."""
    seq.num_computed_tokens = seq.num_tokens
    bm.commit(seq)


def assert_all_free(bm: BlockManager) -> None:
    assert bm.num_free_blocks == bm.num_blocks
    assert all(rc == 0 for rc in bm.ref_counts)


def test_allocate_and_free_return_every_block() -> None:
    bm = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    seq = make_seq(list(range(10)))
    assert bm.can_allocate(seq)
    bm.allocate(seq)
    assert len(seq.block_table) == 3 and len(set(seq.block_table)) == 3
    assert bm.num_free_blocks == 5
    assert all(bm.ref_counts[b] == 1 for b in seq.block_table)
    bm.free(seq)
    assert seq.block_table == []
    assert_all_free(bm)


def test_can_allocate_refuses_when_blocks_run_out() -> None:
    bm = BlockManager(num_blocks=3, block_size=4, enable_prefix_caching=False)
    first = make_seq(list(range(8)))
    bm.allocate(first)
    second = make_seq(list(range(100, 108)))
    assert not bm.can_allocate(second)
    with pytest.raises(NoFreeBlocksError):
        bm.allocate(second)
    assert bm.num_free_blocks == 1  # a refused allocation takes nothing


def test_append_slot_takes_a_block_only_at_a_boundary() -> None:
    bm = BlockManager(num_blocks=4, block_size=4, enable_prefix_caching=False)
    seq = make_seq([1, 2, 3])
    bm.allocate(seq)
    compute_all(bm, seq)
    seq.token_ids.append(4)  # position 3 still fits block 0
    assert bm.can_append(seq)
    bm.append_slot(seq)
    assert len(seq.block_table) == 1
    compute_all(bm, seq)
    seq.token_ids.append(5)  # position 4 needs block 1
    bm.append_slot(seq)
    assert len(seq.block_table) == 2
    assert bm.num_free_blocks == 2


def test_prefix_cache_hit_reuses_computed_full_blocks() -> None:
    bm = BlockManager(num_blocks=16, block_size=4)
    a = make_seq(list(range(10)), "a")
    bm.allocate(a)
    assert a.num_cached_tokens == 0
    compute_all(bm, a)  # blocks 0 and 1 are full and computed; block 2 holds 2 tokens
    b = make_seq([*range(8), 50, 51, 52], "b")
    bm.allocate(b)
    assert b.num_cached_tokens == 8 and b.num_computed_tokens == 8
    assert b.block_table[:2] == a.block_table[:2]
    assert b.block_table[2] != a.block_table[2]  # the partial last block is never shared
    assert [bm.ref_counts[x] for x in a.block_table[:2]] == [2, 2]
    assert bm.prefix_cache_hits == 8
    bm.free(a)
    assert [bm.ref_counts[x] for x in b.block_table[:2]] == [1, 1]
    bm.free(b)
    assert_all_free(bm)


def test_hit_survives_free_until_evicted() -> None:
    bm = BlockManager(num_blocks=4, block_size=4)
    a = make_seq(list(range(9)), "a")
    bm.allocate(a)
    compute_all(bm, a)
    kept = a.block_table[:2]
    bm.free(a)
    assert bm.num_cached_blocks == 2 and bm.num_free_blocks == 4
    again = make_seq(list(range(9)), "again")
    bm.allocate(again)
    assert again.block_table[:2] == kept and again.num_cached_tokens == 8
    bm.free(again)
    # A sequence that needs every block evicts the cached ones.
    big = make_seq(list(range(100, 116)), "big")
    bm.allocate(big)
    assert bm.num_cached_blocks == 0
    bm.free(big)
    late = make_seq(list(range(9)), "late")
    bm.allocate(late)
    assert late.num_cached_tokens == 0
    bm.free(late)
    assert_all_free(bm)


def test_last_block_is_recomputed_even_when_fully_cached() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    a = make_seq(list(range(8)), "a")
    bm.allocate(a)
    compute_all(bm, a)
    b = make_seq(list(range(8)), "b")
    bm.allocate(b)
    # Logits for the last prompt token are needed, so its block is not taken from the cache.
    assert b.num_cached_tokens == 4
    assert b.num_uncomputed_tokens == 4


def test_chain_hash_depends_on_the_whole_prefix() -> None:
    bm = BlockManager(num_blocks=16, block_size=4)
    a = make_seq([1, 2, 3, 4, 5, 6, 7, 8, 9], "a")
    bm.allocate(a)
    compute_all(bm, a)
    # Same second block, different first block: no hit at all.
    b = make_seq([9, 9, 9, 9, 5, 6, 7, 8, 9], "b")
    bm.allocate(b)
    assert b.num_cached_tokens == 0


def test_uncommitted_blocks_are_not_hits() -> None:
    """A chunked prefill's blocks are only registered once their K/V is computed."""
    bm = BlockManager(num_blocks=16, block_size=4)
    a = make_seq(list(range(12)), "a")
    bm.allocate(a)
    a.num_computed_tokens = 4
    bm.commit(a)
    b = make_seq(list(range(13)), "b")
    bm.allocate(b)
    assert b.num_cached_tokens == 4


def test_prefix_caching_disabled_never_hits() -> None:
    bm = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    a = make_seq(list(range(9)), "a")
    bm.allocate(a)
    compute_all(bm, a)
    bm.free(a)
    b = make_seq(list(range(9)), "b")
    bm.allocate(b)
    assert b.num_cached_tokens == 0 and bm.num_cached_blocks == 0
