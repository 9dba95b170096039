"""GGUF weights kept in the file's quantization (``--dtype auto``): one copy of the blocks, no
widened weights, and a model that computes what the dequantized one computes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from local_engine import LLM, EngineConfig, SamplingParams
from local_engine.kernels import cpu as cpu_kernels
from local_engine.layers.quant_linear import is_quantized
from local_engine.loader import load_model
from tests.support.engine_models import PagedRunner, PagedSeq, make_hf_model, write_gguf_like_llama_cpp

gguf = pytest.importorskip("gguf")
pytestmark = pytest.mark.skipif(
    cpu_kernels._library() is None, reason="no C compiler: nothing stays quantized"
)
Q = gguf.GGMLQuantizationType


def _logits(loaded, ids: list[int]) -> torch.Tensor:
    blocks = [5, 1, 7, 2, 9, 11, 3, 8, 13, 4]  # scattered, room for 40 tokens
    return PagedRunner(loaded.model, loaded.config).step([(PagedSeq(blocks=blocks), ids)])


@pytest.fixture(scope="module")
def smollm_q():
    return load_model(None, dtype=torch.bfloat16, quantized=True)


def test_default_gguf_stays_in_its_quantization_one_copy(smollm_q) -> None:
    from local_engine.models.default import default_model_path

    model = smollm_q.model
    layer = model.model.layers[0]
    for linear in (
        layer.self_attn.qkv_proj,
        layer.self_attn.o_proj,
        layer.mlp.gate_up_proj,
        layer.mlp.down_proj,
    ):
        assert is_quantized(linear.weight) and linear.weight.ggml_type == Q.Q4_1
    embed = model.model.embed_tokens.weight
    assert is_quantized(embed) and embed.ggml_type == Q.Q8_0
    assert model.lm_head.weight is embed  # tied: the head reads the same blocks
    if cpu_kernels._lib().sy_quant_panels_supported():  # every matrix in the fast layout
        assert all(p.quant_panels for p in model.parameters() if is_quantized(p))
    # Nothing widened: the only floating-point parameters are the norms' vectors.
    assert all(p.dim() == 1 for p in model.parameters() if p.is_floating_point())
    reader = gguf.GGUFReader(str(default_model_path()))
    file_bytes = sum(int(t.n_bytes) for t in reader.tensors)
    held = sum(p.numel() * p.element_size() for p in model.parameters())
    assert held <= file_bytes * 1.01  # one copy of the file's weights (norms: fp32 in the file and here)
    assert held >= file_bytes * 0.5


def test_quantized_smollm_tracks_the_dequantized_model(smollm_q) -> None:
    dense = load_model(None, dtype=torch.bfloat16)
    ids = smollm_q.tokenizer.encode(
        smollm_q.tokenizer.apply_chat_template(
            [{"role": "user", "content": "What is the capital of France?"}]
        )
    )
    got, want = _logits(smollm_q, ids), _logits(dense, ids)
    cosine = torch.nn.functional.cosine_similarity(got, want, dim=-1)
    assert cosine.min() > 0.98, cosine.min()
    agree = (got.argmax(-1) == want.argmax(-1)).float().mean()
    assert agree >= 0.85, agree  # int8 activations move near-ties only


def test_llm_auto_dtype_answers_sensibly() -> None:
    llm = LLM(EngineConfig(model=None, max_num_seqs=2, max_model_len=256, num_threads=1, warmup=False))
    assert llm.engine.config.keep_quantized
    prompt = llm.engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}], add_generation_prompt=True
    )
    [out] = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=12))
    assert "4" in out.outputs[0].text


def test_llama_gguf_with_mixed_quantization(tmp_path: Path) -> None:
    """Q/K rows permuted by llama.cpp (restored on whole block rows), a fused group whose members
    differ (gate Q8_0, up Q4_0: dequantized, since one matmul needs one format), the rest kept."""
    model_dir = tmp_path / "llama"
    reference = make_hf_model("llama", model_dir)
    quant = {}
    for layer in range(reference.config.num_hidden_layers):
        blk = f"blk.{layer}"
        quant.update(
            {f"{blk}.attn_q.weight": Q.Q8_0, f"{blk}.attn_k.weight": Q.Q8_0, f"{blk}.attn_v.weight": Q.Q8_0}
        )
        quant.update({f"{blk}.attn_output.weight": Q.Q4_1, f"{blk}.ffn_down.weight": Q.Q4_0})
        quant.update({f"{blk}.ffn_gate.weight": Q.Q8_0, f"{blk}.ffn_up.weight": Q.Q4_0})
    path = write_gguf_like_llama_cpp(reference, model_dir, tmp_path / "mixed.gguf", quant=quant)
    kept = load_model(path, dtype=torch.bfloat16, quantized=True)
    widened = load_model(path, dtype=torch.bfloat16)
    layer = kept.model.model.layers[0]
    assert layer.self_attn.qkv_proj.weight.ggml_type == Q.Q8_0
    assert layer.self_attn.o_proj.weight.ggml_type == Q.Q4_1
    assert layer.mlp.down_proj.weight.ggml_type == Q.Q4_0
    assert layer.mlp.gate_up_proj.weight.dtype == torch.bfloat16  # mixed group: dequantized
    assert not any(is_quantized(p) for p in widened.model.parameters())
    torch.manual_seed(0)
    ids = torch.randint(3, kept.config.vocab_size, (10,)).tolist()
    got, want = _logits(kept, ids), _logits(widened, ids)
    assert torch.nn.functional.cosine_similarity(got, want, dim=-1).min() > 0.99


def test_engine_dtype_spellings() -> None:
    assert EngineConfig(dtype="AUTO").keep_quantized
    assert not EngineConfig(dtype="bf16").keep_quantized
    with pytest.raises(ValueError, match="auto or one of"):
        EngineConfig(dtype="int3")


@pytest.mark.parametrize("inter,fused", [(32, True), (24, False)])
def test_quantized_gate_up_fuses_silu_only_on_whole_panels(inter: int, fused: bool) -> None:
    """Each half of a panel-layout gate/up weight must be whole 16-row panels for the fused kernel;
    otherwise the layer answers None and the model takes the two-step path."""
    from gguf.quants import quantize

    from local_engine.layers.activation import SiluAndMul
    from local_engine.layers.linear import MergedColumnParallelLinear
    from local_engine.layers.quant_linear import QuantizedTensor

    torch.manual_seed(inter)
    with torch.device("cpu"):
        layer = MergedColumnParallelLinear(64, [inter, inter])
    for shard in (0, 1):
        blocks = quantize(torch.randn(inter, 64).numpy() * 0.1, Q.Q8_0)
        layer.weight_loader(
            layer.weight, QuantizedTensor(torch.from_numpy(blocks), int(Q.Q8_0), (inter, 64)), shard
        )
    assert layer.pack_weight() and is_quantized(layer.weight)
    x = torch.randn(3, 64).to(torch.bfloat16)
    two_step = SiluAndMul()(layer(x))
    got = layer.silu_and_mul(x)
    if not fused:
        assert got is None
        return
    assert got is not None and got.shape == two_step.shape
    torch.testing.assert_close(got.float(), two_step.float(), rtol=2**-6, atol=1e-3)
