"""The decode-graph runner's static buffers and padding, run eagerly (CUDA graphs need a GPU: on a
GPU host the same test captures and replays real graphs).

A tiny random Llama runs through the Triton attention backend; decode steps through the runner
(padded to a bucket) must give the same hidden states as the model run directly on the exact batch.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed")

from local_engine.attention import select
from local_engine.attention.metadata import AttentionMetadata
from local_engine.attention.triton_backend import TritonAttentionBackend
from local_engine.engine.cuda_graph import DecodeGraphRunner
from local_engine.models.config import ModelConfig
from local_engine.models.llama import LlamaForCausalLM

BLOCK = 4


def _tiny_model(device: str) -> LlamaForCausalLM:
    config = ModelConfig(
        name="tiny", architecture="LlamaForCausalLM", num_hidden_layers=2, hidden_size=64,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=97,
        max_position_embeddings=128, intermediate_size=96, tie_word_embeddings=True,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(torch.ones_like(param) if "norm" in name else torch.randn_like(param) * 0.1)
    return model.to(device).eval()


def _meta(q_lens: list[int], s_lens: list[int], tables: torch.Tensor, device: str) -> AttentionMetadata:
    slots = []
    for i, (q, s) in enumerate(zip(q_lens, s_lens, strict=True)):
        slots += [int(tables[i, p // BLOCK]) * BLOCK + p % BLOCK for p in range(s - q, s)]
    starts = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    return AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        query_start_loc=starts.to(device),
        seq_lens=torch.tensor(s_lens, dtype=torch.int32, device=device),
        block_tables=tables.to(device),
        max_query_len=max(q_lens),
        max_seq_len=max(s_lens),
        block_size=BLOCK,
        query_lens_cpu=list(q_lens),
        seq_lens_cpu=list(s_lens),
    )


@pytest.fixture
def triton_everywhere(monkeypatch: pytest.MonkeyPatch, device: str) -> None:
    """Route the model's attention through the Triton backend on this device (CPU: the interpreter)."""
    monkeypatch.setitem(select._backends, torch.device(device).type, TritonAttentionBackend())


@torch.inference_mode()
def test_runner_steps_match_direct_forward(device: str, triton_everywhere: None) -> None:
    model = _tiny_model(device)
    cfg = model.config
    num_blocks, width = 40, 8
    caches = [
        (
            torch.zeros(num_blocks, BLOCK, 2, 16, device=device),
            torch.zeros(num_blocks, BLOCK, 2, 16, device=device),
        )
        for _ in range(cfg.num_hidden_layers)
    ]
    tables = torch.arange(1, 1 + 5 * width, dtype=torch.int32).view(5, width) % num_blocks
    prompts = [[3, 5, 7], [11], [13, 17, 19, 23, 29], [31, 37], [41, 43, 47, 53]]
    ids = torch.tensor([t for p in prompts for t in p], device=device)
    pos = torch.tensor([i for p in prompts for i in range(len(p))], device=device)
    lens = [len(p) for p in prompts]
    model(ids, pos, caches, _meta(lens, lens, tables, device))  # prefill all five

    runner = DecodeGraphRunner(
        model=model, kv_caches=[(k.clone(), v.clone()) for k, v in caches], hidden_size=cfg.hidden_size,
        dtype=torch.float32, device=torch.device(device), block_size=BLOCK, max_blocks_per_seq=width,
        max_seq_len_bound=width * BLOCK, max_num_seqs=8, use_graphs=device == "cuda",
    )  # fmt: skip
    assert runner.buckets == (1, 2, 4, 8)
    runner.capture()
    # Steps with 5 (bucket 8), then 3 (bucket 4, rows left stale by the 5-step), then 1 sequence.
    for active in ([0, 1, 2, 3, 4], [0, 2, 4], [1]):
        tokens = torch.randint(0, cfg.vocab_size, (len(active),), device=device)
        positions = torch.tensor([lens[i] for i in active], device=device)
        for i in active:
            lens[i] += 1
        meta = _meta([1] * len(active), [lens[i] for i in active], tables[active], device)
        expected = model(tokens, positions, caches, meta)
        got = runner.run(tokens, positions, meta.slot_mapping, meta.seq_lens, meta.block_tables[:, :3])
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    # The runner's cache received the same K/V as the directly driven one.
    for (k_ref, v_ref), (k, v) in zip(caches, runner.kv_caches, strict=True):
        torch.testing.assert_close(k, k_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(v, v_ref, atol=1e-5, rtol=1e-5)


def test_bucket_choice() -> None:
    runner = DecodeGraphRunner(
        model=lambda *a: torch.empty(0), kv_caches=[], hidden_size=8, dtype=torch.float32,
        device=torch.device("cpu"), block_size=16, max_blocks_per_seq=4, max_seq_len_bound=64,
        max_num_seqs=48, use_graphs=False,
    )  # fmt: skip
    assert runner.buckets == (1, 2, 4, 8, 16, 32, 48)
    assert [runner.bucket_for(n) for n in (1, 3, 16, 17, 48, 49)] == [1, 4, 16, 32, 48, None]
