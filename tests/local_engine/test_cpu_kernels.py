"""The fused CPU kernels (local_engine/kernels/cpu) against the torch ops they replace.

Reference formulas are Hugging Face's bf16 Llama: RMSNorm and rotary must round exactly where HF
rounds; decode attention must match fp32 attention to bf16 precision.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from local_engine import LLM, EngineConfig, SamplingParams
from local_engine.kernels import cpu as cpu_kernels
from local_engine.layers.rotary import get_rope
from tests.support.engine_models import make_hf_model

pytestmark = pytest.mark.skipif(
    cpu_kernels._library() is None, reason="no C compiler here: the engine runs the torch path"
)
BF16 = torch.bfloat16


def _hf_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    variance = x.float().pow(2).mean(-1, keepdim=True)
    return weight * (x.float() * torch.rsqrt(variance + eps)).to(BF16)


@pytest.mark.parametrize("rows", [1, 5, 40])
def test_rms_norm_matches_hf_rounding(rows: int) -> None:
    torch.manual_seed(rows)
    hidden = 576
    x = (torch.randn(rows, hidden) * 3).to(BF16)
    residual = (torch.randn(rows, hidden) * 5).to(BF16)
    weight = (torch.rand(hidden) + 0.5).to(BF16)
    out = cpu_kernels.rms_norm(x, weight, 1e-5)
    assert isinstance(out, torch.Tensor)
    assert torch.equal(out, _hf_rms_norm(x, weight, 1e-5))
    normed, summed = cpu_kernels.rms_norm(x, weight, 1e-5, residual)
    assert torch.equal(summed, x + residual)  # HF adds the residual in bf16
    want = _hf_rms_norm(x + residual, weight, 1e-5)
    # Only the fp32 sum of squares may differ in its last bit (summation order): at most one bf16
    # step, in a handful of elements.
    diff = (normed.float() - want.float()).abs()
    assert (diff > 0).float().mean() < 0.01
    assert torch.all(diff <= want.float().abs() * 2**-7 + 1e-6)


def _assert_fp32_accumulation_rounded_once(got: torch.Tensor, want: torch.Tensor) -> None:
    diff = (got.float() - want.float()).abs()
    assert (diff > 0).float().mean() < 0.02  # summation order only: a rare last-bit difference
    assert torch.all(diff <= want.float().abs() * 2**-7 + 1e-6)


@pytest.mark.parametrize("rows,bias", [(1, False), (5, True), (6, False), (7, True), (16, False)])
def test_gemm_matches_fp32_accumulation_rounded_once(rows: int, bias: bool) -> None:
    torch.manual_seed(rows)
    weight = torch.randn(100, 96).to(BF16)  # 100 outputs: one full panel of 64 and a partial one
    wide = torch.randn(rows, 128).to(BF16)
    x = wide[:, 16:112]  # rows with a stride: the kernel must not assume contiguous rows
    b = torch.randn(100) if bias else None
    packed = cpu_kernels.pack_vnni(weight)
    assert packed is not None
    got = cpu_kernels.gemm(x, packed, 100, b)
    if got is None:
        pytest.skip("this build has no AVX-512 path")
    assert got.shape == (rows, 100) and got.dtype == BF16
    _assert_fp32_accumulation_rounded_once(got, F.linear(x.float(), weight.float(), b).to(BF16))


def test_gemm_without_bf16_dot_product_instructions_computes_the_same() -> None:
    """The FMA path for CPUs without AVX512-BF16, built here with that extension switched off."""
    import ctypes

    from local_engine.kernels.cpu import _build

    try:
        lib = ctypes.CDLL(str(_build.build(("-mno-avx512bf16",))))
    except _build.BuildError as exc:
        pytest.skip(f"compiler rejected the variant: {exc}")
    for name in ("sy_pack_vnni", "sy_gemm_vnni"):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = cpu_kernels._SIGNATURES[name]
    torch.manual_seed(3)
    weight, x, b = torch.randn(130, 64).to(BF16), torch.randn(9, 64).to(BF16), torch.randn(130)
    packed = torch.empty((3, 64 * 64), dtype=BF16)
    lib.sy_pack_vnni(weight.data_ptr(), 130, 64, packed.data_ptr(), 2)
    assert torch.equal(packed, cpu_kernels.pack_vnni(weight))
    out = torch.empty((9, 130), dtype=BF16)
    if lib.sy_gemm_vnni(
        x.data_ptr(), 9, 64, 64, packed.data_ptr(), 130, b.data_ptr(), out.data_ptr(), 130, 2, 0
    ):
        pytest.skip("this build has no AVX-512 path")
    _assert_fp32_accumulation_rounded_once(out, F.linear(x.float(), weight.float(), b).to(BF16))


@pytest.mark.parametrize("rows,bias", [(1, False), (11, True)])
def test_gemm_fused_silu_matches_hf_gated_mlp(rows: int, bias: bool) -> None:
    """HF's bf16 MLP rounds gate and up to bf16, silu(gate) to bf16, then their product."""
    torch.manual_seed(rows)
    inter, hidden = 192, 96
    weight = (torch.randn(2 * inter, hidden) * 0.3).to(BF16)  # [gate; up] as MergedColumnParallelLinear
    x = torch.randn(rows, hidden).to(BF16)
    b = torch.randn(2 * inter) if bias else None
    packed = cpu_kernels.pack_vnni(weight, gated=True)
    assert packed is not None
    order = cpu_kernels.gated_order(2 * inter)
    assert sorted(order.tolist()) == list(range(2 * inter)) and order[32] == inter  # 32 gate, then up
    got = cpu_kernels.gemm(x, packed, 2 * inter, None if b is None else b[order].contiguous(), silu_mul=True)
    if got is None:
        pytest.skip("this build has no AVX-512 path")
    gate_up = F.linear(x.float(), weight.float(), b).to(BF16)
    want = F.silu(gate_up[:, :inter]) * gate_up[:, inter:]
    assert got.shape == want.shape
    diff = (got.float() - want.float()).abs()
    assert (diff > 0).float().mean() < 0.05  # a last-bit difference in gate or up, now and then
    assert torch.all(diff <= want.float().abs() * 2**-6 + 1e-6)
    with pytest.raises(ValueError, match="multiple of 64"):
        cpu_kernels.gemm(x, cpu_kernels.pack_vnni(weight[:100]), 100, silu_mul=True)


def test_pool_gives_the_same_bits_under_concurrent_callers_and_after_fork() -> None:
    """The kernels' own thread pool (pool.c): every chunk is computed by exactly one thread with
    the same arithmetic, so results are bitwise those of a single-threaded call, whoever runs
    them; callers on several threads at once (one gets the pool, the others run alone) and a
    forked child (which has no workers until it asks) must not change that."""
    import os
    import threading

    torch.manual_seed(5)
    weight = torch.randn(1000, 128).to(BF16)
    packed = cpu_kernels.pack_vnni(weight)
    assert packed is not None
    inputs = [torch.randn(rows, 128).to(BF16) for rows in (1, 2, 7, 16, 3)]
    want = [cpu_kernels.gemm(x, packed, 1000, threads=1) for x in inputs]
    if want[0] is None:
        pytest.skip("this build has no AVX-512 path")
    failures: list[int] = []

    def hammer(seed: int) -> None:
        for i in range(300):
            k = (seed + i) % len(inputs)
            if not torch.equal(cpu_kernels.gemm(inputs[k], packed, 1000, threads=2), want[k]):
                failures.append(k)

    threads = [threading.Thread(target=hammer, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 only if the pool still works and agrees
        ok = all(
            torch.equal(cpu_kernels.gemm(x, packed, 1000, threads=2), w)
            for x, w in zip(inputs, want, strict=True)
        )
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_gemm_refuses_what_it_would_misread() -> None:
    assert cpu_kernels.pack_vnni(torch.randn(8, 41).to(BF16)) is None  # odd K: no input pairs
    assert cpu_kernels.pack_vnni(torch.randn(8, 40)) is None  # fp32
    packed = cpu_kernels.pack_vnni(torch.randn(8, 40).to(BF16))
    assert packed is not None
    with pytest.raises(ValueError, match="does not fit"):
        cpu_kernels.gemm(torch.randn(2, 48).to(BF16), packed, 8)
    with pytest.raises(ValueError, match="bfloat16"):
        cpu_kernels.gemm(torch.randn(2, 40), packed, 8)
    with pytest.raises(ValueError, match="fp32"):
        cpu_kernels.gemm(torch.randn(2, 40).to(BF16), packed, 8, torch.randn(8).to(BF16))


def test_rope_and_cache_write_match_torch_rotary() -> None:
    torch.manual_seed(1)
    tokens, hq, hkv, d, block = 23, 9, 3, 64, 16
    rope = get_rope(d, 4096, 100000.0)
    qkv = (torch.randn(tokens, (hq + 2 * hkv) * d) * 2).to(BF16)
    positions = torch.randint(0, 4000, (tokens,))
    k_cache = torch.zeros(6, block, hkv, d, dtype=BF16)
    v_cache = torch.zeros_like(k_cache)
    slots = torch.randperm(6 * block)[:tokens]
    slots[3] = -1  # a padded token: rotated into q, never written
    q = cpu_kernels.rope_write_kv(
        qkv, positions, rope.table(BF16, torch.device("cpu")), slots, k_cache, v_cache, hq, hkv, d
    )
    heads = qkv.view(tokens, hq + 2 * hkv, d)
    rope.begin_step()
    rotated = rope.apply(positions, heads[:, : hq + hkv])
    assert torch.equal(q, rotated[:, :hq])
    flat_k, flat_v = k_cache.view(-1, hkv, d), v_cache.view(-1, hkv, d)
    keep = slots >= 0
    assert torch.equal(flat_k[slots[keep]], rotated[keep, hq:])
    assert torch.equal(flat_v[slots[keep]], heads[keep, hq + hkv :])
    written = torch.zeros(flat_k.shape[0], dtype=torch.bool)
    written[slots[keep]] = True
    assert not flat_k[~written].any() and not flat_v[~written].any()


def test_write_kv_honours_slots() -> None:
    k_cache = torch.zeros(4, 4, 2, 8, dtype=BF16)
    v_cache = torch.zeros_like(k_cache)
    key, value = torch.randn(3, 2, 8).to(BF16), torch.randn(3, 2, 8).to(BF16)
    cpu_kernels.write_kv(key, value, k_cache, v_cache, torch.tensor([5, -1, 14]))
    assert torch.equal(k_cache.view(-1, 2, 8)[5], key[0])
    assert torch.equal(v_cache.view(-1, 2, 8)[14], value[2])
    assert int((k_cache != 0).any(-1).any(-1).sum()) == 2


def _reference_decode(q, k_cache, v_cache, tables, lens, scale):
    out = []
    block = k_cache.shape[1]
    for s in range(q.shape[0]):
        n = int(lens[s])
        slots = [int(tables[s, p // block]) * block + p % block for p in range(n)]
        k = k_cache.view(-1, *k_cache.shape[2:])[slots].float()  # [n, Hkv, D]
        v = v_cache.view(-1, *v_cache.shape[2:])[slots].float()
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
        scores = torch.einsum("hd,nhd->hn", q[s].float(), k) * scale
        out.append(torch.einsum("hn,nhd->hd", scores.softmax(-1), v))
    return torch.stack(out)


@pytest.mark.parametrize("head_dim,hq,hkv", [(64, 9, 3), (40, 4, 4), (128, 8, 1)])
def test_paged_decode_matches_fp32_attention(head_dim: int, hq: int, hkv: int) -> None:
    torch.manual_seed(head_dim)
    block, num_blocks = 16, 48
    lens = torch.tensor([1, 17, 130, 64, 5], dtype=torch.int32)
    width = 9
    k_cache = torch.randn(num_blocks, block, hkv, head_dim).to(BF16)
    v_cache = torch.randn(num_blocks, block, hkv, head_dim).to(BF16)
    tables = torch.randperm(num_blocks)[: len(lens) * width].view(len(lens), width).to(torch.int32)
    q = torch.randn(len(lens), hq, head_dim).to(BF16)
    scale = 1 / math.sqrt(head_dim)
    got = cpu_kernels.paged_decode(q, k_cache, v_cache, tables, lens, int(lens.max()), scale)
    want = _reference_decode(q, k_cache, v_cache, tables, lens, scale)
    torch.testing.assert_close(got.float(), want, atol=2e-2, rtol=2e-2)


def test_paged_decode_refuses_tables_shorter_than_sequences() -> None:
    cache = torch.zeros(4, 4, 1, 16, dtype=BF16)
    with pytest.raises(ValueError, match="overrun"):
        cpu_kernels.paged_decode(
            torch.zeros(1, 1, 16, dtype=BF16),
            cache,
            cache,
            torch.zeros(1, 2, dtype=torch.int32),
            torch.tensor([9], dtype=torch.int32),
            9,
            0.25,
        )


def test_bf16_engine_variants_agree_on_the_kernel_path(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bf16 engine (decode attention, rotary and norms in the CPU kernels) gives the same greedy
    tokens with chunked prefill (decode rows mixed with prefill chunks) and with preemption as in
    plain batches."""
    monkeypatch.setenv("SWITCHYARD_CPU_F32_MATMUL", "0")  # one matmul path for every batch size
    directory: Path = tiny[0]
    prompts = [[5 + (i * 7 + j * 3) % 250 for j in range(3 + 4 * i)] for i in range(6)]
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)

    def run(**kw: object) -> list[list[int]]:
        llm = LLM(EngineConfig(model=directory, dtype="bfloat16", num_threads=1, block_size=4, **kw))  # type: ignore[arg-type]
        return [o.outputs[0].token_ids for o in llm.generate(prompts, params)]

    plain = run()
    assert run(max_num_batched_tokens=7) == plain
    assert run(kv_cache_memory_bytes=12 * 1024) == plain  # bf16 blocks of 1 KiB: forces preemption


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    directory = tmp_path_factory.mktemp("tiny-bf16")
    return directory, make_hf_model("llama", directory, seed=3)


def test_rms_norm_reads_strided_rows() -> None:
    x = torch.randn(6, 64).to(BF16)[:, :32]  # a strided view: rows of 32 with stride 64
    weight = (torch.rand(32) + 0.5).to(BF16)
    assert torch.equal(cpu_kernels.rms_norm(x, weight, 1e-6), _hf_rms_norm(x, weight, 1e-6))


def test_kernels_refuse_tensors_they_would_misread() -> None:
    """The C code reads raw bf16 memory: other dtypes and misfitting shapes are refused, not reinterpreted."""
    x = torch.randn(2, 32).to(BF16)
    with pytest.raises(ValueError, match="weight must be bfloat16"):
        cpu_kernels.rms_norm(x, torch.ones(32), 1e-6)
    with pytest.raises(ValueError, match="does not fit"):
        cpu_kernels.rms_norm(x, torch.ones(16, dtype=BF16), 1e-6)
    with pytest.raises(ValueError, match="residual"):
        cpu_kernels.rms_norm(x, torch.ones(32, dtype=BF16), 1e-6, torch.zeros(3, 32, dtype=BF16))
    cache = torch.zeros(2, 4, 1, 16, dtype=BF16)
    with pytest.raises(ValueError, match="key must be bfloat16"):
        cpu_kernels.write_kv(torch.zeros(1, 1, 16), torch.zeros(1, 1, 16), cache, cache, torch.tensor([0]))
