"""The attention layer: write this step's K/V into the paged cache, then attend through it."""

from __future__ import annotations

import torch
from torch import nn

from local_engine.attention.metadata import AttentionMetadata
from local_engine.attention.select import get_backend
from local_engine.kernels import cpu as cpu_kernels
from local_engine.layers.rotary import RotaryEmbedding


class Attention(nn.Module):
    """Paged multi-head attention with grouped KV heads (GQA).

    ``forward(q [T, Hq*D], k [T, Hkv*D], v [T, Hkv*D], kv_cache, meta) -> [T, Hq*D]``. An empty
    ``kv_cache`` (numel 0, e.g. a memory-profiling pass before the cache exists) attends within the
    step's own tokens, treating every sequence as a fresh prefill.
    """

    def __init__(
        self,
        num_heads: int,
        head_dim: int,
        scale: float,
        num_kv_heads: int,
        sliding_window: int | None = None,
        logit_softcap: float | None = None,
    ) -> None:
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(f"{num_heads} query heads do not group over {num_kv_heads} KV heads")
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scale = scale
        self.num_kv_heads = num_kv_heads
        # Gemma / Phi-3: a layer seeing only the last ``sliding_window`` keys, scores soft-capped.
        self.sliding_window = sliding_window
        self.logit_softcap = logit_softcap

    def windowed(self, meta: AttentionMetadata) -> bool:
        """Whether this step needs ``attention.windowed`` (soft-capping, or a window shorter than a
        sequence); the backends and the fused CPU kernels serve everything else."""
        if self.logit_softcap is not None:
            return True
        return self.sliding_window is not None and meta.max_seq_len > self.sliding_window

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        num_tokens = q.shape[0]
        q = q.reshape(num_tokens, self.num_heads, self.head_dim)
        k = k.reshape(num_tokens, self.num_kv_heads, self.head_dim)
        v = v.reshape(num_tokens, self.num_kv_heads, self.head_dim)
        k_cache, v_cache = kv_cache
        backend = get_backend(q.device)
        if self.windowed(meta):
            from local_engine.attention import windowed

            window, cap = self.sliding_window, self.logit_softcap
            if k_cache.numel() == 0:
                out = windowed.attend_windowed_uncached(q, k, v, meta, self.scale, window, cap)
            else:
                backend.write_kv(k, v, k_cache, v_cache, meta.slot_mapping)
                out = windowed.attend_windowed(q, k_cache, v_cache, meta, self.scale, window, cap)
        elif k_cache.numel() == 0:
            from local_engine.attention.torch_backend import attend_uncached

            out = attend_uncached(q, k, v, meta, self.scale)
        else:
            backend.write_kv(k, v, k_cache, v_cache, meta.slot_mapping)
            out = backend.attend(q, k_cache, v_cache, meta, self.scale)
        return out.reshape(num_tokens, self.num_heads * self.head_dim)

    def rotary_fusable(
        self, qkv: torch.Tensor, rotary: RotaryEmbedding, kv_cache: tuple[torch.Tensor, torch.Tensor]
    ) -> bool:
        """Whether ``forward_qkv`` can rotate, cache and attend with the fused CPU kernel."""
        return (
            rotary.rotary_dim == self.head_dim
            and kv_cache[0].numel() > 0
            and kv_cache[0].dtype == torch.bfloat16
            and cpu_kernels.usable(qkv)
        )

    def forward_qkv(
        self,
        qkv: torch.Tensor,
        positions: torch.Tensor,
        rotary: RotaryEmbedding,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        """``forward`` from the fused projection ``[T, (Hq + 2 Hkv) * D]`` with RoPE applied in the
        same CPU pass that writes K/V into the cache (see ``rotary_fusable``)."""
        k_cache, v_cache = kv_cache
        q = cpu_kernels.rope_write_kv(
            qkv,
            positions,
            rotary.table(qkv.dtype, qkv.device),
            meta.slot_mapping,
            k_cache,
            v_cache,
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
        )
        out = get_backend(q.device).attend(q, k_cache, v_cache, meta, self.scale)
        return out.reshape(q.shape[0], self.num_heads * self.head_dim)
