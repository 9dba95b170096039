"""The CPU KV pool: reserved for the configured worst case, resident only as blocks are written,
and the start-up memory line."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from local_engine import LLM, EngineConfig, SamplingParams
from local_engine.engine.kv_pool import lazy_zeros, resident_bytes, tensor_bytes
from tests.support.engine_models import make_hf_model

MIB = 1 << 20
pytestmark = pytest.mark.skipif(resident_bytes() == 0, reason="no /proc/self/statm here")


def test_lazy_pool_is_zero_separate_and_resident_only_where_written() -> None:
    before = resident_bytes()
    shape = (1024, 16, 4, 64)  # 8 MiB each in bf16
    pool = lazy_zeros(32, shape, torch.bfloat16)  # 256 MiB reserved
    assert resident_bytes() - before < 16 * MIB
    assert all(t.shape == shape and t.dtype == torch.bfloat16 and t.is_contiguous() for t in pool)
    assert len({t.data_ptr() for t in pool}) == 32
    for t in pool:
        t[3].fill_(1.5)  # one block of each: a few pages
    assert resident_bytes() - before < 24 * MIB
    assert pool[0][3].float().mean() == 1.5 and not pool[0][2].any() and not pool[1][4].any()
    pool[7].fill_(2.0)
    assert resident_bytes() - before >= 8 * MIB  # now that tensor is resident
    assert pool[6].abs().sum() == 16 * 4 * 64 * 1.5 and pool[8][3].float().mean() == 1.5


def test_tensor_bytes_counts_shared_storage_once() -> None:
    a = torch.zeros(100, dtype=torch.float32)
    assert tensor_bytes([a, a, a[10:]]) == 400


def test_engine_reserves_its_pool_and_logs_where_memory_goes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model_dir = tmp_path / "tiny"
    make_hf_model("llama", model_dir)
    with caplog.at_level(logging.INFO, logger="local_engine.engine.kv_pool"):
        llm = LLM(
            EngineConfig(
                model=model_dir,
                dtype="bfloat16",
                kv_cache_memory_bytes=512 * MIB,
                max_num_seqs=512,
                warmup=False,
            )
        )
    runner = llm.engine.runner
    reserved = runner.num_blocks * runner.bytes_per_block
    assert reserved >= 32 * MIB  # 512 sequences at the tiny model's full context
    before = resident_bytes()
    again = runner._allocate_kv_cache(runner.num_blocks)  # the same pool once more: nothing resident
    assert len(again) == 2 and resident_bytes() - before < reserved // 8
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("memory:")]
    assert "weights" in line and "KV cache" in line and "committed as blocks are written" in line
    [out] = llm.generate([[5, 6, 7, 8]], SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))
    assert len(out.outputs[0].token_ids) == 4  # zero pages serve as a clean cache
