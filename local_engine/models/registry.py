"""Architecture name (HF ``architectures[0]``) -> model class."""

from __future__ import annotations

from torch import nn

from local_engine.models.gemma import Gemma2ForCausalLM, Gemma3ForCausalLM
from local_engine.models.llama import LlamaForCausalLM
from local_engine.models.phi3 import Phi3ForCausalLM

MODEL_REGISTRY: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "Qwen3ForCausalLM": LlamaForCausalLM,
    "Gemma2ForCausalLM": Gemma2ForCausalLM,
    "Gemma3ForCausalLM": Gemma3ForCausalLM,
    "Gemma3ForConditionalGeneration": Gemma3ForCausalLM,  # its language model only
    "Phi3ForCausalLM": Phi3ForCausalLM,
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
