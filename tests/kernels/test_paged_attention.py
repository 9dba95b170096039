"""The paged attention kernels (unified and split-KV) against the torch reference."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed")

from local_engine.kernels.paged_attention import (
    choose_num_splits,
    paged_attention,
    paged_attention_ref,
)
from tests.support.kernel_batches import PagedBatch, make_batch

_TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}


def _run(batch: PagedBatch, num_splits: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    meta = batch.meta
    scale = batch.query.shape[-1] ** -0.5
    out = paged_attention(
        batch.query, batch.k_cache, batch.v_cache, meta.block_tables, meta.seq_lens,
        meta.query_start_loc, meta.max_query_len, scale, num_splits=num_splits,
    )  # fmt: skip
    ref = paged_attention_ref(
        batch.query,
        batch.k_cache,
        batch.v_cache,
        meta.block_tables,
        meta.seq_lens,
        meta.query_start_loc,
        scale,
    )
    return out, ref


# (query_lens, seq_lens): a fresh prefill, decodes on both sides of a block boundary, a chunked
# prefill over cached context, a one-token prompt, and a long prefill spanning several query blocks.
MIXED = ([7, 1, 1, 9, 1, 70], [7, 16, 17, 32, 1, 75])


@pytest.mark.parametrize(("num_q_heads", "num_kv_heads"), [(4, 4), (8, 2), (6, 2), (4, 1)])
def test_mixed_batch_gqa(device: str, num_q_heads: int, num_kv_heads: int) -> None:
    batch = make_batch(*MIXED, num_q_heads, num_kv_heads, 32, 16, torch.float32, device)
    out, ref = _run(batch)
    torch.testing.assert_close(out, ref, atol=_TOL[torch.float32], rtol=_TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("block_size", "head_dim"), [(16, 64), (8, 24)])
def test_mixed_batch_dtypes_and_shapes(
    device: str, dtype: torch.dtype, block_size: int, head_dim: int
) -> None:
    batch = make_batch(*MIXED, 4, 2, head_dim, block_size, dtype, device)
    out, ref = _run(batch)
    torch.testing.assert_close(out, ref, atol=_TOL[dtype], rtol=_TOL[dtype])


def test_pure_decode_unified(device: str) -> None:
    batch = make_batch([1] * 5, [1, 15, 16, 17, 48], 8, 2, 32, 16, torch.float32, device)
    out, ref = _run(batch)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("num_splits", [2, 3, 8])
@pytest.mark.parametrize(("num_q_heads", "num_kv_heads"), [(8, 2), (6, 2)])
def test_split_kv_equals_unified(device: str, num_splits: int, num_q_heads: int, num_kv_heads: int) -> None:
    # Contexts shorter than the split count and ones ending mid-tile leave some splits empty.
    batch = make_batch([1] * 4, [130, 2, 33, 97], num_q_heads, num_kv_heads, 32, 16, torch.float32, device)
    unified, ref = _run(batch, num_splits=1)
    split, _ = _run(batch, num_splits=num_splits)
    torch.testing.assert_close(split, ref, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(split, unified, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("num_splits", [1, 4])
def test_graph_padding_rows_are_inert(device: str, num_splits: int) -> None:
    """CUDA-graph padding (seq_len 0, slot -1) yields zeros and leaves real rows exact."""
    batch = make_batch([1, 1, 1], [20, 5, 40], 4, 2, 32, 16, torch.float32, device, pad_seqs=3)
    out, ref = _run(batch, num_splits=num_splits)
    torch.testing.assert_close(out[:3], ref[:3], atol=2e-5, rtol=2e-5)
    assert torch.equal(out[3:], torch.zeros_like(out[3:]))


def test_split_count_rejected_for_prefill(device: str) -> None:
    batch = make_batch([3, 1], [3, 9], 4, 2, 32, 16, torch.float32, device)
    with pytest.raises(ValueError, match="pure-decode"):
        _run(batch, num_splits=2)


def test_split_heuristic() -> None:
    # Few sequences with long contexts split; a full GPU's worth of programs or short contexts do not.
    assert choose_num_splits(num_seqs=1, num_kv_heads=8, max_seq_len=8192, num_sms=132) > 1
    assert choose_num_splits(num_seqs=64, num_kv_heads=8, max_seq_len=8192, num_sms=132) == 1
    assert choose_num_splits(num_seqs=1, num_kv_heads=8, max_seq_len=256, num_sms=132) == 1
