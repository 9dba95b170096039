"""``quantization="q8_0"``: a safetensors checkpoint's weight matrices quantized to GGUF Q8_0 as they
load (llama.cpp's blocks, byte for byte), one copy of about half bf16's bytes, a model that computes
what the bf16 one computes, and the setting as an engine config field, a deployment param and a
``switchyard engine serve`` flag."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import openai
import pytest
import torch

from local_engine import LLM, EngineConfig, SamplingParams
from local_engine.engine.kv_pool import packed_copies, tensor_bytes
from local_engine.kernels import cpu as cpu_kernels
from local_engine.layers.quant_linear import is_quantized
from local_engine.loader import ModelLoadError, load_model
from local_engine.loader.quantize import Q8_0, quantize_q8_0
from providers.errors import ProviderError
from providers.local.provider import engine_config
from tests.support.engine_models import PagedRunner, PagedSeq, make_hf_model
from tests.support.engine_server import engine_serve_refusal, engine_server

gguf = pytest.importorskip("gguf")
needs_kernels = pytest.mark.skipif(
    cpu_kernels._library() is None, reason="no C compiler: no quantized kernels"
)

PROMPT = list(range(3, 43))  # 40 token ids, inside every tiny model's vocabulary


def _logits(loaded, ids: list[int]) -> torch.Tensor:
    return PagedRunner(loaded.model, loaded.config).step([(PagedSeq(blocks=list(range(12))), ids)])


def _matrices(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.dim() == 2]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model_dir = tmp_path_factory.mktemp("llama")
    make_hf_model("llama", model_dir, seed=3)
    return model_dir


def test_blocks_are_llama_cpps_q8_0_byte_for_byte() -> None:
    """Against gguf-py's reference quantizer (llama.cpp's quantize_row_q8_0_ref): scales over four
    decades, an all-zero block, steps landing exactly half-way (rounded away from zero, as C's
    roundf; round-half-even would differ), the largest float under a half (rounded down), bf16 input."""
    torch.manual_seed(0)
    weight = torch.randn(48, 96) * torch.logspace(-3, 1, 48).unsqueeze(1)
    weight[5, 32:64] = 0.0
    halves = torch.arange(32) - 15.5  # -15.5 .. 15.5: every step a tie
    for row, scale in ((6, 1.0), (7, 2.0**-6)):  # max |x| = 127 * scale: d = scale, exactly
        weight[row, :32] = halves * scale
        weight[row, 32:64] = torch.linspace(-1, 1, 32) * scale
        weight[row, 0] = 127 * scale
    weight[6, 33] = torch.nextafter(torch.tensor(0.5), torch.tensor(0.0))
    original = weight.clone()
    for source in (weight, weight.bfloat16()):
        got = quantize_q8_0(source)
        want = gguf.quants.quantize(source.float().numpy(), gguf.GGMLQuantizationType.Q8_0)
        assert got.qtype == Q8_0 and got.shape == (48, 96)
        assert got.data.shape == (48, 3 * 34)
        np.testing.assert_array_equal(got.data.numpy(), want)
    assert torch.equal(weight, original)  # the checkpoint tensor is read, never scaled in place
    tie_row = got.data[6, 2:34].view(torch.int8)
    assert tie_row[1:4].tolist() == [-15, -14, -13] and tie_row[-1] == 16
    with pytest.raises(ValueError, match="whole blocks of 32"):
        quantize_q8_0(torch.ones(4, 40))


@needs_kernels
def test_safetensors_llama_holds_one_q8_0_copy_about_half_of_bf16(llama_dir: Path) -> None:
    dense = load_model(llama_dir, dtype=torch.bfloat16)
    quant = load_model(llama_dir, dtype=torch.bfloat16, quantization="q8_0")
    layer = quant.model.model.layers[0]
    for weight in (
        layer.self_attn.qkv_proj.weight,
        layer.self_attn.o_proj.weight,
        layer.mlp.gate_up_proj.weight,
        layer.mlp.down_proj.weight,
        quant.model.model.embed_tokens.weight,
        quant.model.lm_head.weight,
    ):
        assert is_quantized(weight) and weight.ggml_type == Q8_0
    # Nothing else is a matrix, and no dense copy is left: the floating-point parameters are norms.
    assert all(p.dim() == 1 for p in quant.model.parameters() if p.is_floating_point())
    # Q8_0 stores 32 values in 34 bytes, bf16 in 64: the matrices take exactly 34/64 of their bf16 bytes.
    assert tensor_bytes(_matrices(quant.model)) * 64 == tensor_bytes(_matrices(dense.model)) * 34
    ratio = tensor_bytes(quant.model.parameters()) / tensor_bytes(dense.model.parameters())
    assert 0.5 < ratio < 0.55, ratio


@needs_kernels
@pytest.mark.parametrize("kind", ["llama", "phi3", "gemma2"])
def test_q8_0_logits_stay_close_to_bf16(kind: str, tmp_path: Path) -> None:
    """Per-block int8 weights and (in the kernel) int8 activations: on these random models the
    logits keep a cosine similarity above 0.995 to bf16's, each within a quarter of the logits'
    spread, and at least 85% of the next-token argmaxes agree. Phi-3 loads fused qkv / gate_up
    checkpoint tensors (quantized after the model splits them); Gemma 2 ties its head to the
    embedding (one quantized table serves both)."""
    make_hf_model(kind, tmp_path, seed=1)
    dense = load_model(tmp_path, dtype=torch.bfloat16)
    quant = load_model(tmp_path, dtype=torch.bfloat16, quantization="q8_0")
    assert all(is_quantized(m) for m in _matrices(quant.model))
    want, got = _logits(dense, PROMPT), _logits(quant, PROMPT)
    cosine = torch.nn.functional.cosine_similarity(got, want, dim=-1)
    assert cosine.min() > 0.995, cosine.min()
    worst = (got - want).abs().max() / want.std()
    assert worst < 0.25, worst
    agree = (got.argmax(-1) == want.argmax(-1)).float().mean()
    assert agree >= 0.85, agree


@needs_kernels
def test_engine_runs_q8_0_greedy_like_bf16_and_reports_its_memory(
    llama_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Through ``LLM``: greedy continuations of 16 tokens from four prompts mostly equal bf16's
    (over 75% of positions: a near-tie may go the other way and then the texts part), and each
    start-up report counts the weight bytes actually held: Q8_0 blocks, or bf16 weights with the
    packed copies their matmuls keep."""
    settings = {
        "model": llama_dir,
        "max_num_seqs": 4,
        "max_model_len": 128,
        "num_threads": 1,
        "warmup": False,
    }
    prompts = [list(range(5 + i, 25 + 3 * i)) for i in range(4)]
    greedy = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    with caplog.at_level(logging.INFO, logger="local_engine.engine.kv_pool"):
        dense = LLM(EngineConfig(**settings))  # type: ignore[arg-type]
        quant = LLM(EngineConfig(quantization="q8_0", **settings))  # type: ignore[arg-type]
    want = [o.outputs[0].token_ids for o in dense.generate(prompts, greedy)]
    got = [o.outputs[0].token_ids for o in quant.generate(prompts, greedy)]
    same = sum(a == b for g, w in zip(got, want, strict=True) for a, b in zip(g, w, strict=True))
    assert same / (16 * len(prompts)) > 0.75, (got, want)
    dense_report, quant_report = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("memory: weights")
    ]
    quant_model = quant.engine.loaded.model
    assert not packed_copies(quant_model)  # blocks are rearranged in place, never copied
    held = tensor_bytes(quant_model.parameters()) / (1 << 20)
    assert f"weights {held:.1f} MiB (Q8_0, bfloat16)" in quant_report
    dense_model = dense.engine.loaded.model
    if torch.backends.mkldnn.is_available():
        assert packed_copies(dense_model)
    held = tensor_bytes([*dense_model.parameters(), *packed_copies(dense_model)]) / (1 << 20)
    assert f"weights {held:.1f} MiB (bfloat16)" in dense_report


def test_config_refuses_what_q8_0_cannot_run() -> None:
    assert EngineConfig(quantization="Q8_0").quantization == "q8_0"
    assert EngineConfig(quantization="q8_0", dtype="bf16").quantization == "q8_0"
    with pytest.raises(ValueError, match="quantization: unsupported value 'q4_k'"):
        EngineConfig(quantization="q4_k")
    with pytest.raises(ValueError, match="CPU only"):
        EngineConfig(quantization="q8_0", device="cuda")
    with pytest.raises(ValueError, match="bfloat16"):
        EngineConfig(quantization="q8_0", dtype="float32")
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        EngineConfig(quantization="q8_0", tensor_parallel_size=2)


def test_loader_refuses_q8_0_outside_bf16_on_the_cpu(llama_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="CPU in bfloat16"):
        load_model(llama_dir, dtype=torch.float32, quantization="q8_0")


def test_deployment_param_reaches_the_engine_config() -> None:
    assert engine_config("m", {"model_path": "/x", "quantization": "q8_0"}).quantization == "q8_0"
    assert engine_config("m", {"model_path": "/x"}).quantization is None
    with pytest.raises(ProviderError) as err:
        engine_config("m", {"model_path": "/x", "quantization": "int3"})
    assert err.value.status_code == 400 and "quantization" in err.value.message


@needs_kernels
def test_engine_serve_flag(llama_dir: Path, tmp_path: Path) -> None:
    """``switchyard engine serve --quantization q8_0`` serves the Q8_0 model and prints the start-up
    memory report; a format it does not know is refused in one line."""
    assert "quantization" in engine_serve_refusal(["--quantization", "q2_k"])
    args = ["--model", str(llama_dir), "--quantization", "q8_0"]
    args += ["--max-model-len", "128", "--num-threads", "1"]
    with engine_server(args, tmp_path / "engine.log") as server:
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0, timeout=120)
        reply = client.completions.create(
            model=llama_dir.name, prompt="Hello world", max_tokens=5, extra_body={"ignore_eos": True}
        )
        assert reply.usage is not None and reply.usage.completion_tokens == 5
    assert not server.killed, "the server did not stop on SIGTERM"
    logs = server.logs()
    assert "memory: weights" in logs and "(Q8_0, bfloat16)" in logs, logs
