"""The pure-torch paged attention backend (CPU, and the fallback on GPUs without Triton).

Decode tokens of all sequences are handled in one batched SDPA call over K/V gathered through the
block tables into ``[S, max_seq_len, Hkv, D]`` with a length mask; prefill chunks are handled per
sequence with a causal mask offset by the already-cached context. Query heads are grouped under
their KV head (``[Hkv, G * q_len, D]``) so GQA never materialises repeated K/V.

Everything derived from the metadata alone (gather indices, masks, slot checks) is computed once
per step and reused by every layer: the per-layer cost is then just the gathers and the SDPA.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from local_engine.attention.metadata import AttentionMetadata
from local_engine.kernels import cpu as cpu_kernels


def _query_lens(meta: AttentionMetadata) -> list[int]:
    if meta.query_lens_cpu is not None:
        return list(meta.query_lens_cpu)
    return torch.diff(meta.query_start_loc).tolist()


def _seq_lens(meta: AttentionMetadata) -> list[int]:
    if meta.seq_lens_cpu is not None:
        return list(meta.seq_lens_cpu)
    return meta.seq_lens.tolist()


def _causal_offset_mask(q_len: int, kv_len: int, groups: int, device: torch.device) -> torch.Tensor:
    """``[groups * q_len, kv_len]`` bool: query ``j`` (at position ``kv_len - q_len + j``) sees keys <= it."""
    q_pos = torch.arange(kv_len - q_len, kv_len, device=device).unsqueeze(1)
    k_pos = torch.arange(kv_len, device=device).unsqueeze(0)
    mask = k_pos <= q_pos
    return mask.repeat(groups, 1) if groups > 1 else mask


def _attend_one(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """One sequence: ``q [n, Hq, D]`` against its context ``k, v [L, Hkv, D]`` -> ``[n, Hq, D]``."""
    n, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    groups = num_heads // num_kv_heads
    qg = (
        q.view(n, num_kv_heads, groups, head_dim)
        .permute(1, 2, 0, 3)
        .reshape(num_kv_heads, groups * n, head_dim)
    )
    # 4-D (a batch of one): 3-D inputs miss the CPU flash kernel for the much slower math path.
    out = F.scaled_dot_product_attention(
        qg.unsqueeze(0),
        k.transpose(0, 1).unsqueeze(0),
        v.transpose(0, 1).unsqueeze(0),
        attn_mask=mask,
        scale=scale,
    )[0]
    return out.view(num_kv_heads, groups, n, head_dim).permute(2, 0, 1, 3).reshape(n, num_heads, head_dim)


def attend_uncached(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, meta: AttentionMetadata, scale: float
) -> torch.Tensor:
    """Attention within the step's own tokens (no KV cache yet): every sequence is a fresh prefill."""
    out = torch.empty_like(query)
    groups = query.shape[1] // key.shape[1]
    starts = meta.query_start_loc.tolist()
    for i in range(len(starts) - 1):
        s, e = starts[i], starts[i + 1]
        if e > s:
            mask = _causal_offset_mask(e - s, e - s, groups, query.device)
            out[s:e] = _attend_one(query[s:e], key[s:e], value[s:e], mask, scale)
    return out


@dataclass
class _DecodePlan:
    tokens: torch.Tensor | None  # rows of the flattened batch holding decode tokens (None: all of them)
    blocks: torch.Tensor | None  # [S_dec * num_blocks] int64, each sequence's blocks in order
    span: int  # num_blocks * block_size: gathered positions per sequence
    mask: torch.Tensor | None  # [S_dec, 1, 1, span] additive (0 / -inf), query dtype; None: one seq
    seq_len: int  # the longest sequence (the only one when mask is None: trimmed to it instead)
    # The fused CPU kernel reads the cache through the block tables itself (no gather, no mask).
    tables: torch.Tensor | None = None  # [S_dec, width] int32
    lens: torch.Tensor | None = None  # [S_dec] int32


def _gather_blocks(cache: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """``cache[blocks]`` flattened to ``[len(blocks) * block_size, Hkv, D]``.

    ``index_select`` of whole blocks viewed as rows copies contiguous rows (KBs each); on CPU it is
    3-10x faster than advanced indexing, which goes element by element.
    """
    num_blocks, block_size, num_kv_heads, head_dim = cache.shape
    rows = cache.view(num_blocks, block_size * num_kv_heads * head_dim).index_select(0, blocks)
    return rows.view(blocks.shape[0] * block_size, num_kv_heads, head_dim)


@dataclass
class _PrefillPart:
    start: int
    q_len: int
    kv_len: int
    blocks: torch.Tensor  # [num_blocks] int64
    mask: torch.Tensor  # [groups * q_len, kv_len] bool


@dataclass
class _StepPlan:
    decode: _DecodePlan | None = None
    prefills: list[_PrefillPart] = field(default_factory=list)


class TorchAttentionBackend:
    """``AttentionBackend`` in plain torch ops."""

    def __init__(self) -> None:
        # The metadata (and slot mapping) of the step in flight, and what was derived from it.
        self._plan_key: tuple[AttentionMetadata, int, int, torch.dtype] | None = None
        self._plan = _StepPlan()
        self._slots_src: torch.Tensor | None = None
        self._slots: torch.Tensor | None = None
        self._slots_keep: torch.Tensor | None = None

    def begin_step(self) -> None:
        """Forget what was derived from the previous step's metadata (called once per forward pass).

        Metadata is recognised by identity within a step; this makes a runner that refills the same
        metadata object in place between steps safe.
        """
        self._plan_key = None
        self._slots_src = None

    def _prepare_slots(self, slot_mapping: torch.Tensor) -> None:
        if slot_mapping is self._slots_src:
            return
        slots = slot_mapping.to(torch.long)
        keep = None
        if slots.numel() and bool((slots < 0).any()):
            keep = slots >= 0
            slots = slots[keep]
        self._slots_src, self._slots, self._slots_keep = slot_mapping, slots, keep

    def write_kv(
        self,
        key: torch.Tensor,
        value: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        if k_cache.dtype == torch.bfloat16 and cpu_kernels.usable(key):
            cpu_kernels.write_kv(key, value, k_cache, v_cache, slot_mapping)
            return
        self._prepare_slots(slot_mapping)
        slots, keep = self._slots, self._slots_keep
        assert slots is not None
        if keep is not None:
            key, value = key[keep], value[keep]
        num_blocks, block_size, num_kv_heads, head_dim = k_cache.shape
        k_cache.view(num_blocks * block_size, num_kv_heads, head_dim).index_copy_(
            0, slots, key.to(k_cache.dtype)
        )
        v_cache.view(num_blocks * block_size, num_kv_heads, head_dim).index_copy_(
            0, slots, value.to(v_cache.dtype)
        )

    def _step_plan(
        self, meta: AttentionMetadata, block_size: int, groups: int, query: torch.Tensor
    ) -> _StepPlan:
        device, dtype = query.device, query.dtype
        key = (meta, block_size, groups, dtype)
        if self._plan_key is not None and self._plan_key[0] is meta and self._plan_key[1:] == key[1:]:
            return self._plan
        plan = _StepPlan()
        kernel = self._decode_kernel(query, groups)
        if meta.max_query_len == 1:
            plan.decode = self._decode_plan(
                None, meta.block_tables, meta.seq_lens, meta.max_seq_len, block_size, dtype, kernel
            )
        else:
            decode_rows: list[int] = []
            decode_tokens: list[int] = []
            start = 0
            for i, (q_len, kv_len) in enumerate(zip(_query_lens(meta), _seq_lens(meta), strict=True)):
                if q_len == 1:
                    decode_rows.append(i)
                    decode_tokens.append(start)
                elif q_len > 0:
                    num_blocks = -(-kv_len // block_size)
                    blocks = meta.block_tables[i, :num_blocks].to(torch.long)
                    mask = _causal_offset_mask(q_len, kv_len, groups, device)
                    plan.prefills.append(_PrefillPart(start, q_len, kv_len, blocks, mask))
                start += q_len
            if decode_rows:
                rows = torch.tensor(decode_rows, device=meta.block_tables.device)
                seq_lens = meta.seq_lens[rows]
                max_len = max(_seq_lens(meta)[r] for r in decode_rows)
                tokens = torch.tensor(decode_tokens, device=device)
                plan.decode = self._decode_plan(
                    tokens, meta.block_tables[rows], seq_lens, max_len, block_size, dtype, kernel
                )
        self._plan_key, self._plan = key, plan
        return plan

    @staticmethod
    def _decode_kernel(query: torch.Tensor, groups: int) -> bool:
        """Whether decode tokens go to the fused CPU kernel (bf16 on CPU, shapes it supports)."""
        num_heads, head_dim = query.shape[1], query.shape[2]
        return cpu_kernels.usable(query) and cpu_kernels.decode_supported(
            num_heads, num_heads // groups, head_dim
        )

    @staticmethod
    def _decode_plan(
        tokens: torch.Tensor | None,
        block_tables: torch.Tensor,
        seq_lens: torch.Tensor,
        max_seq_len: int,
        block_size: int,
        dtype: torch.dtype,
        kernel: bool = False,
    ) -> _DecodePlan:
        if kernel:
            return _DecodePlan(tokens, None, 0, None, max_seq_len, block_tables, seq_lens)
        num_seqs = block_tables.shape[0]
        num_blocks = -(-max_seq_len // block_size)
        blocks = block_tables[:, :num_blocks].to(torch.long).reshape(-1)
        span = num_blocks * block_size
        if num_seqs == 1:
            # One sequence: trim the gathered context to its length instead of masking.
            return _DecodePlan(tokens, blocks, span, None, max_seq_len)
        positions = torch.arange(span, device=block_tables.device)
        visible = (positions.unsqueeze(0) < seq_lens.to(block_tables.device).unsqueeze(1)).view(
            num_seqs, 1, 1, span
        )
        # An additive float mask: SDPA would otherwise convert a bool mask on every layer.
        mask = torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill_(
            ~visible, float("-inf")
        )
        return _DecodePlan(tokens, blocks, span, mask, max_seq_len)

    def attend(
        self,
        query: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        groups = query.shape[1] // k_cache.shape[2]
        plan = self._step_plan(meta, k_cache.shape[1], groups, query)
        decode = plan.decode
        if decode is not None and decode.tokens is None:
            return self._decode(query, k_cache, v_cache, decode, scale)
        out = torch.empty_like(query)
        for part in plan.prefills:
            k = _gather_blocks(k_cache, part.blocks)[: part.kv_len]
            v = _gather_blocks(v_cache, part.blocks)[: part.kv_len]
            end = part.start + part.q_len
            out[part.start : end] = _attend_one(query[part.start : end], k, v, part.mask, scale)
        if decode is not None:
            assert decode.tokens is not None
            out[decode.tokens] = self._decode(query[decode.tokens], k_cache, v_cache, decode, scale)
        return out

    @staticmethod
    def _decode(
        query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: _DecodePlan, scale: float
    ) -> torch.Tensor:
        """One query token per sequence: the fused CPU kernel reading the paged cache where the plan
        chose it, else a single batched, length-masked SDPA over gathered K/V."""
        if plan.tables is not None:
            assert plan.lens is not None
            tables, lens = plan.tables, plan.lens
            return cpu_kernels.paged_decode(query, k_cache, v_cache, tables, lens, plan.seq_len, scale)
        assert plan.blocks is not None
        num_seqs, num_heads, head_dim = query.shape
        num_kv_heads = k_cache.shape[2]
        groups = num_heads // num_kv_heads
        k = _gather_blocks(k_cache, plan.blocks)
        v = _gather_blocks(v_cache, plan.blocks)
        if plan.mask is None:  # one sequence, trimmed: [1, Hkv, G, D] against [1, Hkv, L, D], no mask
            # (4-D on purpose: 3-D inputs miss the CPU flash kernel for the much slower math path.)
            k = k[: plan.seq_len].transpose(0, 1).unsqueeze(0)
            v = v[: plan.seq_len].transpose(0, 1).unsqueeze(0)
            qg = query.view(1, num_kv_heads, groups, head_dim)
            return F.scaled_dot_product_attention(qg, k, v, scale=scale).reshape(1, num_heads, head_dim)
        k = k.view(num_seqs, plan.span, num_kv_heads, head_dim).transpose(1, 2)
        v = v.view(num_seqs, plan.span, num_kv_heads, head_dim).transpose(1, 2)
        qg = query.view(num_seqs, num_kv_heads, groups, head_dim)
        out = F.scaled_dot_product_attention(qg, k, v, attn_mask=plan.mask, scale=scale)
        return out.reshape(num_seqs, num_heads, head_dim)
