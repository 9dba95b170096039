"""The CPU KV pool's memory: reserved up front, committed block by block as sequences write to it,
and a start-up account of where the process's memory goes.

Why lazily: the pool is sized for the configured worst case (every sequence at full context, up
to ``kv_cache_memory_bytes``), but a server mostly holds far less. Zero-filled tensors would
commit all of it at start (1 GiB by default before this); an anonymous mapping is already zero,
and the OS backs a page only when a block in it is first written, so resident memory follows the
blocks in use. Huge pages are declined for it: with them one block's first write would commit
2 MiB of each layer's cache instead of a 4 KiB page.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import mmap
import os
from collections.abc import Iterable

import torch

from local_engine.kernels.cpu import QUANT_TYPES

logger = logging.getLogger(__name__)


def lazy_zeros(count: int, shape: tuple[int, ...], dtype: torch.dtype) -> list[torch.Tensor]:
    """``count`` zero tensors of ``shape`` in one anonymous mapping, each page-aligned and
    contiguous, none of whose pages is resident until written."""
    each = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    stride = -(-each // mmap.PAGESIZE) * mmap.PAGESIZE
    buffer = mmap.mmap(-1, max(count * stride, mmap.PAGESIZE))
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        buffer.madvise(mmap.MADV_NOHUGEPAGE)
    flat = torch.frombuffer(buffer, dtype=torch.uint8)  # holds the mapping alive
    return [flat[i * stride : i * stride + each].view(dtype).view(shape) for i in range(count)]


def resident_bytes() -> int:
    """This process's resident set size (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes held by ``tensors``, each storage counted once (tied weights share one)."""
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if t.is_mkldnn:  # a oneDNN-reordered copy (linear.PackedWeight) has no storage to share
            total += t.numel() * t.element_size()
            continue
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def packed_copies(model: torch.nn.Module) -> list[torch.Tensor]:
    """The reordered copies of weights that CPU bf16 layers keep for their matmuls
    (``linear.PackedWeight``): weight bytes too, though no parameter holds them."""
    from local_engine.layers.linear import PackedWeight

    copies: list[torch.Tensor] = []
    for module in model.modules():
        packed = getattr(module, "_packed", None)
        if isinstance(packed, PackedWeight):
            fields = (getattr(packed, f.name) for f in dataclasses.fields(packed))
            copies.extend(t for t in fields if isinstance(t, torch.Tensor))
    return copies


def log_memory(model: torch.nn.Module, kv_reserved: int, num_blocks: int, lazy: bool) -> None:
    """One line at start: weights (with any packed copies), KV pool, and the rest of the process
    (runtime, buffers)."""
    weights = tensor_bytes([*model.parameters(), *model.buffers(), *packed_copies(model)])
    names = {qtype: name for name, qtype in QUANT_TYPES.items()}
    formats = sorted(
        {
            names.get(getattr(p, "ggml_type", -1), str(p.dtype).removeprefix("torch."))
            for p in model.parameters()
        }
    )
    rss = resident_bytes()
    committed = 0 if lazy else kv_reserved
    mib = 1 << 20
    logger.info(
        "memory: weights %.1f MiB (%s); KV cache %.1f MiB for %d blocks (%s); process RSS %.1f MiB, of it "
        "%.1f MiB runtime and buffers",
        weights / mib,
        ", ".join(formats),
        kv_reserved / mib,
        num_blocks,
        "reserved, committed as blocks are written" if lazy else "allocated",
        rss / mib,
        max(0, rss - weights - committed) / mib,
    )
