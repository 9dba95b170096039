"""Paged attention with a sliding window and/or tanh soft-capping of the scores (Gemma 2/3, Phi-3).

Neither the fused CPU decode kernel, nor SDPA, nor the Triton kernels take these, so layers that
need them come here on every device: plain torch, one sequence at a time, reading only the cache
blocks the window can see. A query at position ``p`` sees keys ``k`` with ``p - window < k <= p``
(transformers' sliding mask); soft-capping is ``cap * tanh(score / cap)`` before the mask.

It reads the host copies of the metadata, so it cannot run inside a captured CUDA graph: the model
runner captures none for a model whose ``ModelConfig.needs_windowed_attention`` says so.
"""

from __future__ import annotations

import itertools

import torch

from local_engine.attention.metadata import AttentionMetadata
from local_engine.attention.torch_backend import _attend_one, _gather_blocks, _query_lens, _seq_lens


def _mask(q_len: int, kv_len: int, first: int, window: int | None, groups: int, device: torch.device):
    """``[groups * q_len, kv_len - first]`` bool: queries at ``kv_len - q_len ..``, keys from ``first``."""
    q_pos = torch.arange(kv_len - q_len, kv_len, device=device).unsqueeze(1)
    k_pos = torch.arange(first, kv_len, device=device).unsqueeze(0)
    mask = k_pos <= q_pos
    if window is not None:
        mask &= k_pos > q_pos - window
    return mask.repeat(groups, 1) if groups > 1 else mask


def _attend_capped(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float, cap: float
) -> torch.Tensor:
    """``_attend_one`` with soft-capped scores: ``q [n, Hq, D]``, ``k, v [L, Hkv, D]`` -> ``[n, Hq, D]``."""
    n, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    groups = num_heads // num_kv_heads
    qg = (
        q.view(n, num_kv_heads, groups, head_dim)
        .permute(1, 2, 0, 3)
        .reshape(num_kv_heads, groups * n, head_dim)
    )
    # Scores in float32: tanh flattens them, so bf16 rounding before it would cost resolution.
    scores = torch.bmm(qg.float(), k.transpose(0, 1).transpose(1, 2).float()) * scale
    scores = torch.tanh(scores / cap) * cap
    scores.masked_fill_(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    out = torch.bmm(probs, v.transpose(0, 1))
    return out.view(num_kv_heads, groups, n, head_dim).permute(2, 0, 1, 3).reshape(n, num_heads, head_dim)


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    scale: float,
    softcap: float | None,
) -> torch.Tensor:
    if softcap is None:
        return _attend_one(q, k, v, mask, scale)
    return _attend_capped(q, k, v, mask, scale, softcap)


def attend_windowed(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    window: int | None,
    softcap: float | None,
) -> torch.Tensor:
    """``query [T, Hq, D]`` against the paged cache (this step's K/V already written) -> ``[T, Hq, D]``."""
    out = torch.empty_like(query)
    block_size = k_cache.shape[1]
    groups = query.shape[1] // k_cache.shape[2]
    start = 0
    for i, (q_len, kv_len) in enumerate(zip(_query_lens(meta), _seq_lens(meta), strict=True)):
        if q_len == 0:
            continue
        # The oldest key any of this chunk's queries can see, rounded down to its block.
        first = 0 if window is None else max(0, kv_len - q_len - window + 1)
        first_block = first // block_size
        blocks = meta.block_tables[i, first_block : -(-kv_len // block_size)].to(torch.long)
        offset = first_block * block_size
        k = _gather_blocks(k_cache, blocks)[: kv_len - offset]
        v = _gather_blocks(v_cache, blocks)[: kv_len - offset]
        mask = _mask(q_len, kv_len, offset, window, groups, query.device)
        out[start : start + q_len] = _attend(query[start : start + q_len], k, v, mask, scale, softcap)
        start += q_len
    return out


def attend_windowed_uncached(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    window: int | None,
    softcap: float | None,
) -> torch.Tensor:
    """As ``attend_windowed`` within the step's own tokens (no cache yet: every sequence a fresh prefill)."""
    out = torch.empty_like(query)
    groups = query.shape[1] // key.shape[1]
    starts = meta.query_start_loc.tolist()
    for s, e in itertools.pairwise(starts):
        if e > s:
            mask = _mask(e - s, e - s, 0, window, groups, query.device)
            out[s:e] = _attend(query[s:e], key[s:e], value[s:e], mask, scale, softcap)
    return out
