"""The paged-cache write kernel against its torch reference."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed")

from local_engine.kernels.kv_cache_write import write_kv, write_kv_ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("block_size", "num_kv_heads", "head_dim"), [(16, 2, 32), (5, 3, 24)])
def test_write_kv_matches_reference(
    device: str, dtype: torch.dtype, block_size: int, num_kv_heads: int, head_dim: int
) -> None:
    num_blocks, num_tokens = 6, 11
    # Slots straddle block boundaries; -1 entries (padding) must leave the cache untouched.
    slots = torch.randperm(num_blocks * block_size)[:num_tokens]
    slots[block_size // 2 :: 4] = -1
    slots[0] = block_size - 1
    slots[1] = block_size
    # Keys/values as strided views of a fused projection output, the way layers produce them.
    fused = torch.randn(num_tokens, 3, num_kv_heads, head_dim, dtype=dtype, device=device)
    key, value = fused[:, 1], fused[:, 2]
    caches = [torch.randn(num_blocks, block_size, num_kv_heads, head_dim, dtype=dtype, device=device)]
    caches.append(torch.randn_like(caches[0]))
    ref_k, ref_v = caches[0].clone(), caches[1].clone()
    slots = slots.to(device)
    write_kv(key, value, caches[0], caches[1], slots)
    write_kv_ref(key, value, ref_k, ref_v, slots)
    assert torch.equal(caches[0], ref_k)
    assert torch.equal(caches[1], ref_v)


def test_all_negative_slots_write_nothing(device: str) -> None:
    k_cache = torch.zeros(2, 4, 1, 16, device=device)
    v_cache = torch.zeros_like(k_cache)
    key = torch.ones(3, 1, 16, device=device)
    write_kv(key, key, k_cache, v_cache, torch.full((3,), -1, dtype=torch.int64, device=device))
    assert k_cache.abs().sum().item() == 0
    assert v_cache.abs().sum().item() == 0
