"""Reading a GGUF file: config from metadata, tensors under HF names (dequantized, or kept as the
file's quantized blocks where the CPU kernels run them), and the tokenizer.

Two llama.cpp conventions are undone to match Hugging Face's own GGUF loader:
- Q/K projection rows of ``llama``/``mistral`` files are permuted for llama.cpp's interleaved rope;
  we restore HF's half-split (neox) order.
- The tokenizer is stored as metadata (``tokenizer.ggml.*``); we rebuild a ``tokenizers.Tokenizer``
  the way transformers' ``convert_gguf_tokenizer`` does for byte-level (gpt2) BPE.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers
import torch
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors

from local_engine.layers.quant_linear import QuantizedTensor
from local_engine.loader.errors import ModelLoadError
from local_engine.tokenizer import Tokenizer

# Files whose Q/K rows llama.cpp permuted at conversion time.
_PERMUTED_QK_ARCHS = {"llama", "mistral"}

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_BLOCK = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")
# Matrices that may stay quantized, and the groups fused into one matmul (which must then share
# one quantization: a fused weight is one block tensor).
_QUANTIZABLE = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"}
_FUSED_GROUPS = (("attn_q", "attn_k", "attn_v"), ("ffn_gate", "ffn_up"))

# Pre-tokenizer split patterns by ``tokenizer.ggml.pre`` (as transformers maps them); others use GPT-2's.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_TOKENIZER_SPLITS = {
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "dbrx": _LLAMA3_SPLIT,
    "falcon3": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT,
    "deepseek-r1-qwen": _QWEN2_SPLIT,
}
_TOKEN_TYPE_CONTROL = 3
_TOKEN_TYPE_USER_DEFINED = 4


def hf_tensor_name(gguf_name: str) -> str | None:
    """The HF parameter name for a GGUF tensor name (None for tensors the model does not use)."""
    match = _BLOCK.match(gguf_name)
    if match:
        layer, kind, suffix = match.groups()
        mapped = _LAYER_NAMES.get(kind)
        return f"model.layers.{layer}.{mapped}.{suffix}" if mapped else None
    base, _, suffix = gguf_name.rpartition(".")
    mapped = _GLOBAL_NAMES.get(base)
    return f"{mapped}.{suffix}" if mapped else None


def reverse_qk_permutation(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's per-head row interleave of Q/K (its ``permute``), back to HF's layout."""
    half = weight.shape[0] // num_heads // 2
    return weight.reshape(num_heads, half, 2, *weight.shape[1:]).swapaxes(2, 1).reshape(weight.shape)


class GGUFFile:
    """An opened GGUF file: metadata and tensor access."""

    def __init__(self, path: Path) -> None:
        import gguf

        if not path.is_file():
            raise ModelLoadError(f"{path} is missing")
        try:
            self.reader = gguf.GGUFReader(str(path))
        except Exception as exc:  # the reader raises ValueError/struct errors on bad files
            raise ModelLoadError(f"{path} is not a readable GGUF file: {exc}") from exc
        self.path = path
        self.metadata: dict[str, Any] = {}
        for key, field in self.reader.fields.items():
            try:
                self.metadata[key] = field.contents()
            except Exception:  # an exotic field type we never need; keep going
                continue
        self.tensor_names = {t.name for t in self.reader.tensors}

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def _kept_quantized(self, quant_types: frozenset[int]) -> set[str]:
        """GGUF names of the weight matrices to keep as stored: of a type in ``quant_types`` and,
        in a fused group, only where the whole group shares it."""
        types = {t.name: int(t.tensor_type) for t in self.reader.tensors}

        def eligible(name: str) -> bool:
            match = _BLOCK.match(name)
            if match is None:
                return name in ("token_embd.weight", "output.weight")
            layer, kind, suffix = match.groups()
            if kind not in _QUANTIZABLE or suffix != "weight":
                return False
            group = next((g for g in _FUSED_GROUPS if kind in g), (kind,))
            return len({types.get(f"blk.{layer}.{member}.weight") for member in group}) == 1

        return {name for name, qtype in types.items() if qtype in quant_types and eligible(name)}

    def iter_tensors(
        self, num_heads: int, num_kv_heads: int, quant_types: frozenset[int] = frozenset()
    ) -> Iterator[tuple[str, torch.Tensor | QuantizedTensor]]:
        """``(hf_name, float32 tensor)``, dequantized, with Q/K rows restored where needed; weight
        matrices stored in one of ``quant_types`` (GGML type ids) come as ``QuantizedTensor``
        instead, their blocks as stored (rows reordered where Q/K rows are restored)."""
        from gguf.quants import dequantize

        permuted = self.architecture in _PERMUTED_QK_ARCHS
        kept = self._kept_quantized(quant_types) if quant_types else set()
        for t in self.reader.tensors:
            name = hf_tensor_name(t.name)
            if name is None:
                continue  # e.g. rope_freqs: llama.cpp's precomputed factors, recomputed from the config here
            if t.name in kept:
                blocks = np.asarray(t.data, dtype=np.uint8)
                rows, cols = int(t.shape[1]), int(t.shape[0])
                blocks = blocks.reshape(rows, -1)
                if permuted and name.endswith(("q_proj.weight", "k_proj.weight")):
                    heads = num_heads if "q_proj" in name else num_kv_heads
                    order = reverse_qk_permutation(np.arange(rows), heads)
                    blocks = blocks[order]  # whole rows of blocks: the permutation is over rows
                # A copy: the layer copies it again into its (fused) parameter, and the file's
                # pages must not stay mapped.
                data = torch.from_numpy(np.array(blocks, copy=True))
                yield name, QuantizedTensor(data, int(t.tensor_type), (rows, cols))
                continue
            try:
                array = dequantize(t.data, t.tensor_type)
            except Exception as exc:
                raise ModelLoadError(
                    f"{self.path}: cannot dequantize {t.name} ({t.tensor_type.name}): {exc}"
                ) from exc
            array = np.asarray(array, dtype=np.float32).reshape([int(d) for d in reversed(t.shape.tolist())])
            if permuted and name.endswith("q_proj.weight"):
                array = reverse_qk_permutation(array, num_heads)
            elif permuted and name.endswith("k_proj.weight"):
                array = reverse_qk_permutation(array, num_kv_heads)
            if not array.flags.writeable:  # unquantized tensors are read-only views of the mmap
                array = array.copy()
            yield name, torch.from_numpy(np.ascontiguousarray(array))


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (byte-level BPE's alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def build_tokenizer(gguf_file: GGUFFile) -> Tokenizer:
    """The tokenizer described by the file's ``tokenizer.*`` metadata (byte-level BPE only)."""
    meta = gguf_file.metadata
    model_type = meta.get("tokenizer.ggml.model")
    tokens: list[str] | None = meta.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise ModelLoadError(f"{gguf_file.path} has no tokenizer.ggml.tokens metadata")
    if model_type != "gpt2":
        raise ModelLoadError(
            f"{gguf_file.path}: tokenizer model {model_type!r} is not supported (only byte-level BPE, 'gpt2')"
        )
    spelling = _bytes_to_unicode()
    alphabet = set(spelling.values())
    # Tokens outside the byte alphabet (usually added/special ones) are respelled in it, as transformers does.
    vocab = {
        (tok if set(tok) <= alphabet else "".join(spelling[b] for b in tok.encode("utf-8"))): i
        for i, tok in enumerate(tokens)
    }
    merges_raw = meta.get("tokenizer.ggml.merges") or []
    merges = [tuple(m.split(" ", 1)) for m in merges_raw]
    backend = tokenizers.Tokenizer(
        models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False)
    )
    split = _PRE_TOKENIZER_SPLITS.get(str(meta.get("tokenizer.ggml.pre", "")))
    if split is None:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    backend.decoder = decoders.ByteLevel()
    token_types = list(meta.get("tokenizer.ggml.token_type") or [])
    control = [
        AddedToken(tok, normalized=False, special=True)
        for tok, kind in zip(tokens, token_types, strict=False)
        if kind == _TOKEN_TYPE_CONTROL and set(tok) <= alphabet
    ]
    if control:
        backend.add_special_tokens(control)
    user_defined = [
        AddedToken(tok, normalized=False, special=False)
        for tok, kind in zip(tokens, token_types, strict=False)
        if kind == _TOKEN_TYPE_USER_DEFINED and tok in vocab
    ]
    if user_defined:
        backend.add_tokens(user_defined)

    def special(key: str) -> str | None:
        token_id = meta.get(f"tokenizer.ggml.{key}")
        return tokens[int(token_id)] if token_id is not None and int(token_id) < len(tokens) else None

    bos = special("bos_token_id")
    if meta.get("tokenizer.ggml.add_bos_token") and bos is not None:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab.get(bos, 0))]
        )
    eos_id = meta.get("tokenizer.ggml.eos_token_id")
    eos_ids = (int(eos_id),) if eos_id is not None else ()
    # llama.cpp also stops on end-of-turn tokens; they are part of the model's stop set.
    eot_id = meta.get("tokenizer.ggml.eot_token_id")
    if eot_id is not None and int(eot_id) not in eos_ids:
        eos_ids = (*eos_ids, int(eot_id))
    return Tokenizer(
        backend=backend,
        chat_template=meta.get("tokenizer.chat_template"),
        bos_token=bos,
        eos_token=special("eos_token_id"),
        unk_token=special("unknown_token_id"),
        pad_token=special("padding_token_id"),
        eos_token_ids=eos_ids,
    )
