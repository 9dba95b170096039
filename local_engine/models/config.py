"""The architecture-level description of a model, read from a HF ``config.json`` or GGUF metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# GGUF ``general.architecture`` -> the HF architecture name our registry knows.
GGUF_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}

# HF ``model_type`` -> architecture, for configs that carry no ``architectures`` list.
MODEL_TYPES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
}

# transformers' Gemma3TextConfig defaults (gemma-3-4b's sizes), which a multimodal Gemma 3
# checkpoint's text_config leaves out (google/gemma-3-4b-it gives only the sizes that differ).
_GEMMA3_TEXT_DEFAULTS: dict[str, Any] = {
    "model_type": "gemma3_text",
    "vocab_size": 262_208,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "max_position_embeddings": 131_072,
    "rms_norm_eps": 1e-6,
    "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
    "rope_theta": 1_000_000.0,
    "rope_local_base_freq": 10_000.0,
    "bos_token_id": 2,
    "eos_token_id": 1,
}

# Attention layer kinds (HF ``layer_types``): a sliding layer sees only the last ``sliding_window`` keys.
SLIDING = "sliding_attention"
FULL = "full_attention"


class ModelConfigError(ValueError):
    """A config that does not describe a model this engine can run."""


def _as_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


@dataclass(slots=True)
class ModelConfig:
    """Everything the model code needs to build itself (the public fields are the engine contract)."""

    name: str
    architecture: str
    num_hidden_layers: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None
    intermediate_size: int = 0
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    hidden_act: str = "silu"
    torch_dtype: str | None = None
    # Fraction of each head RoPE rotates (Phi-4-mini: 0.75); the rest passes through.
    partial_rotary_factor: float = 1.0
    # Per-layer attention kind (``SLIDING`` / ``FULL``); empty means every layer is full.
    layer_types: tuple[str, ...] = ()
    sliding_window: int | None = None
    # Gemma: tanh soft-capping of attention scores and of the final logits, the query scale
    # ``query_pre_attn_scalar ** -0.5`` (instead of ``head_dim ** -0.5``) and the RoPE base of the
    # sliding layers (Gemma 3's local layers rotate with their own base and no scaling).
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    query_pre_attn_scalar: float | None = None
    local_rope_theta: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def window_of(self, layer: int) -> int | None:
        """The sliding window of layer ``layer`` (None: it attends to the whole context)."""
        if self.layer_types and self.layer_types[layer] == SLIDING:
            return self.sliding_window
        return None

    def needs_windowed_attention(self, max_len: int) -> bool:
        """Whether sequences up to ``max_len`` tokens take ``attention.windowed`` (soft-capped scores, or
        a window shorter than them): that path reads host metadata, so no CUDA graphs with it."""
        if self.attn_logit_softcap is not None:
            return True
        windows = (self.window_of(i) for i in range(len(self.layer_types)))
        return any(w is not None and w < max_len for w in windows)

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @classmethod
    def from_hf_dict(cls, cfg: dict[str, Any], name: str = "model") -> ModelConfig:
        """From a Hugging Face ``config.json`` (transformers 4 or 5 spelling of the rope settings)."""
        archs = cfg.get("architectures") or []
        architecture = archs[0] if archs else MODEL_TYPES.get(str(cfg.get("model_type")), "")
        if not architecture:
            raise ModelConfigError(
                "config.json names no architecture (neither 'architectures' nor 'model_type')"
            )
        if architecture == "Gemma3ForConditionalGeneration":
            # The multimodal checkpoint: we run its language model (text in, text out). Its
            # text_config lists only what differs from transformers' Gemma3TextConfig defaults.
            text = dict(cfg.get("text_config") or {})
            tokens = {k: cfg[k] for k in ("bos_token_id", "eos_token_id") if k in cfg}  # top-level ids
            cfg = {**_GEMMA3_TEXT_DEFAULTS, **tokens, **text, "architectures": [architecture]}
        model_type = str(cfg.get("model_type", ""))
        try:
            hidden = int(cfg["hidden_size"])
            heads = int(cfg["num_attention_heads"])
            layers = int(cfg["num_hidden_layers"])
            vocab = int(cfg["vocab_size"])
            intermediate = int(cfg["intermediate_size"])
        except KeyError as exc:
            raise ModelConfigError(f"config.json lacks {exc.args[0]!r}") from exc
        # transformers 5 folds rope_theta and the scaling into ``rope_parameters``.
        rope_params = dict(cfg.get("rope_parameters") or {})
        rope_theta = float(rope_params.pop("rope_theta", cfg.get("rope_theta", 10000.0)))
        scaling = cfg.get("rope_scaling") or rope_params or None
        if scaling and str(scaling.get("rope_type") or scaling.get("type") or "default") == "default":
            scaling = None
        is_qwen2 = architecture.startswith("Qwen2") or model_type == "qwen2"
        is_qwen3 = architecture.startswith("Qwen3") or model_type == "qwen3"
        attention_bias = bool(cfg.get("attention_bias", False))
        config = cls(
            name=name,
            architecture=architecture,
            num_hidden_layers=layers,
            hidden_size=hidden,
            num_attention_heads=heads,
            num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            vocab_size=vocab,
            max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
            eos_token_ids=_as_ids(cfg.get("eos_token_id")),
            bos_token_id=cfg.get("bos_token_id"),
            intermediate_size=intermediate,
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=dict(scaling) if scaling else None,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            # Qwen2 always biases q/k/v (never o); Llama's attention_bias covers all four.
            qkv_bias=True if is_qwen2 else attention_bias,
            o_bias=False if is_qwen2 else attention_bias,
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            qk_norm=is_qwen3,
            hidden_act=str(cfg.get("hidden_act", "silu")),
            torch_dtype=cfg.get("torch_dtype") or cfg.get("dtype"),
        )
        if architecture.startswith(("Gemma2", "Gemma3")):
            _apply_gemma(config, cfg)
        elif architecture.startswith("Phi3"):
            _apply_phi3(config, cfg)
        elif architecture.startswith(("Mistral", "Qwen2", "Qwen3")):
            _apply_window(config, cfg)
        return config

    @classmethod
    def from_gguf_metadata(
        cls, meta: dict[str, Any], tensor_names: set[str], name: str = "model"
    ) -> ModelConfig:
        """From GGUF key/value metadata plus the file's tensor names (to detect tied embeddings, biases)."""
        arch = str(meta.get("general.architecture", ""))
        architecture = GGUF_ARCHITECTURES.get(arch)
        if architecture is None:
            raise ModelConfigError(
                f"GGUF architecture {arch!r} is not supported (supported: {sorted(GGUF_ARCHITECTURES)})"
            )

        def get(key: str, default: Any = None) -> Any:
            return meta.get(f"{arch}.{key}", default)

        try:
            hidden = int(get("embedding_length"))
            heads = int(get("attention.head_count"))
            layers = int(get("block_count"))
            intermediate = int(get("feed_forward_length"))
        except TypeError as exc:
            raise ModelConfigError(f"GGUF metadata lacks the {arch}.* model dimensions") from exc
        tokens = meta.get("tokenizer.ggml.tokens")
        vocab = get("vocab_size") or (len(tokens) if tokens is not None else None)
        if vocab is None:
            raise ModelConfigError("GGUF metadata gives no vocabulary size")
        head_dim = int(get("attention.key_length") or hidden // heads)
        scaling: dict[str, Any] | None = None
        scaling_type = get("rope.scaling.type")
        if scaling_type and scaling_type != "none":
            scaling = {"rope_type": str(scaling_type), "factor": float(get("rope.scaling.factor", 1.0))}
            original = get("rope.scaling.original_context_length")
            if original:
                scaling["original_max_position_embeddings"] = int(original)
        return cls(
            name=name,
            architecture=architecture,
            num_hidden_layers=layers,
            hidden_size=hidden,
            num_attention_heads=heads,
            num_key_value_heads=int(get("attention.head_count_kv") or heads),
            head_dim=head_dim,
            vocab_size=int(vocab),
            max_position_embeddings=int(get("context_length", 2048)),
            eos_token_ids=_as_ids(meta.get("tokenizer.ggml.eos_token_id")),
            bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
            intermediate_size=intermediate,
            rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-6)),
            rope_theta=float(get("rope.freq_base", 10000.0)),
            rope_scaling=scaling,
            tie_word_embeddings="output.weight" not in tensor_names,
            qkv_bias="blk.0.attn_q.bias" in tensor_names,
            o_bias="blk.0.attn_output.bias" in tensor_names,
            qk_norm="blk.0.attn_q_norm.weight" in tensor_names,
        )


def _layer_types(cfg: dict[str, Any], layers: int, sliding: Any) -> tuple[str, ...]:
    """The config's ``layer_types``, else ``sliding(i)`` for each layer (older configs)."""
    given = cfg.get("layer_types")
    if given:
        if len(given) != layers or any(t not in (SLIDING, FULL) for t in given):
            raise ModelConfigError(
                f"layer_types must list {SLIDING!r} or {FULL!r} for each of {layers} layers"
            )
        return tuple(str(t) for t in given)
    return tuple(SLIDING if sliding(i) else FULL for i in range(layers))


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _apply_gemma(config: ModelConfig, cfg: dict[str, Any]) -> None:
    """Gemma 2 / Gemma 3 (text): GeGLU, tied embeddings, soft-capping, alternating sliding layers."""
    gemma3 = config.architecture.startswith("Gemma3")
    layers = config.num_hidden_layers
    config.hidden_act = str(cfg.get("hidden_activation") or "gelu_pytorch_tanh")
    config.tie_word_embeddings = bool(cfg.get("tie_word_embeddings", True))
    config.qk_norm = gemma3
    config.query_pre_attn_scalar = float(cfg.get("query_pre_attn_scalar") or 256)
    config.attn_logit_softcap = _optional_float(cfg.get("attn_logit_softcapping"))
    config.final_logit_softcap = _optional_float(cfg.get("final_logit_softcapping"))
    window = cfg.get("sliding_window")
    config.sliding_window = int(window) if window else None
    if gemma3:
        pattern = int(cfg.get("sliding_window_pattern") or 6)
        config.layer_types = _layer_types(cfg, layers, lambda i: (i + 1) % pattern != 0)
    else:
        config.layer_types = _layer_types(cfg, layers, lambda i: i % 2 == 0)
    if not gemma3:
        return
    # Gemma 3 rotates global and local layers with different bases: transformers 4 writes
    # ``rope_theta`` + ``rope_local_base_freq`` (+ ``rope_scaling`` for the global ones), transformers 5
    # one ``rope_parameters`` entry per layer kind.
    per_kind = cfg.get("rope_parameters") or {}
    full = dict(per_kind.get(FULL) or {})
    local = dict(per_kind.get(SLIDING) or {})
    config.rope_theta = float(full.pop("rope_theta", cfg.get("rope_theta") or 1_000_000.0))
    scaling = full or cfg.get("rope_scaling") or None
    if scaling and str(scaling.get("rope_type") or scaling.get("type") or "default") == "default":
        scaling = None
    config.rope_scaling = dict(scaling) if scaling else None
    local_type = str(local.get("rope_type") or local.get("type") or "default")
    if local_type != "default":
        raise ModelConfigError(f"rope type {local_type!r} on sliding layers is not supported (default)")
    config.local_rope_theta = float(local.get("rope_theta", cfg.get("rope_local_base_freq") or 10_000.0))


def _apply_window(config: ModelConfig, cfg: dict[str, Any]) -> None:
    """Sliding windows as transformers applies them: Mistral's (and Phi-3's) on every layer when set
    (Mistral 7B v0.1: 4096); Qwen2/3's only with ``use_sliding_window``, on layers from
    ``max_window_layers`` on."""
    window = cfg.get("sliding_window")
    layers = config.num_hidden_layers
    if not window:
        return
    if config.architecture.startswith(("Mistral", "Phi3")):
        config.sliding_window = int(window)
        config.layer_types = (SLIDING,) * layers
    elif cfg.get("use_sliding_window"):
        config.sliding_window = int(window)
        first = int(cfg.get("max_window_layers", 28))
        config.layer_types = _layer_types(cfg, layers, lambda i: i >= first)


def _apply_phi3(config: ModelConfig, cfg: dict[str, Any]) -> None:
    """Phi-3 / 3.5 / 4 (fused qkv and gate/up projections; partial rotary; LongRoPE)."""
    rope_params = dict(cfg.get("rope_parameters") or {})
    factor = rope_params.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    config.partial_rotary_factor = float(factor or 1.0)
    _apply_window(config, cfg)
    scaling = config.rope_scaling
    if scaling is None:
        return
    scaling.pop("partial_rotary_factor", None)
    if str(scaling.get("rope_type") or scaling.get("type")) in ("su", "yarn", "longrope"):
        # "su" and "yarn" are Phi-3's older names for LongRoPE (transformers maps them the same way).
        scaling["rope_type"] = "longrope"
        scaling.setdefault(
            "original_max_position_embeddings",
            int(cfg.get("original_max_position_embeddings") or config.max_position_embeddings),
        )
        scaling.setdefault("max_position_embeddings", config.max_position_embeddings)
