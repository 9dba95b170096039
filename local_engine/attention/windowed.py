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
import torch.nn.functional as F

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


def _decode(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    tables: torch.Tensor,
    lens: list[int],
    scale: float,
    window: int | None,
    softcap: float | None,
) -> torch.Tensor:
    """One query token per sequence, all sequences in one batched pass: ``query [S, Hq, D]`` ->
    ``[S, Hq, D]``. Each gathers the blocks from the one holding its oldest visible key on; what
    the span holds beyond a sequence's keys (or before its window) is masked out."""
    num_seqs, num_heads, head_dim = query.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    device = query.device
    firsts = [0 if window is None else max(0, n - window) for n in lens]
    first_blocks = [f // block_size for f in firsts]
    num_blocks = max(-(-n // block_size) - b for n, b in zip(lens, first_blocks, strict=True))
    span = num_blocks * block_size
    first_blocks_t = torch.tensor(first_blocks, device=device).unsqueeze(1)
    # Past a table's last column the blocks are padding: clamped, read, and masked out.
    cols = (first_blocks_t + torch.arange(num_blocks, device=device)).clamp_(max=tables.shape[1] - 1)
    blocks = tables.to(device).gather(1, cols).to(torch.long).reshape(-1)
    k = _gather_blocks(k_cache, blocks).view(num_seqs, span, num_kv_heads, head_dim).transpose(1, 2)
    v = _gather_blocks(v_cache, blocks).view(num_seqs, span, num_kv_heads, head_dim).transpose(1, 2)
    positions = first_blocks_t * block_size + torch.arange(span, device=device)
    visible = (positions < torch.tensor(lens, device=device).unsqueeze(1)) & (
        positions >= torch.tensor(firsts, device=device).unsqueeze(1)
    )
    visible = visible.view(num_seqs, 1, 1, span)
    qg = query.view(num_seqs, num_kv_heads, num_heads // num_kv_heads, head_dim)
    if softcap is None:
        mask = torch.zeros(visible.shape, dtype=query.dtype, device=device).masked_fill_(
            ~visible, float("-inf")
        )
        out = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask, scale=scale)
    else:
        scores = torch.matmul(qg.float(), k.float().transpose(-1, -2)) * scale
        scores = torch.tanh(scores / softcap) * softcap
        probs = torch.softmax(scores.masked_fill_(~visible, float("-inf")), dim=-1).to(v.dtype)
        out = torch.matmul(probs, v)
    return out.reshape(num_seqs, num_heads, head_dim)


def attend_windowed(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    window: int | None,
    softcap: float | None,
) -> torch.Tensor:
    """``query [T, Hq, D]`` against the paged cache (this step's K/V already written) -> ``[T, Hq, D]``.

    Decode tokens of all sequences go through ``_decode`` together; prefill chunks one at a time.
    """
    out = torch.empty_like(query)
    block_size = k_cache.shape[1]
    groups = query.shape[1] // k_cache.shape[2]
    decode_rows: list[int] = []
    decode_tokens: list[int] = []
    decode_lens: list[int] = []
    start = 0
    for i, (q_len, kv_len) in enumerate(zip(_query_lens(meta), _seq_lens(meta), strict=True)):
        if q_len == 1:
            decode_rows.append(i)
            decode_tokens.append(start)
            decode_lens.append(kv_len)
        elif q_len > 1:
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
    if not decode_rows:
        return out
    if len(decode_rows) == query.shape[0] == meta.block_tables.shape[0]:  # a pure decode step
        return _decode(query, k_cache, v_cache, meta.block_tables, decode_lens, scale, window, softcap)
    tables = meta.block_tables.index_select(0, torch.tensor(decode_rows, device=meta.block_tables.device))
    tokens = torch.tensor(decode_tokens, device=query.device)
    out[tokens] = _decode(query[tokens], k_cache, v_cache, tables, decode_lens, scale, window, softcap)
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
