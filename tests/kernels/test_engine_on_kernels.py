"""The whole engine (scheduler, model runner, sampler) on the Triton attention backend must produce
the same greedy tokens as on the torch backend. On a GPU the Triton engine also replays CUDA graphs
for its decode steps (the reference runs with ``enforce_eager``), so this checks the model runner's
graph integration end to end; on CPU the kernels run in Triton's interpreter."""

from __future__ import annotations

import pytest
import tokenizers
import torch

pytest.importorskip("triton", reason="triton is not installed")

from local_engine.attention import select
from local_engine.attention.torch_backend import TorchAttentionBackend
from local_engine.attention.triton_backend import TritonAttentionBackend
from local_engine.config import EngineConfig
from local_engine.engine.llm_engine import LLMEngine
from local_engine.loader import LoadedModel
from local_engine.models.config import ModelConfig
from local_engine.models.llama import LlamaForCausalLM
from local_engine.sampling_params import SamplingParams
from local_engine.tokenizer import Tokenizer

VOCAB = 211


def _loaded(device: str) -> LoadedModel:
    config = ModelConfig(
        name="tiny", architecture="LlamaForCausalLM", num_hidden_layers=2, hidden_size=64,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=VOCAB,
        max_position_embeddings=256, intermediate_size=96, tie_word_embeddings=True, eos_token_ids=(2,),
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(torch.ones_like(param) if "norm" in name else torch.randn_like(param) * 0.2)
    backend = tokenizers.Tokenizer(
        tokenizers.models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0")
    )
    backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    return LoadedModel(model=model.to(device).eval(), tokenizer=Tokenizer(backend=backend), config=config)


def _greedy_tokens(device: str, eager: bool) -> list[list[int]]:
    config = EngineConfig(
        device=device, dtype="float32", block_size=4, max_num_seqs=4, max_num_batched_tokens=16,
        max_model_len=64, kv_cache_memory_bytes=1 << 20, enforce_eager=eager, enable_prefix_caching=False,
        warmup=False,
    )  # fmt: skip
    engine = LLMEngine(config, _loaded(device))
    if device == "cuda":
        assert (engine.runner.decode_graphs is None) == eager
    # Prompts longer than the token budget force chunked prefill mixed with other sequences' decodes.
    prompts = [[5, 7, 11], [13] * 21, [17, 19], [23, 29, 31, 37, 41, 43]]
    params = SamplingParams(temperature=0.0, max_tokens=7, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{i}", prompt, params)
    done: dict[str, list[int]] = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out.outputs[0].token_ids
    return [done[f"r{i}"] for i in range(len(prompts))]


@torch.inference_mode()
def test_engine_greedy_tokens_match_torch_backend(device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(select._backends, device, TorchAttentionBackend())
    expected = _greedy_tokens(device, eager=True)
    monkeypatch.setitem(select._backends, device, TritonAttentionBackend())
    got = _greedy_tokens(device, eager=False)
    assert all(len(tokens) == 7 for tokens in expected)
    assert got == expected
