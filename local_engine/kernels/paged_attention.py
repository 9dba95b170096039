"""Paged attention over the KV cache for mixed batches (prefill chunks and decodes together).

Two kernels, in the manner of vLLM's Triton "unified attention":

* ``_unified_attention_kernel`` — one program per (query block, KV head). A query block is up to
  ``BLOCK_Q`` consecutive query tokens of one sequence; its rows are those tokens times all query
  heads that share the KV head (GQA), so each K/V tile loaded from the cache serves the whole
  group. The grid size depends only on the number of query tokens and sequences, never on tensor
  contents, so it is safe inside a CUDA graph; the program finds its sequence by binary search over
  ``query_start_loc``. Causal, online softmax (base-2 exponentials).
* ``_split_kv_decode_kernel`` + ``_reduce_splits_kernel`` — for pure-decode batches with few
  sequences and long contexts: each sequence's context is cut into ``num_splits`` pieces processed
  by separate programs, then the partial softmax states are combined. ``num_splits`` is chosen from
  the batch's *bound* on the context length (``max_seq_len``), each program reads its sequence's real
  length from ``seq_lens``, so a graph captured with a bound stays correct for shorter contexts.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from local_engine.kernels.dtypes import dot_dtype, next_pow2

_LOG2E = 1.4426950408889634


@triton.jit
def _find_seq_idx(query_start_loc_ptr, target, num_seqs, BLOCK_Q: tl.constexpr):
    # Query block b of sequence i has global index query_start_loc[i] // BLOCK_Q + i + b; find the
    # last sequence whose first block index is <= target.
    lo: tl.int32 = 0
    hi = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        first = tl.load(query_start_loc_ptr + mid) // BLOCK_Q + mid
        if first <= target:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


# ``num_seqs`` == 1 must not become a compile-time constant: it is a loop bound that changes type.
@triton.jit
def _load_kv_tile(
    k_cache_ptr,
    v_cache_ptr,
    table,
    kv_pos,
    kv_ok,
    kv_head,
    dims,
    dim_ok,
    stride_kc_b,
    stride_kc_s,
    stride_kc_h,
    stride_vc_b,
    stride_vc_s,
    stride_vc_h,
    BLOCK_SIZE: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
):
    """One tile of keys (transposed, ``[DIM_PAD, TILE]``) and values (``[TILE, DIM_PAD]``) of a
    sequence, gathered from the paged cache through its block table row ``table``."""
    block = tl.load(table + kv_pos // BLOCK_SIZE, mask=kv_ok, other=0).to(tl.int64)
    in_block = (kv_pos % BLOCK_SIZE).to(tl.int64)
    k_off = block * stride_kc_b + in_block * stride_kc_s + kv_head * stride_kc_h
    v_off = block * stride_vc_b + in_block * stride_vc_s + kv_head * stride_vc_h
    k = tl.load(
        k_cache_ptr + k_off[None, :] + dims[:, None], mask=dim_ok[:, None] & kv_ok[None, :], other=0.0
    ).to(DOT_DTYPE)
    v = tl.load(
        v_cache_ptr + v_off[:, None] + dims[None, :], mask=kv_ok[:, None] & dim_ok[None, :], other=0.0
    ).to(DOT_DTYPE)
    return k, v


@triton.jit
def _online_softmax_step(s, v, m_i, l_i, acc, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """Fold one tile of log2-scaled scores ``s`` and values ``v`` into the running max, sum and
    output (flash-attention's online softmax)."""
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    # Rows with nothing visible yet keep m = -inf; shift by 0 instead so exp2 gives 0, not NaN.
    m_safe = tl.where(m_new > float("-inf"), m_new, 0.0)
    p = tl.math.exp2(s - m_safe[:, None])
    alpha = tl.math.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(DOT_DTYPE), v, input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit(do_not_specialize=["num_seqs"])
def _unified_attention_kernel(
    out_ptr,
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    block_tables_ptr,
    seq_lens_ptr,
    query_start_loc_ptr,
    scale_log2,
    num_seqs,
    stride_q_t,
    stride_q_h,
    stride_o_t,
    stride_o_h,
    stride_kc_b,
    stride_kc_s,
    stride_kc_h,
    stride_vc_b,
    stride_vc_s,
    stride_vc_h,
    stride_bt,
    BLOCK_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    DIM_PAD: tl.constexpr,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_M: tl.constexpr,
    TILE: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    q_block_global = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq = _find_seq_idx(query_start_loc_ptr, q_block_global, num_seqs, BLOCK_Q)
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    q_block = q_block_global - (q_start // BLOCK_Q + seq)
    if q_block * BLOCK_Q >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    context_len = seq_len - q_len

    rows = tl.arange(0, BLOCK_M)
    q_pos = q_block * BLOCK_Q + rows // GROUP_PAD  # query index within the sequence
    head_in_group = rows % GROUP_PAD
    head = kv_head * GROUP + head_in_group
    row_ok = (q_pos < q_len) & (head_in_group < GROUP)
    dims = tl.arange(0, DIM_PAD)
    dim_ok = dims < HEAD_DIM
    token = (q_start + q_pos).to(tl.int64)

    q = tl.load(
        q_ptr + token[:, None] * stride_q_t + head[:, None] * stride_q_h + dims[None, :],
        mask=row_ok[:, None] & dim_ok[None, :],
        other=0.0,
    ).to(DOT_DTYPE)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, DIM_PAD], dtype=tl.float32)

    # Keys this block can see: the context plus its own tokens up to its last valid query.
    last_q = tl.minimum((q_block + 1) * BLOCK_Q, q_len)
    num_keys = context_len + last_q
    causal_limit = context_len + q_pos  # row r sees key positions <= causal_limit[r]
    table = block_tables_ptr + seq.to(tl.int64) * stride_bt
    for start in range(0, num_keys, TILE):
        kv_pos = start + tl.arange(0, TILE)
        kv_ok = kv_pos < num_keys
        k, v = _load_kv_tile(
            k_cache_ptr, v_cache_ptr, table, kv_pos, kv_ok, kv_head, dims, dim_ok,
            stride_kc_b, stride_kc_s, stride_kc_h, stride_vc_b, stride_vc_s, stride_vc_h,
            BLOCK_SIZE, DOT_DTYPE,
        )  # fmt: skip
        s = tl.dot(q, k, input_precision=PRECISION) * scale_log2
        visible = row_ok[:, None] & kv_ok[None, :] & (kv_pos[None, :] <= causal_limit[:, None])
        s = tl.where(visible, s, float("-inf"))
        m_i, l_i, acc = _online_softmax_step(s, v, m_i, l_i, acc, DOT_DTYPE, PRECISION)

    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tl.store(
        out_ptr + token[:, None] * stride_o_t + head[:, None] * stride_o_h + dims[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=row_ok[:, None] & dim_ok[None, :],
    )


@triton.jit
def _split_kv_decode_kernel(
    part_acc_ptr,  # [T, num_q_heads, NUM_SPLITS, DIM_PAD] float32
    part_ml_ptr,  # [T, num_q_heads, NUM_SPLITS, 2] float32: running max (log2 domain), sum
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    block_tables_ptr,
    seq_lens_ptr,
    query_start_loc_ptr,
    scale_log2,
    stride_q_t,
    stride_q_h,
    stride_kc_b,
    stride_kc_s,
    stride_kc_h,
    stride_vc_b,
    stride_vc_s,
    stride_vc_h,
    stride_bt,
    num_q_heads,
    BLOCK_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    DIM_PAD: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    TILE: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    # Pure decode: one query token per sequence, the last of its (length-1) query range.
    token = (tl.load(query_start_loc_ptr + seq + 1) - 1).to(tl.int64)
    seq_len = tl.load(seq_lens_ptr + seq)
    split_len = tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), TILE) * TILE
    kv_start = split * split_len
    kv_end = tl.minimum(kv_start + split_len, seq_len)

    rows = tl.arange(0, BLOCK_M)
    row_ok = rows < GROUP
    head = kv_head * GROUP + rows
    dims = tl.arange(0, DIM_PAD)
    dim_ok = dims < HEAD_DIM
    q = tl.load(
        q_ptr + token * stride_q_t + head[:, None] * stride_q_h + dims[None, :],
        mask=row_ok[:, None] & dim_ok[None, :],
        other=0.0,
    ).to(DOT_DTYPE)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, DIM_PAD], dtype=tl.float32)
    table = block_tables_ptr + seq.to(tl.int64) * stride_bt
    for start in range(kv_start, kv_end, TILE):
        kv_pos = start + tl.arange(0, TILE)
        kv_ok = kv_pos < kv_end
        k, v = _load_kv_tile(
            k_cache_ptr, v_cache_ptr, table, kv_pos, kv_ok, kv_head, dims, dim_ok,
            stride_kc_b, stride_kc_s, stride_kc_h, stride_vc_b, stride_vc_s, stride_vc_h,
            BLOCK_SIZE, DOT_DTYPE,
        )  # fmt: skip
        s = tl.dot(q, k, input_precision=PRECISION) * scale_log2
        s = tl.where(row_ok[:, None] & kv_ok[None, :], s, float("-inf"))
        m_i, l_i, acc = _online_softmax_step(s, v, m_i, l_i, acc, DOT_DTYPE, PRECISION)

    base = (token * num_q_heads + head) * NUM_SPLITS + split  # [BLOCK_M]
    tl.store(part_acc_ptr + base[:, None] * DIM_PAD + dims[None, :], acc, mask=row_ok[:, None])
    tl.store(part_ml_ptr + base * 2, m_i, mask=row_ok)
    tl.store(part_ml_ptr + base * 2 + 1, l_i, mask=row_ok)


@triton.jit
def _reduce_splits_kernel(
    out_ptr,
    part_acc_ptr,
    part_ml_ptr,
    query_start_loc_ptr,
    stride_o_t,
    stride_o_h,
    num_q_heads,
    HEAD_DIM: tl.constexpr,
    DIM_PAD: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    SPLITS_PAD: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    token = (tl.load(query_start_loc_ptr + seq + 1) - 1).to(tl.int64)
    splits = tl.arange(0, SPLITS_PAD)
    split_ok = splits < NUM_SPLITS
    dims = tl.arange(0, DIM_PAD)
    base = (token * num_q_heads + head) * NUM_SPLITS + splits
    m = tl.load(part_ml_ptr + base * 2, mask=split_ok, other=float("-inf"))
    l_part = tl.load(part_ml_ptr + base * 2 + 1, mask=split_ok, other=0.0)
    acc = tl.load(part_acc_ptr + base[:, None] * DIM_PAD + dims[None, :], mask=split_ok[:, None], other=0.0)
    m_max = tl.max(m, axis=0)
    m_max = tl.where(m_max > float("-inf"), m_max, 0.0)
    # Empty splits (past this sequence's end) have m = -inf and weigh 0.
    w = tl.math.exp2(m - m_max)
    total = tl.sum(w * l_part, axis=0)
    out = tl.sum(acc * w[:, None], axis=0) / tl.where(total == 0.0, 1.0, total)
    tl.store(
        out_ptr + token * stride_o_t + head * stride_o_h + dims,
        out.to(out_ptr.dtype.element_ty),
        mask=dims < HEAD_DIM,
    )


def choose_num_splits(num_seqs: int, num_kv_heads: int, max_seq_len: int, num_sms: int = 132) -> int:
    """How many KV splits a pure-decode batch should use (1 = the unified kernel).

    Splitting pays when the unified kernel's ``num_seqs * num_kv_heads`` programs leave most SMs idle
    and each program would walk a long context; aim for about two waves of programs, with splits
    of at least 256 keys so the reduction stays cheap.
    """
    programs = num_seqs * num_kv_heads
    if max_seq_len < 1024 or programs >= num_sms:
        return 1
    by_occupancy = max(1, (2 * num_sms) // programs)
    by_length = max(1, max_seq_len // 256)
    return int(min(16, by_occupancy, by_length))


def paged_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    max_query_len: int,
    scale: float,
    num_splits: int = 1,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of ``query`` ``[T, num_q_heads, head_dim]`` over the paged cache.

    ``num_splits > 1`` selects the split-KV decode path and requires ``max_query_len == 1``.
    Everything shape-like is taken from tensor shapes or host ints, so the call issues no host
    synchronisation and can be captured in a CUDA graph.
    """
    num_tokens, num_q_heads, head_dim = query.shape
    num_kv_heads = k_cache.shape[2]
    block_size = k_cache.shape[1]
    num_seqs = seq_lens.shape[0]
    if num_q_heads % num_kv_heads:
        raise ValueError(f"{num_q_heads} query heads do not group over {num_kv_heads} KV heads")
    if query.stride(-1) != 1 or k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("paged_attention needs the head_dim axis contiguous")
    group = num_q_heads // num_kv_heads
    group_pad = next_pow2(group)
    dim_pad = max(16, next_pow2(head_dim))
    if out is None:
        out = torch.empty_like(query)
    if num_tokens == 0:
        return out
    dot = dot_dtype(k_cache.dtype)
    # float32 caches (tests, CPU-parity checks) get exact float32 products, not TF32's 10-bit mantissa.
    precision = "ieee" if k_cache.dtype == torch.float32 else "tf32"
    scale_log2 = scale * _LOG2E
    if num_splits > 1:
        if max_query_len != 1:
            raise ValueError("split-KV attention is for pure-decode batches (max_query_len == 1)")
        block_m = max(16, group_pad)
        part_acc = torch.empty(
            (num_tokens, num_q_heads, num_splits, dim_pad), dtype=torch.float32, device=query.device
        )
        part_ml = torch.empty(
            (num_tokens, num_q_heads, num_splits, 2), dtype=torch.float32, device=query.device
        )
        _split_kv_decode_kernel[(num_seqs, num_kv_heads, num_splits)](
            part_acc,
            part_ml,
            query,
            k_cache,
            v_cache,
            block_tables,
            seq_lens,
            query_start_loc,
            scale_log2,
            query.stride(0),
            query.stride(1),
            k_cache.stride(0),
            k_cache.stride(1),
            k_cache.stride(2),
            v_cache.stride(0),
            v_cache.stride(1),
            v_cache.stride(2),
            block_tables.stride(0),
            num_q_heads,
            BLOCK_SIZE=block_size,
            HEAD_DIM=head_dim,
            DIM_PAD=dim_pad,
            GROUP=group,
            BLOCK_M=block_m,
            TILE=32,
            NUM_SPLITS=num_splits,
            DOT_DTYPE=dot,
            PRECISION=precision,
        )
        _reduce_splits_kernel[(num_seqs, num_q_heads)](
            out,
            part_acc,
            part_ml,
            query_start_loc,
            out.stride(0),
            out.stride(1),
            num_q_heads,
            HEAD_DIM=head_dim,
            DIM_PAD=dim_pad,
            NUM_SPLITS=num_splits,
            SPLITS_PAD=next_pow2(num_splits),
        )
        return out

    # Decode rows are one token per sequence: a 16-row block holds a whole GQA group and wastes the
    # fewest rows; prefill rows benefit from bigger tensor-core tiles.
    block_m = max(group_pad, 16 if max_query_len <= 1 else 64)
    block_q = block_m // group_pad
    grid = (num_tokens // block_q + num_seqs, num_kv_heads)
    _unified_attention_kernel[grid](
        out,
        query,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        query_start_loc,
        scale_log2,
        num_seqs,
        query.stride(0),
        query.stride(1),
        out.stride(0),
        out.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        block_tables.stride(0),
        BLOCK_SIZE=block_size,
        HEAD_DIM=head_dim,
        DIM_PAD=dim_pad,
        GROUP=group,
        GROUP_PAD=group_pad,
        BLOCK_Q=block_q,
        BLOCK_M=block_m,
        TILE=32 if max_query_len <= 1 else 64,
        DOT_DTYPE=dot,
        PRECISION=precision,
    )
    return out


def paged_attention_ref(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """The torch reference: gather each sequence's keys/values and run causal attention in float32."""
    num_q_heads = query.shape[1]
    num_kv_heads = k_cache.shape[2]
    block_size = k_cache.shape[1]
    group = num_q_heads // num_kv_heads
    out = torch.zeros_like(query)
    starts = query_start_loc.tolist()
    for i, seq_len in enumerate(seq_lens.tolist()):
        q = query[starts[i] : starts[i + 1]].float()  # [L, Hq, D]
        q_len = q.shape[0]
        if q_len == 0:
            continue
        positions = torch.arange(seq_len, device=query.device)
        blocks = block_tables[i].long()[positions // block_size]
        k = k_cache[blocks, positions % block_size].float().repeat_interleave(group, dim=1)  # [S, Hq, D]
        v = v_cache[blocks, positions % block_size].float().repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) * scale
        q_pos = torch.arange(seq_len - q_len, seq_len, device=query.device)
        scores = scores.masked_fill(positions[None, None, :] > q_pos[None, :, None], -math.inf)
        probs = scores.softmax(dim=-1)
        out[starts[i] : starts[i + 1]] = torch.einsum("hqk,khd->qhd", probs, v).to(query.dtype)
    return out
