"""Fused CPU kernels for bf16 models: RMSNorm (+ residual add), rotary + KV-cache write, paged
decode attention, decode-batch matmuls and matmuls against GGUF-quantized weights
(``quant_gemm``), from the C sources here compiled on first use (see ``_build``) and called with
ctypes.

They exist because, on a CPU, the dozens of small torch ops around each layer's matmuls cost more
than the matmuls at decode batch sizes. Each function takes and returns torch tensors and checks
every shape, dtype and stride the C code relies on; ``usable(x)`` says whether a tensor may take
this path (a CPU bf16 tensor, a compiled library, ``SWITCHYARD_CPU_KERNELS`` not ``0``).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import subprocess

import torch

logger = logging.getLogger(__name__)

_P = ctypes.c_void_p
_I = ctypes.c_int64
_F = ctypes.c_float
_T = ctypes.c_int  # threads: the kernels share work out over their own pool (pool.h)
_SIGNATURES: dict[str, tuple[type | None, list[type]]] = {
    "sy_rms_norm": (None, [_P, _I, _P, _I, _P, _P, _P, _I, _I, _F, _T]),
    "sy_rope_write_kv": (None, [_P, _I, _P, _P, _P, _P, _P, _P, _I, _I, _I, _I, _T]),
    "sy_write_kv": (None, [_P, _I, _P, _I, _P, _P, _P, _I, _I]),
    "sy_paged_decode": (ctypes.c_int, [_P, _I, _P, _P, _P, _I, _P, _P, _I, _I, _I, _I, _I, _F, _T]),
    "sy_pack_vnni": (None, [_P, _I, _I, _P, _T]),
    "sy_gemm_vnni": (ctypes.c_int, [_P, _I, _I, _I, _P, _I, _P, _P, _I, _T, ctypes.c_int]),
    "sy_quant_row_bytes": (_I, [ctypes.c_int, _I]),
    "sy_quant_gemm": (
        ctypes.c_int,
        [ctypes.c_int, _P, _I, _I, _I, _P, _I, _P, _P, _I, _T, ctypes.c_int, ctypes.c_int, ctypes.c_int],
    ),
    "sy_quant_dequant_rows": (None, [ctypes.c_int, _P, _I, _P, _I, _P, ctypes.c_int]),
    "sy_quant_pack_panels": (ctypes.c_int, [ctypes.c_int, _P, _I, _I, _T]),
    "sy_quant_panels_supported": (ctypes.c_int, []),
    "sy_decoder_forward": (ctypes.c_int, [_P, _P, _I, _P, _P, _P, _I, _P, _P, _T]),
}
MAX_GROUP = 16  # query heads per KV head the decode kernel holds in registers / stack
MAX_HEAD_DIM = 256


@functools.cache
def _library() -> ctypes.CDLL | None:
    if os.environ.get("SWITCHYARD_CPU_KERNELS", "1") == "0":
        return None
    from local_engine.kernels.cpu._build import BuildError, build

    try:
        lib = ctypes.CDLL(str(build()))
    except (BuildError, OSError, subprocess.SubprocessError) as exc:
        logger.warning("CPU kernels unavailable (%s); using torch ops", exc)
        return None
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def usable(x: torch.Tensor) -> bool:
    """True when ``x`` (an activation) should go through these kernels."""
    return x.dtype == torch.bfloat16 and x.device.type == "cpu" and _library() is not None


def _lib() -> ctypes.CDLL:
    lib = _library()
    if lib is None:
        raise RuntimeError("CPU kernels are not available")
    return lib


_BF16 = torch.bfloat16


def _require_bf16(**tensors: torch.Tensor) -> None:
    """The C code reads these as bf16: anything else would be reinterpreted, not converted."""
    for name, t in tensors.items():
        if t.dtype != torch.bfloat16:
            raise ValueError(f"{name} must be bfloat16, not {t.dtype}")


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` as a contiguous tensor of ``dtype`` (itself when it already is one)."""
    return t if t.dtype == dtype and t.is_contiguous() else t.to(dtype).contiguous()


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` as 2-D rows with a unit inner stride (a copy only if it has none). Already-2-D rows
    come back untouched, without a reshape: the wrappers run some two hundred times per decode
    step, so microseconds here are a few percent of a step."""
    if x.dim() == 2 and x.stride(1) == 1:
        return x
    x = x.reshape(-1, x.shape[-1])
    return x if x.stride(-1) == 1 else x.contiguous()


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """HF's bf16 RMSNorm; with ``residual``, first ``x + residual`` (returned as the new residual)."""
    _require_bf16(x=x, weight=weight, **({} if residual is None else {"residual": residual}))
    shape, hidden = x.shape, x.shape[-1]
    if weight.numel() != hidden or not weight.is_contiguous():
        raise ValueError(f"a weight of {weight.numel()} does not fit rows of {hidden} (or is strided)")
    if residual is not None and residual.shape != shape:
        raise ValueError(f"residual {tuple(residual.shape)} does not match x {tuple(shape)}")
    x2 = _rows(x)
    rows = x2.shape[0]
    out = torch.empty((rows, hidden), dtype=_BF16)
    r2 = summed = None
    if residual is not None:
        r2 = _rows(residual)
        summed = torch.empty((rows, hidden), dtype=_BF16)
    _lib().sy_rms_norm(
        x2.data_ptr(),
        x2.stride(0),
        None if r2 is None else r2.data_ptr(),
        0 if r2 is None else r2.stride(0),
        weight.data_ptr(),
        out.data_ptr(),
        None if summed is None else summed.data_ptr(),
        rows,
        hidden,
        eps,
        torch.get_num_threads(),
    )
    if x.dim() != 2:
        out = out.view(shape)
        summed = None if summed is None else summed.view(shape)
    return out if summed is None else (out, summed)


def rope_write_kv(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    cos_sin: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
) -> torch.Tensor:
    """Rotate the q and k heads of the fused ``qkv`` rows ``[T, (Hq + 2 Hkv) * D]`` (neox style,
    ``cos_sin`` a bf16 ``[max_pos, D]`` table), write rotated K and V into the paged caches at
    ``slot_mapping`` (-1 skips) and return the rotated queries ``[T, Hq, D]``."""
    _require_bf16(qkv=qkv, cos_sin=cos_sin, k_cache=k_cache, v_cache=v_cache)
    qkv = _rows(qkv)
    tokens = qkv.shape[0]
    if qkv.shape[1] != (num_heads + 2 * num_kv_heads) * head_dim or head_dim % 2:
        raise ValueError(
            f"qkv rows of {qkv.shape[1]} do not hold {num_heads}+2x{num_kv_heads} heads of {head_dim}"
        )
    if not cos_sin.is_contiguous() or cos_sin.shape[1] != head_dim:
        raise ValueError("cos_sin must be a contiguous [max_pos, head_dim] table")
    for cache in (k_cache, v_cache):
        if cache.shape[-2:] != (num_kv_heads, head_dim) or not cache.is_contiguous():
            raise ValueError("KV caches must be contiguous [blocks, block_size, Hkv, D]")
    pos = _as(positions, torch.int64)
    slots = _as(slot_mapping, torch.int64)
    if pos.numel() != tokens or slots.numel() != tokens:
        raise ValueError("positions and slot_mapping need one entry per token")
    q = torch.empty((tokens, num_heads, head_dim), dtype=torch.bfloat16)
    _lib().sy_rope_write_kv(
        qkv.data_ptr(),
        qkv.stride(0),
        pos.data_ptr(),
        cos_sin.data_ptr(),
        slots.data_ptr(),
        q.data_ptr(),
        k_cache.data_ptr(),
        v_cache.data_ptr(),
        tokens,
        num_heads,
        num_kv_heads,
        head_dim,
        torch.get_num_threads(),
    )
    return q


def write_kv(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """``key``/``value`` ``[T, Hkv, D]`` into the paged caches at ``slot_mapping`` (-1 skips)."""
    _require_bf16(key=key, value=value, k_cache=k_cache, v_cache=v_cache)
    tokens = key.shape[0]
    width = k_cache.shape[-2] * k_cache.shape[-1]
    k2, v2 = _rows(key.reshape(tokens, -1)), _rows(value.reshape(tokens, -1))
    if k2.shape[1] != width or v2.shape[1] != width:
        raise ValueError("key/value rows do not match the cache's [Hkv, D]")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("KV caches must be contiguous")
    slots = _as(slot_mapping, torch.int64)
    _lib().sy_write_kv(
        k2.data_ptr(),
        k2.stride(0),
        v2.data_ptr(),
        v2.stride(0),
        slots.data_ptr(),
        k_cache.data_ptr(),
        v_cache.data_ptr(),
        tokens,
        width,
    )


def decode_supported(num_heads: int, num_kv_heads: int, head_dim: int) -> bool:
    """Whether ``paged_decode`` handles this head layout."""
    groups_fit = num_heads % num_kv_heads == 0 and num_heads // num_kv_heads <= MAX_GROUP
    return groups_fit and head_dim <= MAX_HEAD_DIM


def paged_decode(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    max_seq_len: int,
    scale: float,
) -> torch.Tensor:
    """One query token per sequence (``query [S, Hq, D]``) against its paged context of
    ``seq_lens[s]`` (at most ``max_seq_len``) tokens through ``block_tables[s]``; returns
    ``[S, Hq, D]`` bf16."""
    _require_bf16(query=query, k_cache=k_cache, v_cache=v_cache)
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()) or k_cache.shape != v_cache.shape:
        raise ValueError("KV caches must be contiguous and of one shape")
    seqs, num_heads, head_dim = query.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    if not decode_supported(num_heads, num_kv_heads, head_dim):
        raise ValueError(f"{num_heads} heads over {num_kv_heads} KV heads of {head_dim}: beyond the kernel")
    q = query if query.stride(2) == 1 and query.stride(1) == head_dim else query.contiguous()
    tables = _as(block_tables, torch.int32)
    lens = _as(seq_lens, torch.int32)
    if tables.shape[0] != seqs or lens.numel() != seqs:
        raise ValueError("block_tables and seq_lens need one row per sequence")
    if max_seq_len > tables.shape[1] * block_size:  # the kernel trusts the tables: no reads past them
        raise ValueError(f"{max_seq_len} tokens overrun block tables of {tables.shape[1]} blocks")
    out = torch.empty((seqs, num_heads, head_dim), dtype=torch.bfloat16)
    rc = _lib().sy_paged_decode(
        q.data_ptr(),
        q.stride(0),
        k_cache.data_ptr(),
        v_cache.data_ptr(),
        tables.data_ptr(),
        tables.shape[1],
        lens.data_ptr(),
        out.data_ptr(),
        seqs,
        num_heads,
        num_kv_heads,
        head_dim,
        block_size,
        scale,
        torch.get_num_threads(),
    )
    if rc != 0:
        raise MemoryError("paged_decode: could not allocate its score buffer")
    return out


PANEL = 64  # output features per packed panel (gemm.c)


@functools.cache
def gemm_available() -> bool:
    """Whether ``gemm`` can run here (a library built with AVX-512); probed with an empty call."""
    lib = _library()
    return lib is not None and lib.sy_gemm_vnni(None, 0, 2, 2, None, 0, None, None, 0, 1, 0) == 0


def gated_order(n: int) -> torch.Tensor:
    """The feature order ``pack_vnni(..., gated=True)`` packs a ``[gate; up]`` weight of ``n`` rows
    in: each 64-feature panel holds 32 gate features, then the same 32 up features."""
    half = n // 2
    gate = torch.arange(half).view(-1, PANEL // 2)
    return torch.cat([gate, gate + half], dim=1).reshape(-1)


def pack_vnni(weight: torch.Tensor, gated: bool = False) -> torch.Tensor | None:
    """A bf16 ``weight [N, K]`` repacked for ``gemm``: panels of 64 output features, each pair of
    inputs holding the 64 features' two weights side by side (zero rows pad N to a panel). With
    ``gated`` (a gated MLP's ``[gate; up]`` projection, ``N % 64 == 0``) in ``gated_order``, for
    ``gemm(..., silu_mul=True)``. None where the kernel does not apply (``gemm_available()`` is
    false, odd ``K``, not a 2-D CPU bf16 tensor)."""
    if (
        weight.dim() != 2
        or weight.dtype != torch.bfloat16
        or weight.device.type != "cpu"
        or weight.shape[1] % 2
        or (gated and weight.shape[0] % PANEL)
        or not gemm_available()
    ):
        return None
    n, k = weight.shape
    w = weight.detach()
    w = (w[gated_order(n)] if gated else w).contiguous()
    packed = torch.empty((-(-n // PANEL), PANEL * k), dtype=torch.bfloat16)
    _lib().sy_pack_vnni(w.data_ptr(), n, k, packed.data_ptr(), torch.get_num_threads())
    return packed


def gemm(
    x: torch.Tensor,
    packed: torch.Tensor,
    n: int,
    bias_f32: torch.Tensor | None = None,
    threads: int = 0,
    silu_mul: bool = False,
) -> torch.Tensor | None:
    """``x @ W.T + bias`` with ``packed = pack_vnni(W)`` (``W [n, K]``): fp32 accumulation, one
    rounding to bf16. Meant for a few rows (memory-bound decode batches). ``threads`` 1 keeps it
    on the calling thread, 0 uses torch's thread count (over the kernels' own pool). With
    ``silu_mul`` (``packed`` from ``pack_vnni(W, gated=True)``, ``bias_f32`` in ``gated_order``)
    the result is
    ``silu(gate) * up``, ``n / 2`` wide, rounded where Hugging Face's bf16 MLP rounds. None where
    the build has no AVX-512."""
    _require_bf16(x=x, packed=packed)
    k = x.shape[-1]
    if packed.shape != (-(-n // PANEL), PANEL * k):
        raise ValueError(f"packed weight {tuple(packed.shape)} does not fit n={n}, k={k}")
    if bias_f32 is not None and (
        bias_f32.dtype != torch.float32 or bias_f32.numel() != n or not bias_f32.is_contiguous()
    ):
        raise ValueError(f"bias must be {n} contiguous fp32 values")
    if silu_mul and n % PANEL:
        raise ValueError(f"a gated projection needs a multiple of {PANEL} features, not {n}")
    width = n // 2 if silu_mul else n
    x2 = _rows(x)
    out = torch.empty((x2.shape[0], width), dtype=_BF16)
    rc = _lib().sy_gemm_vnni(
        x2.data_ptr(),
        x2.shape[0],
        x2.stride(0),
        k,
        packed.data_ptr(),
        n,
        None if bias_f32 is None else bias_f32.data_ptr(),
        out.data_ptr(),
        width,
        threads or torch.get_num_threads(),
        int(silu_mul),
    )
    if rc != 0:
        return None
    return out if x.dim() == 2 else out.view(*x.shape[:-1], width)


# GGML type ids the quantized matmul reads as stored (quant.c).
QUANT_TYPES = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 8, "Q4_K": 12, "Q6_K": 14}


def quant_row_bytes(qtype: int, k: int) -> int:
    """Bytes of one weight row of ``k`` values in GGML type ``qtype``; -1 if unsupported or ``k``
    is not a whole number of blocks."""
    return int(_lib().sy_quant_row_bytes(qtype, k))


def _check_quant(weight: torch.Tensor, qtype: int, k: int) -> int:
    row_bytes = quant_row_bytes(qtype, k)
    if row_bytes < 0:
        raise ValueError(f"GGML type {qtype} with rows of {k} values is not supported")
    if weight.dtype != torch.uint8 or weight.dim() != 2 or weight.shape[1] != row_bytes:
        raise ValueError(
            f"a quantized weight must be uint8 [rows, {row_bytes}], not {weight.dtype} {tuple(weight.shape)}"
        )
    if not weight.is_contiguous():
        raise ValueError("a quantized weight must be contiguous")
    return row_bytes


def pack_panels(weight: torch.Tensor, qtype: int, k: int) -> bool:
    """Rearrange a GGUF tensor ``weight`` (uint8 ``[n, row bytes]``, rows of ``k`` values) into
    quant.c's panel layout, in place (the same bytes, 16 rows' blocks interleaved), for the faster
    ``quant_gemm`` path. False, and ``weight`` untouched, where that layout does not apply (a
    format other than Q4_0 / Q4_1 / Q8_0, ``n`` not a multiple of 16, a build without
    AVX512-VNNI)."""
    _check_quant(weight, qtype, k)
    rc = _lib().sy_quant_pack_panels(qtype, weight.data_ptr(), weight.shape[0], k, torch.get_num_threads())
    if rc == -2:
        raise MemoryError("pack_panels: could not allocate a panel's scratch")
    return rc == 0


def quant_gemm(
    x: torch.Tensor,
    weight: torch.Tensor,
    qtype: int,
    bias_f32: torch.Tensor | None = None,
    silu_mul: bool = False,
    panels: bool = False,
    out_dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """``x @ W.T + bias`` (bf16 in, ``out_dtype`` bf16 or float32 out) with ``W`` the GGUF blocks
    ``weight`` (uint8 ``[n, row bytes]``, in the panel layout where ``panels``) of GGML type
    ``qtype``: activations quantized to int8 per 32 values, integer dot products, fp32 sums. With
    ``silu_mul`` (``W`` a gated MLP's gate rows, then its up rows; bf16 out only) the result is
    ``silu(gate) * up``, ``n / 2`` wide."""
    _require_bf16(x=x)
    if out_dtype not in (torch.bfloat16, torch.float32) or (silu_mul and out_dtype != torch.bfloat16):
        raise ValueError(f"quant_gemm writes bf16 (or float32 without silu_mul), not {out_dtype}")
    k = x.shape[-1]
    _check_quant(weight, qtype, k)
    n = weight.shape[0]
    if bias_f32 is not None and (
        bias_f32.dtype != torch.float32 or bias_f32.numel() != n or not bias_f32.is_contiguous()
    ):
        raise ValueError(f"bias must be {n} contiguous fp32 values")
    if silu_mul and n % 2:
        raise ValueError(f"a gated projection needs an even number of rows, not {n}")
    width = n // 2 if silu_mul else n
    x2 = _rows(x)
    out = torch.empty((x2.shape[0], width), dtype=out_dtype)
    rc = _lib().sy_quant_gemm(
        qtype,
        x2.data_ptr(),
        x2.shape[0],
        x2.stride(0),
        k,
        weight.data_ptr(),
        n,
        None if bias_f32 is None else bias_f32.data_ptr(),
        out.data_ptr(),
        width,
        torch.get_num_threads(),
        int(silu_mul),
        int(panels),
        int(out_dtype == torch.float32),
    )
    if rc == -1:
        raise ValueError(f"this build cannot run a panel-layout weight of {n} rows")
    if rc != 0:
        raise MemoryError("quant_gemm: could not allocate its activation scratch")
    return out if x.dim() == 2 else out.view(*x.shape[:-1], width)


def quant_rows(
    weight: torch.Tensor, qtype: int, k: int, index: torch.Tensor, panels: bool = False
) -> torch.Tensor:
    """Rows ``index`` of a GGUF-quantized ``[rows, k]`` weight, dequantized to bf16 (embedding
    lookups: only the rows asked for are ever widened)."""
    _check_quant(weight, qtype, k)
    idx = _as(index.reshape(-1), torch.int64)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= weight.shape[0]):
        raise IndexError(f"row index out of range for a table of {weight.shape[0]} rows")
    out = torch.empty((idx.numel(), k), dtype=_BF16)
    lib = _lib()
    lib.sy_quant_dequant_rows(
        qtype, weight.data_ptr(), k, idx.data_ptr(), idx.numel(), out.data_ptr(), int(panels)
    )
    return out.view(*index.shape, k)
