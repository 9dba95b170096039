"""The contract between the model runner, the model's attention layers and the kernels.

KV cache layout, per layer: ``k_cache`` and ``v_cache`` are each
``[num_blocks, block_size, num_kv_heads, head_dim]``. Token slot ``s`` lives at block
``s // block_size``, offset ``s % block_size``.

A step's batch is flattened: ``T`` tokens from ``S`` sequences, sequence ``i`` owning query
tokens ``query_start_loc[i]:query_start_loc[i+1]`` (a prefill chunk or one decode token).
Query token ``j`` of sequence ``i`` sits at position ``seq_lens[i] - query_len_i + j`` and
attends causally to positions ``0..that position`` of its own sequence through
``block_tables[i]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] int64; where each new token's K/V is written; -1 = skip
    query_start_loc: torch.Tensor  # [S + 1] int32, cumulative query lengths
    seq_lens: torch.Tensor  # [S] int32, context length including this step's tokens
    block_tables: torch.Tensor  # [S, max_blocks] int32, padded with 0
    max_query_len: int
    max_seq_len: int
    block_size: int
    # Host copies so CPU code paths never synchronise on device tensors.
    query_lens_cpu: list[int] | None = None
    seq_lens_cpu: list[int] | None = None

    @property
    def num_seqs(self) -> int:
        return self.seq_lens.shape[0]

    @property
    def is_pure_decode(self) -> bool:
        return self.max_query_len == 1


class AttentionBackend(Protocol):
    """A paged attention implementation (the torch path on CPU, Triton kernels on GPU)."""

    def write_kv(
        self,
        key: torch.Tensor,  # [T, num_kv_heads, head_dim]
        value: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None: ...

    def attend(
        self,
        query: torch.Tensor,  # [T, num_q_heads, head_dim]
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:  # [T, num_q_heads, head_dim]
        ...
