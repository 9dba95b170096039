"""The Triton AttentionBackend against the engine's torch backend on the same batches."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed")

from local_engine.attention.torch_backend import TorchAttentionBackend
from local_engine.attention.triton_backend import TritonAttentionBackend
from tests.support.kernel_batches import make_batch


@pytest.mark.parametrize(
    ("query_lens", "seq_lens", "num_splits"),
    [
        ([5, 1, 12, 1], [5, 33, 20, 16], None),  # mixed prefill + decode
        ([1, 1, 1], [64, 3, 100], None),  # pure decode, heuristic (unified at these lengths)
        ([1, 1, 1], [64, 3, 100], 4),  # pure decode through the split-KV kernels
    ],
)
def test_backend_matches_torch_backend(
    device: str, query_lens: list[int], seq_lens: list[int], num_splits: int | None
) -> None:
    batch = make_batch(query_lens, seq_lens, 8, 2, 32, 16, torch.float32, device)
    meta = batch.meta
    scale = 32**-0.5
    torch_caches = (batch.k_cache.clone(), batch.v_cache.clone())
    triton_caches = (torch.zeros_like(batch.k_cache), torch.zeros_like(batch.v_cache))
    # Start the Triton caches from the same context but without this step's K/V, so write_kv is exercised.
    triton_caches[0].copy_(batch.k_cache)
    triton_caches[1].copy_(batch.v_cache)
    flat = meta.slot_mapping[meta.slot_mapping >= 0]
    triton_caches[0][flat // 16, flat % 16] = 0
    triton_caches[1][flat // 16, flat % 16] = 0

    reference = TorchAttentionBackend()
    reference.write_kv(batch.new_keys, batch.new_values, *torch_caches, meta.slot_mapping)
    expected = reference.attend(batch.query, *torch_caches, meta, scale)

    backend = TritonAttentionBackend(num_splits=num_splits)
    backend.write_kv(batch.new_keys, batch.new_values, *triton_caches, meta.slot_mapping)
    assert torch.equal(triton_caches[0], torch_caches[0])
    assert torch.equal(triton_caches[1], torch_caches[1])
    out = backend.attend(batch.query, *triton_caches, meta, scale)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)
