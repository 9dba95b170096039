"""Quantizing a model's dense weights to GGUF Q8_0 as they load (``quantization="q8_0"``).

Q8_0 is llama.cpp's: per 32 values an fp16 scale ``d = max|x| / 127`` and 32 int8 ``round(x / d)``
(34 bytes where bf16 takes 64). The blocks run on the same CPU kernels as a GGUF file's kept
quantization (``layers.quant_linear``), so a safetensors checkpoint gets about half the weight
bytes, and about half the bytes each decode step reads.

Quantization happens inside each layer's ``weight_loader``, after a model has mapped checkpoint
names onto its layers (and split fused checkpoint tensors such as Phi-3's ``qkv_proj``): every
matrix a linear layer or an embedding table loads is turned into blocks on its way in, so the
dense parameter is never written and the model holds one copy of its weights (as for GGUF).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from local_engine.kernels.cpu import QUANT_TYPES
from local_engine.layers.embedding import VocabParallelEmbedding
from local_engine.layers.linear import LinearBase
from local_engine.layers.quant_linear import QuantizedTensor

QUANTIZATIONS = ("q8_0",)
Q8_0 = QUANT_TYPES["Q8_0"]
_BLOCK = 32
_BLOCK_BYTES = 2 + _BLOCK  # fp16 scale, then 32 int8 values
# Rows quantized at a time: bounds the fp32 scratch (a 128k-row embedding table would otherwise
# widen to 1 GiB at once).
_ROWS_PER_CHUNK = 4096
_JUST_UNDER_HALF = torch.nextafter(torch.tensor(0.5), torch.tensor(0.0))


def quantize_q8_0(weight: torch.Tensor) -> QuantizedTensor:
    """``weight`` ``[rows, cols]`` (any float dtype, ``cols`` a multiple of 32) as Q8_0 blocks,
    byte for byte what llama.cpp's ``quantize_row_q8_0_ref`` (and gguf-py) write for its fp32 values."""
    if weight.dim() != 2 or weight.shape[1] % _BLOCK:
        raise ValueError(f"Q8_0 needs a matrix whose rows hold whole blocks of 32, not {tuple(weight.shape)}")
    rows, cols = weight.shape
    nblocks = cols // _BLOCK
    out = torch.empty((rows, nblocks * _BLOCK_BYTES), dtype=torch.uint8)
    blocks = out.view(rows, nblocks, _BLOCK_BYTES)
    for start in range(0, rows, _ROWS_PER_CHUNK):
        n = min(_ROWS_PER_CHUNK, rows - start)
        # A copy even of fp32 input: it is scaled in place.
        x = weight[start : start + n].to(torch.float32, copy=True).reshape(n, nblocks, _BLOCK)
        low, high = torch.aminmax(x, dim=-1, keepdim=True)
        d = torch.maximum(high.abs(), low.abs()) / 127  # abs: an all-zero block scales by +0.0
        x.mul_(torch.where(d == 0, torch.zeros_like(d), 1 / d))  # an all-zero block stays zero
        # C's roundf (half away from zero), as llama.cpp rounds: the int8 cast truncates, and the
        # largest float under 0.5 added first carries exactly the fractions >= .5 over.
        q = x.add_(torch.copysign(_JUST_UNDER_HALF, x)).to(torch.int8)
        blocks[start : start + n, :, :2] = d.half().view(torch.uint8)
        blocks[start : start + n, :, 2:] = q.view(torch.uint8)
    return QuantizedTensor(out, Q8_0, (rows, cols))


def _quantizing_loader(
    loader: Callable[..., None], param: nn.Parameter, loaded: object, *shard: object
) -> None:
    # Only whole rows are blocked: a GGUF file's kept blocks pass as they are, and so do a
    # row-parallel shard's rows (a block row cannot be split along its input dimension) and
    # tensors of the wrong shape (for the layer to name).
    if isinstance(loaded, torch.Tensor) and loaded.dim() == 2 and loaded.shape[1] == param.shape[1]:
        loaded = quantize_q8_0(loaded)
    loader(param, loaded, *shard)


def quantize_on_load(model: nn.Module, quantization: str) -> None:
    """Make the weight of every linear layer and embedding table of ``model`` (built, not yet
    loaded) load as ``quantization`` blocks. A weight whose rows are not whole blocks stays in
    the model's dtype (those rows cannot be blocked)."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization: unsupported value {quantization!r} (one of {QUANTIZATIONS})")
    seen: set[int] = set()
    for module in model.modules():
        if not isinstance(module, LinearBase | VocabParallelEmbedding):
            continue
        weight = module.weight
        if id(weight) in seen or weight.shape[1] % _BLOCK:
            continue  # a tied head shares its embedding's parameter (and loader)
        seen.add(id(weight))
        weight.weight_loader = functools.partial(_quantizing_loader, weight.weight_loader)  # type: ignore[attr-defined]
