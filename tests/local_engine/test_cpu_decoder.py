"""The whole-stack CPU decode step (``layers/cpu_decoder``, ``kernels/cpu/decoder.c``): the same
kernels in the same order as the layer-by-layer path, so every decode step's logits must be
bit-identical to it, for bf16, quantized and mixed models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from local_engine.kernels import cpu as cpu_kernels
from local_engine.kernels.cpu.decoder import DecoderPlan
from local_engine.loader import load_model
from local_engine.models.llama import LlamaModel
from tests.support.engine_models import PagedRunner, PagedSeq, make_hf_model, write_gguf_like_llama_cpp

pytestmark = pytest.mark.skipif(
    cpu_kernels._library() is None or not cpu_kernels.gemm_available(),
    reason="no C compiler or no AVX-512: the C step never runs",
)


def _plan(model: torch.nn.Module) -> DecoderPlan | None:
    inner = model.model
    assert isinstance(inner, LlamaModel)
    cached = getattr(inner, "_cpu_decoder", None)
    return None if cached is None else cached[1]


def _decode_logits(load, monkeypatch: pytest.MonkeyPatch, fused: bool, prompts: list[list[int]]):
    """Prefill three sequences (scattered blocks), then six decode steps of all three; the
    logits of every step and the model's C-step plan (None on the layer-by-layer path)."""
    monkeypatch.setenv("SWITCHYARD_CPU_DECODER", "1" if fused else "0")
    loaded = load()
    runner = PagedRunner(loaded.model, loaded.config, block_size=4, num_blocks=96)
    seqs = [PagedSeq(blocks=[5 + 3 * j + 31 * i for j in range(10)]) for i in range(3)]
    steps = [runner.step(list(zip(seqs, prompts, strict=True)))]
    for step in range(6):
        steps.append(runner.step([(s, [(7 * step + 5 * i) % 90 + 3]) for i, s in enumerate(seqs)]))
    return steps, _plan(loaded.model)


def _assert_same_steps(load, monkeypatch: pytest.MonkeyPatch, prompts: list[list[int]]) -> DecoderPlan:
    fused, plan = _decode_logits(load, monkeypatch, True, prompts)
    layered, none = _decode_logits(load, monkeypatch, False, prompts)
    assert plan is not None and none is None
    for got, want in zip(fused, layered, strict=True):
        assert torch.equal(got, want)
    return plan


PROMPTS = [[3, 17, 42, 8, 99], [11, 4], [60, 61, 62, 63, 64, 65, 66, 67, 68]]


def test_bf16_decode_steps_match_the_layer_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_hf_model("llama", tmp_path, seed=4)
    plan = _assert_same_steps(lambda: load_model(tmp_path, dtype=torch.bfloat16), monkeypatch, PROMPTS)
    assert plan.has_bf16


@pytest.mark.parametrize("mixed", [False, True], ids=["quantized", "quantized-and-bf16"])
def test_quantized_decode_steps_match_the_layer_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mixed: bool
) -> None:
    """Q8_0 / Q4_0 / Q4_1 projections; with ``mixed`` a gate/up whose halves differ in format,
    which loads dense (bf16, packed), next to quantized ones in the same step."""
    gguf = pytest.importorskip("gguf")
    q = gguf.GGMLQuantizationType
    reference = make_hf_model("llama", tmp_path / "hf", seed=6)
    quant = {}
    for layer in range(reference.config.num_hidden_layers):
        blk = f"blk.{layer}"
        quant.update({f"{blk}.attn_{name}.weight": q.Q8_0 for name in ("q", "k", "v")})
        quant.update({f"{blk}.attn_output.weight": q.Q4_1, f"{blk}.ffn_down.weight": q.Q4_0})
        quant.update({f"{blk}.ffn_gate.weight": q.Q8_0, f"{blk}.ffn_up.weight": q.Q4_0 if mixed else q.Q8_0})
    path = write_gguf_like_llama_cpp(reference, tmp_path / "hf", tmp_path / "m.gguf", quant=quant)
    plan = _assert_same_steps(
        lambda: load_model(path, dtype=torch.bfloat16, quantized=True), monkeypatch, PROMPTS
    )
    assert plan.has_bf16 == mixed


def test_default_smollm_decode_steps_match_the_layer_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped model as served by default: Q4_1 panels, 30 layers, GQA 9 over 3 heads."""
    prompts = [[1, 9690, 198, 2683, 314], [1, 4093, 28, 30, 17], [1, 504, 3458, 282, 4649, 314, 2]]
    load = lambda: load_model(None, dtype=torch.bfloat16, quantized=True)  # noqa: E731
    plan = _assert_same_steps(load, monkeypatch, prompts)
    assert not plan.has_bf16


def test_models_the_step_does_not_cover_keep_the_layer_path(tmp_path: Path) -> None:
    """Qwen3's per-head q/k norms: no plan, and decode steps still run (layer by layer)."""
    make_hf_model("qwen3", tmp_path, seed=2)
    loaded = load_model(tmp_path, dtype=torch.bfloat16)
    runner = PagedRunner(loaded.model, loaded.config)
    seq = PagedSeq(blocks=[3, 1, 4])
    runner.step([(seq, [5, 6, 7])])
    assert runner.step([(seq, [8])]).shape[0] == 1
    assert _plan(loaded.model) is None


def test_plan_refuses_what_the_c_step_would_misread(tmp_path: Path) -> None:
    from local_engine.layers import cpu_decoder

    make_hf_model("llama", tmp_path, seed=1)
    loaded = load_model(tmp_path, dtype=torch.bfloat16)
    runner = PagedRunner(loaded.model, loaded.config)
    plan = cpu_decoder.build_plan(loaded.model.model, runner.caches)
    x = torch.zeros(2, plan.hidden, dtype=torch.bfloat16)
    pos, slots = torch.tensor([0, 1]), torch.tensor([0, 1])
    tables, lens = torch.zeros(2, 1, dtype=torch.int32), torch.tensor([1, 2], dtype=torch.int32)
    with pytest.raises(ValueError, match="overrun"):  # 5 tokens of context in one block of 4
        plan.forward(x, pos, slots, tables, lens, 5)
    with pytest.raises(ValueError, match="bf16"):
        plan.forward(x.float(), pos, slots, tables, lens, 2)
    with pytest.raises(ValueError, match="one entry per token"):
        plan.forward(x, pos[:1], slots, tables, lens, 2)
    float_caches = [(k.float(), v.float()) for k, v in runner.caches]
    with pytest.raises(cpu_decoder._Unsupported):
        cpu_decoder.build_plan(loaded.model.model, float_caches)
