"""The Triton paged-attention backend (``select.get_backend`` picks it on CUDA).

``write_kv`` scatters the step's keys/values into the cache by slot mapping; ``attend`` runs the
unified mixed-batch kernel, or the split-KV decode kernel for pure-decode batches with few
sequences and long contexts. Neither issues a host synchronisation: the split decision uses only
host ints from ``AttentionMetadata`` (``max_seq_len`` is a bound, e.g. ``max_model_len`` while a
CUDA graph is captured), so both are safe to capture in a CUDA graph.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from local_engine.attention.metadata import AttentionMetadata
from local_engine.kernels.kv_cache_write import write_kv
from local_engine.kernels.paged_attention import choose_num_splits, paged_attention


@lru_cache(maxsize=8)
def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).multi_processor_count)
    return 132  # an H100's count; only matters for the split heuristic under the CPU interpreter


class TritonAttentionBackend:
    """``AttentionBackend`` on Triton kernels.

    ``num_splits`` forces the split-KV decode path's split count (tests use it to compare with the
    unified kernel); ``None`` lets ``choose_num_splits`` decide per batch.
    """

    def __init__(self, num_splits: int | None = None) -> None:
        self.num_splits = num_splits

    def write_kv(
        self,
        key: torch.Tensor,
        value: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        write_kv(key, value, k_cache, v_cache, slot_mapping)

    def splits_for(self, meta: AttentionMetadata, num_kv_heads: int, device: torch.device) -> int:
        """The split count ``attend`` uses for this batch (1 = unified kernel)."""
        if not meta.is_pure_decode:
            return 1
        if self.num_splits is not None:
            return self.num_splits
        return choose_num_splits(meta.num_seqs, num_kv_heads, meta.max_seq_len, _num_sms(device))

    def attend(
        self,
        query: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        if query.stride(-1) != 1:
            query = query.contiguous()
        return paged_attention(
            query,
            k_cache,
            v_cache,
            meta.block_tables,
            meta.seq_lens,
            meta.query_start_loc,
            meta.max_query_len,
            scale,
            num_splits=self.splits_for(meta, k_cache.shape[2], query.device),
        )


_default: TritonAttentionBackend | None = None


def get_backend() -> TritonAttentionBackend:
    """The shared backend instance (heuristic split choice)."""
    global _default
    if _default is None:
        _default = TritonAttentionBackend()
    return _default
