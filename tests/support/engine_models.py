"""Tiny random Hugging Face models and tokenizers for the local-engine tests, built offline.

Also a minimal driver that runs our model through the paged KV cache with hand-built
``AttentionMetadata`` (no scheduler involved), so model tests depend only on the model contract.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paged attention keeps the KV cache in fixed-size blocks.",
    "Hello world! Continuous batching mixes prefill and decode tokens.",
    "café naïve 東京 😀 emoji and CJK text 你好世界",
] * 20


def write_tokenizer(model_dir: Path, vocab_size: int = 400) -> int:
    """Train a small byte-level BPE tokenizer offline and save it HF-style; returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer)
    model_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(model_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "chat_template": CHAT_TEMPLATE,
        "add_bos_token": False,
    }
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config))
    return tok.get_vocab_size()


def make_hf_model(kind: str, model_dir: Path, seed: int = 0, **overrides: object) -> torch.nn.Module:
    """Save a tiny random ``kind`` model with a tokenizer into ``model_dir`` (kinds: "llama", "mistral",
    "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3").

    Every parameter is perturbed from its init so norms and biases are not the trivial ones/zeros.
    Returns the transformers model (float32, eval mode).
    """
    from transformers import (
        AutoModelForCausalLM,
        Gemma2Config,
        Gemma3TextConfig,
        LlamaConfig,
        MistralConfig,
        Phi3Config,
        Qwen2Config,
        Qwen3Config,
    )

    vocab = write_tokenizer(model_dir)
    common: dict[str, object] = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    common.update(overrides)
    config_cls = {
        "llama": LlamaConfig,
        "mistral": MistralConfig,
        "qwen2": Qwen2Config,
        "qwen3": Qwen3Config,
        "gemma2": Gemma2Config,
        "gemma3_text": Gemma3TextConfig,
        "phi3": Phi3Config,
    }[kind]
    if kind in ("qwen3", "gemma2", "gemma3_text"):
        common.setdefault("head_dim", 16)
    config = config_cls(**common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    model.eval()
    model.save_pretrained(model_dir, safe_serialization=True)
    (model_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0], "bos_token_id": 1}))
    return model


@dataclass
class PagedSeq:
    """One sequence's token ids and the (deliberately scattered) cache blocks it owns."""

    blocks: list[int]
    ids: list[int] = field(default_factory=list)


class PagedRunner:
    """Runs a model step by step through a paged KV cache, building the metadata by hand."""

    def __init__(
        self, model: torch.nn.Module, config: object, block_size: int = 4, num_blocks: int = 64
    ) -> None:
        self.model = model
        self.block_size = block_size
        dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())  # not a quantized weight's
        shape = (num_blocks, block_size, config.num_key_value_heads, config.head_dim)  # type: ignore[attr-defined]
        self.caches = [
            (torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype))
            for _ in range(config.num_hidden_layers)  # type: ignore[attr-defined]
        ]

    def step(self, work: list[tuple[PagedSeq, list[int]]]) -> torch.Tensor:
        """Append ``new_ids`` to each sequence in one batched step; returns logits for every new token."""
        from local_engine.attention.metadata import AttentionMetadata

        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        starts = [0]
        seq_lens: list[int] = []
        for seq, new_ids in work:
            start = len(seq.ids)
            seq.ids.extend(new_ids)
            for offset, token in enumerate(new_ids):
                pos = start + offset
                input_ids.append(token)
                positions.append(pos)
                slots.append(seq.blocks[pos // self.block_size] * self.block_size + pos % self.block_size)
            starts.append(starts[-1] + len(new_ids))
            seq_lens.append(len(seq.ids))
        width = max(len(seq.blocks) for seq, _ in work)
        tables = torch.tensor(
            [seq.blocks + [0] * (width - len(seq.blocks)) for seq, _ in work], dtype=torch.int32
        )
        query_lens = [len(n) for _, n in work]
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.int64),
            query_start_loc=torch.tensor(starts, dtype=torch.int32),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
            block_tables=tables,
            max_query_len=max(query_lens),
            max_seq_len=max(seq_lens),
            block_size=self.block_size,
            query_lens_cpu=query_lens,
            seq_lens_cpu=seq_lens,
        )
        with torch.no_grad():
            hidden = self.model(torch.tensor(input_ids), torch.tensor(positions), self.caches, meta)
            return self.model.compute_logits(hidden)


def smollm_gguf_dir(tmp_root: Path) -> tuple[Path, str]:
    """A directory holding (a link to) the default SmolLM2 GGUF, as transformers wants ``dir + gguf_file``."""
    from local_engine.models.default import default_model_path

    source = default_model_path()
    tmp_root.mkdir(parents=True, exist_ok=True)
    link = tmp_root / source.name
    if not link.exists():
        link.symlink_to(source)
    return tmp_root, source.name


_GGUF_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def write_gguf_like_llama_cpp(
    model: torch.nn.Module, model_dir: Path, out: Path, quant: dict[str, int] | None = None
) -> Path:
    """Write a HF model (from ``make_hf_model``) as an F32 GGUF the way llama.cpp's converter does:
    its metadata keys, tensor names, gpt2 tokenizer metadata, and (for ``llama``) Q/K rows permuted
    for llama.cpp's interleaved rope. ``quant`` maps GGUF tensor names to the GGML type (Q8_0,
    Q4_0 or Q4_1: those gguf-py can quantize) to store them in instead."""
    import gguf
    import numpy as np

    cfg = model.config
    arch = cfg.model_type  # llama / qwen2 / qwen3
    writer = gguf.GGUFWriter(str(out), arch)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    rope = getattr(cfg, "rope_parameters", None) or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)

    tok = json.loads((model_dir / "tokenizer.json").read_text())
    vocab: dict[str, int] = tok["model"]["vocab"]
    for added in tok["added_tokens"]:
        vocab[added["content"]] = added["id"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    special = {a["content"] for a in tok["added_tokens"] if a["special"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in special else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template(CHAT_TEMPLATE)

    def permute(w: np.ndarray, heads: int) -> np.ndarray:  # llama.cpp convert_hf_to_gguf.py's permute
        return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    for name, tensor in model.state_dict().items():
        array = tensor.detach().float().numpy()
        if name == "model.embed_tokens.weight":
            gguf_name = "token_embd.weight"
        elif name == "model.norm.weight":
            gguf_name = "output_norm.weight"
        elif name == "lm_head.weight":
            if cfg.tie_word_embeddings:
                continue
            gguf_name = "output.weight"
        else:
            _, _, layer, rest = name.split(".", 3)
            gguf_name = f"blk.{layer}.{_GGUF_LAYER_NAMES[rest]}"
            if arch == "llama" and rest == "self_attn.q_proj.weight":
                array = permute(array, cfg.num_attention_heads)
            elif arch == "llama" and rest == "self_attn.k_proj.weight":
                array = permute(array, cfg.num_key_value_heads)
        qtype = (quant or {}).get(gguf_name)
        if qtype is None:
            writer.add_tensor(gguf_name, np.ascontiguousarray(array))
        else:
            qt = gguf.GGMLQuantizationType(qtype)
            writer.add_tensor(gguf_name, gguf.quants.quantize(np.ascontiguousarray(array), qt), raw_dtype=qt)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
