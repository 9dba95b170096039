"""Gemma 2, Gemma 3 (text) and Phi-3 against transformers' reference implementations (float32).

Same method as ``test_models``: tiny random models saved by transformers, loaded by our loader, and
logits compared for a whole-prompt prefill and for chunked prefill + mixed + decode steps through a
paged cache with scattered blocks of size 4. Sliding windows are a few tokens long so every test
sequence outgrows them, on prefill and on decode.
"""

from __future__ import annotations

import pytest
import torch

from local_engine.loader import load_model
from local_engine.models.config import FULL, SLIDING
from tests.support.engine_models import PagedRunner, PagedSeq, make_hf_model

ATOL = 2e-4

FAMILIES: dict[str, tuple[str, dict[str, object]]] = {
    "gemma2": (
        "gemma2",
        {
            "sliding_window": 5,
            "query_pre_attn_scalar": 24,
            "attn_logit_softcapping": 1.5,  # small enough that capping changes the scores a lot
            "final_logit_softcapping": 3.0,
            "num_hidden_layers": 3,
        },
    ),
    "gemma3": (
        "gemma3_text",
        {
            "sliding_window": 6,
            "query_pre_attn_scalar": 20,
            "num_hidden_layers": 3,
            "layer_types": [SLIDING, FULL, SLIDING],
            "rope_parameters": {
                FULL: {"rope_type": "linear", "factor": 2.0, "rope_theta": 50000.0},
                SLIDING: {"rope_type": "default", "rope_theta": 100.0},
            },
        },
    ),
    "phi3": ("phi3", {"sliding_window": 7, "tie_word_embeddings": False}),
    # Mistral 7B v0.1's window on every layer; Qwen2's only with use_sliding_window, from layer 1 on.
    "mistral-window": ("mistral", {"sliding_window": 5}),
    "qwen2-window": ("qwen2", {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1}),
    "phi3-longrope-partial": (
        "phi3",
        {
            "original_max_position_embeddings": 64,
            "rope_parameters": {
                "rope_type": "longrope",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.5,
                "short_factor": [1.0, 1.3, 1.7, 2.0],
                "long_factor": [2.0, 3.0, 5.0, 8.0],
            },
        },
    ),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def tiny_pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    kind, overrides = FAMILIES[request.param]
    model_dir = tmp_path_factory.mktemp(request.param)
    reference = make_hf_model(kind, model_dir, **overrides)
    ours = load_model(model_dir, dtype=torch.float32)
    return request.param, reference, ours


def _reference_logits(reference: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return reference(torch.tensor([ids])).logits[0].float()


def test_config_read_from_hf_dir(tiny_pair) -> None:
    name, reference, ours = tiny_pair
    cfg = ours.config
    assert cfg.architecture == reference.config.architectures[0]
    assert cfg.num_hidden_layers == reference.config.num_hidden_layers
    if name == "gemma2":
        assert cfg.layer_types == (SLIDING, FULL, SLIDING)  # transformers' alternation, sliding first
        assert (cfg.attn_logit_softcap, cfg.final_logit_softcap) == (1.5, 3.0)
        assert cfg.query_pre_attn_scalar == 24
        assert cfg.tie_word_embeddings and not cfg.qk_norm
    elif name == "gemma3":
        assert cfg.qk_norm and cfg.attn_logit_softcap is None
        assert (cfg.rope_theta, cfg.local_rope_theta) == (50000.0, 100.0)
        assert cfg.rope_scaling == {"rope_type": "linear", "factor": 2.0}
        assert [cfg.window_of(i) for i in range(3)] == [6, None, 6]
    elif name == "phi3":
        assert cfg.window_of(0) == 7 and cfg.rope_scaling is None and cfg.rotary_dim == cfg.head_dim
    elif name == "mistral-window":
        assert [cfg.window_of(i) for i in range(2)] == [5, 5]
    elif name == "qwen2-window":
        assert [cfg.window_of(i) for i in range(2)] == [None, 4] and cfg.qkv_bias
    else:
        assert cfg.rotary_dim == cfg.head_dim // 2
        assert cfg.rope_scaling is not None and cfg.rope_scaling["rope_type"] == "longrope"
        assert cfg.rope_scaling["original_max_position_embeddings"] == 64


def test_prefill_logits_match_transformers(tiny_pair) -> None:
    _, reference, ours = tiny_pair
    torch.manual_seed(1)
    ids = torch.randint(3, ours.config.vocab_size, (23,)).tolist()
    runner = PagedRunner(ours.model, ours.config, block_size=4)
    logits = runner.step([(PagedSeq(blocks=[11, 3, 7, 0, 14, 9]), ids)])
    assert logits.shape == (23, ours.config.vocab_size)
    torch.testing.assert_close(logits, _reference_logits(reference, ids), atol=ATOL, rtol=1e-4)


def test_paged_chunked_mixed_and_decode_steps_match_transformers(tiny_pair) -> None:
    _, reference, ours = tiny_pair
    torch.manual_seed(2)
    vocab = ours.config.vocab_size
    a_ids = torch.randint(3, vocab, (19,)).tolist()
    b_ids = torch.randint(3, vocab, (9,)).tolist()
    runner = PagedRunner(ours.model, ours.config, block_size=4)
    a = PagedSeq(blocks=[20, 5, 13, 2, 30, 8, 17])
    b = PagedSeq(blocks=[6, 25, 1, 12, 19])
    got_a: list[torch.Tensor] = []
    got_b: list[torch.Tensor] = []
    out = runner.step([(a, a_ids[:10]), (b, b_ids[:7])])
    got_a.append(out[:10])
    got_b.append(out[10:])
    out = runner.step([(b, b_ids[7:8]), (a, a_ids[10:15])])
    got_b.append(out[:1])
    got_a.append(out[1:])
    for i in range(4):
        out = runner.step([(a, [a_ids[15 + i]]), (b, [b_ids[8] if i == 0 else a_ids[i]])])
        got_a.append(out[:1])
        got_b.append(out[1:])
    torch.testing.assert_close(torch.cat(got_a), _reference_logits(reference, a.ids), atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(torch.cat(got_b), _reference_logits(reference, b.ids), atol=ATOL, rtol=1e-4)


def test_bf16_model_tracks_fp32(tiny_pair) -> None:
    name, _, ours = tiny_pair
    bf16 = load_model(ours.path, dtype=torch.bfloat16)
    torch.manual_seed(3)
    ids = torch.randint(3, ours.config.vocab_size, (12,)).tolist()
    ref = PagedRunner(ours.model, ours.config).step([(PagedSeq(blocks=[1, 2, 3]), ids)])
    low = PagedRunner(bf16.model, bf16.config).step([(PagedSeq(blocks=[1, 2, 3]), ids)])
    assert (low - ref).abs().max().item() < 0.05 * ref.abs().max().item(), name


def test_windowed_layers_keep_cuda_graphs_off_only_where_needed(tiny_pair) -> None:
    name, _, ours = tiny_pair
    # Soft-capping always needs the windowed path; a window only for sequences longer than it.
    assert ours.config.needs_windowed_attention(4) == (name == "gemma2")
    assert ours.config.needs_windowed_attention(64) == (name != "phi3-longrope-partial")


def _hf_greedy(model: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt) :]


def test_engine_greedy_matches_transformers(tiny_pair) -> None:
    """Through the scheduler: chunked prefill, prefix-cache hits and batched decode of sequences
    that outgrow the window, greedy tokens equal to transformers' own."""
    from local_engine import LLM, EngineConfig, SamplingParams

    name, reference, ours = tiny_pair
    torch.manual_seed(4)
    vocab = ours.config.vocab_size
    shared = torch.randint(3, vocab, (9,)).tolist()
    prompts = [shared + torch.randint(3, vocab, (k,)).tolist() for k in (1, 6, 14)]
    prompts.append(torch.randint(3, vocab, (3,)).tolist())
    llm = LLM(
        EngineConfig(model=ours.path, dtype="float32", num_threads=1, block_size=4, max_num_batched_tokens=8)
    )
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    outputs = llm.generate(prompts, params)
    assert [o.outputs[0].token_ids for o in outputs] == [_hf_greedy(reference, p, 10) for p in prompts], name
    assert llm.engine.block_manager.prefix_cache_hits > 0


def test_gemma3_multimodal_checkpoint_serves_its_language_model(tmp_path) -> None:
    """Gemma 3 4B and up ship as ``Gemma3ForConditionalGeneration``: the text config is nested and the
    language model's tensors prefixed; the vision tower's are skipped. Text logits match transformers'."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    from tests.support.engine_models import write_tokenizer

    vocab = write_tokenizer(tmp_path)
    text = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        sliding_window=4,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=4,
        image_token_index=vocab - 1,
        boi_token_index=vocab - 2,
        eoi_token_index=vocab - 3,
    )
    torch.manual_seed(0)
    reference = Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for param in reference.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    reference.save_pretrained(tmp_path)
    ours = load_model(tmp_path, dtype=torch.float32)
    assert ours.config.architecture == "Gemma3ForConditionalGeneration"
    assert ours.config.hidden_size == 64 and ours.config.sliding_window == 4
    ids = torch.randint(3, vocab - 4, (13,)).tolist()
    got = PagedRunner(ours.model, ours.config).step([(PagedSeq(blocks=[3, 1, 2, 5]), ids)])
    with torch.no_grad():
        want = reference(input_ids=torch.tensor([ids])).logits[0].float()
    torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-4)


def test_gemma3_multimodal_config_as_the_hub_writes_it() -> None:
    """google/gemma-3-4b-it's config.json gives only the text sizes that differ from transformers'
    defaults; the rest must come from those defaults, not fail as missing."""
    from local_engine.models.config import ModelConfig

    hub = {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "model_type": "gemma3",
        "boi_token_index": 255999,
        "eoi_token_index": 256000,
        "eos_token_id": [1, 106],
        "image_token_index": 262144,
        "mm_tokens_per_image": 256,
        "text_config": {
            "hidden_size": 2560,
            "intermediate_size": 10240,
            "model_type": "gemma3_text",
            "num_hidden_layers": 34,
            "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
            "sliding_window": 1024,
        },
        "vision_config": {"hidden_size": 1152, "model_type": "siglip_vision_model", "patch_size": 14},
    }
    cfg = ModelConfig.from_hf_dict(hub)
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) == (2560, 10240, 34)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.vocab_size) == (
        8,
        4,
        256,
        262_208,
    )
    assert cfg.layer_types[:6] == (SLIDING,) * 5 + (FULL,) and cfg.sliding_window == 1024
    assert (cfg.rope_theta, cfg.local_rope_theta) == (1_000_000.0, 10_000.0)
    assert cfg.rope_scaling == {"factor": 8.0, "rope_type": "linear"}
    assert cfg.query_pre_attn_scalar == 256 and cfg.tie_word_embeddings and cfg.qk_norm
    assert cfg.max_position_embeddings == 131_072 and cfg.eos_token_ids == (1, 106)


def test_phi4_mini_config_as_the_hub_writes_it() -> None:
    """microsoft/Phi-4-mini-instruct's config.json (transformers 4 spelling): LongRoPE under the old
    ``type`` key, partial rotary, a window longer than any context, tied embeddings."""
    from local_engine.layers.rotary import get_rope
    from local_engine.models.config import ModelConfig

    hub = {
        "architectures": ["Phi3ForCausalLM"],
        "model_type": "phi3",
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 32,
        "num_attention_heads": 24,
        "num_key_value_heads": 8,
        "vocab_size": 200064,
        "max_position_embeddings": 131072,
        "original_max_position_embeddings": 4096,
        "partial_rotary_factor": 0.75,
        "rope_theta": 10000.0,
        "rope_scaling": {"type": "longrope", "short_factor": [1.0] * 48, "long_factor": [2.0] * 48},
        "sliding_window": 262144,
        "tie_word_embeddings": True,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-05,
        "eos_token_id": 199999,
    }
    cfg = ModelConfig.from_hf_dict(hub)
    assert (cfg.head_dim, cfg.rotary_dim) == (128, 96) and cfg.tie_word_embeddings
    assert cfg.rope_scaling is not None and cfg.rope_scaling["rope_type"] == "longrope"
    assert cfg.rope_scaling["original_max_position_embeddings"] == 4096
    assert not cfg.needs_windowed_attention(8192)  # a 256k window never binds: fast paths stay on
    rope = get_rope(cfg.head_dim, 8192, cfg.rope_theta, cfg.rope_scaling, cfg.rotary_dim)
    table = rope.cos_sin_cache
    assert table.shape == (8192, 96)
    # Within the original context the short factors (1.0: plain RoPE) scaled by LongRoPE's
    # sqrt(1 + ln(32) / ln(4096)); past it the long ones.
    scale = (1 + torch.log(torch.tensor(32.0)) / torch.log(torch.tensor(4096.0))) ** 0.5
    torch.testing.assert_close(table[1, 0], torch.cos(torch.tensor(1.0)) * scale)
    torch.testing.assert_close(table[5000, 0], torch.cos(torch.tensor(5000.0 / 2.0)) * scale)
