"""Architecture name (HF ``architectures[0]``) -> model class."""

from __future__ import annotations

from torch import nn

from local_engine.models.llama import LlamaForCausalLM

MODEL_REGISTRY: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "Qwen3ForCausalLM": LlamaForCausalLM,
}


class UnsupportedArchitecture(ValueError):
    """No model class implements this architecture."""


def get_model_class(architecture: str) -> type[nn.Module]:
    """The class implementing ``architecture``, or ``UnsupportedArchitecture`` naming the supported ones."""
    try:
        return MODEL_REGISTRY[architecture]
    except KeyError:
        raise UnsupportedArchitecture(
            f"architecture {architecture!r} is not supported (supported: {', '.join(sorted(MODEL_REGISTRY))})"
        ) from None
