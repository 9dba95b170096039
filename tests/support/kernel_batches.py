"""Building paged-attention test batches: random block tables, a filled cache, metadata."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from local_engine.attention.metadata import AttentionMetadata


@dataclass
class PagedBatch:
    query: torch.Tensor  # [T, Hq, D]
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    meta: AttentionMetadata
    new_keys: torch.Tensor  # [T, Hkv, D]: this step's keys (already written into the cache)
    new_values: torch.Tensor


def make_batch(
    query_lens: list[int],
    seq_lens: list[int],
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    device: str,
    pad_seqs: int = 0,
) -> PagedBatch:
    """A step over sequences with the given query and context lengths (``seq_lens`` include the
    step's tokens). Blocks are assigned in a shuffled order so no sequence's blocks are contiguous.
    ``pad_seqs`` appends CUDA-graph-style padding entries: one query token, ``seq_len`` 0, slot -1."""
    blocks_per_seq = [-(-s // block_size) for s in seq_lens]
    num_blocks = sum(blocks_per_seq) + 2
    order = torch.randperm(num_blocks)[: sum(blocks_per_seq)].tolist()
    width = max(blocks_per_seq) + 1
    tables = torch.zeros(len(seq_lens) + pad_seqs, width, dtype=torch.int32)
    k_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, dtype=dtype)
    v_cache = torch.randn_like(k_cache)
    slots: list[int] = []
    used = 0
    for i, (q_len, s_len) in enumerate(zip(query_lens, seq_lens, strict=True)):
        mine = order[used : used + blocks_per_seq[i]]
        used += blocks_per_seq[i]
        tables[i, : len(mine)] = torch.tensor(mine, dtype=torch.int32)
        for pos in range(s_len - q_len, s_len):
            slots.append(mine[pos // block_size] * block_size + pos % block_size)
    slots += [-1] * pad_seqs
    all_q = [*query_lens, *([1] * pad_seqs)]
    all_s = [*seq_lens, *([0] * pad_seqs)]
    num_tokens = sum(all_q)
    query = torch.randn(num_tokens, num_q_heads, head_dim, dtype=dtype)
    new_keys = torch.randn(num_tokens, num_kv_heads, head_dim, dtype=dtype)
    new_values = torch.randn_like(new_keys)
    slot_mapping = torch.tensor(slots, dtype=torch.int64)
    keep = slot_mapping >= 0
    flat = slot_mapping[keep]
    k_cache[flat // block_size, flat % block_size] = new_keys[keep]
    v_cache[flat // block_size, flat % block_size] = new_values[keep]
    starts = torch.zeros(len(all_q) + 1, dtype=torch.int32)
    starts[1:] = torch.tensor(all_q).cumsum(0)
    meta = AttentionMetadata(
        slot_mapping=slot_mapping.to(device),
        query_start_loc=starts.to(device),
        seq_lens=torch.tensor(all_s, dtype=torch.int32, device=device),
        block_tables=tables.to(device),
        max_query_len=max(all_q),
        max_seq_len=max(all_s),
        block_size=block_size,
        query_lens_cpu=all_q,
        seq_lens_cpu=all_s,
    )
    return PagedBatch(
        query.to(device),
        k_cache.to(device),
        v_cache.to(device),
        meta,
        new_keys.to(device),
        new_values.to(device),
    )
