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
    """Save a tiny random ``kind`` ("llama", "qwen2", "qwen3") model with a tokenizer into ``model_dir``.

    Every parameter is perturbed from its init so norms and biases are not the trivial ones/zeros.
    Returns the transformers model (float32, eval mode).
    """
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

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
    config_cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}[kind]
    if kind == "qwen3":
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
        dtype = next(model.parameters()).dtype
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
