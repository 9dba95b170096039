"""``/v1/models`` for local models: context length and capabilities, from the gateway (a real
``switchyard serve`` with ``local/`` deployments) and from the engine's own server, read with the
``openai`` SDK."""

from __future__ import annotations

from pathlib import Path

import openai

from local_engine import AsyncEngine, EngineConfig
from local_engine.server.app import create_app
from tests.support.engine_models import make_hf_model, write_gguf_like_llama_cpp
from tests.support.gateway_process import gateway_process
from tests.support.loopback_server import LoopbackServer

# Every model: JSON output by constrained decoding, no images. Tools: per chat template.
WITH_TOOLS = {"tools": True, "json": True, "vision": False}
NO_TOOLS = {"tools": False, "json": True, "vision": False}


def _extra(model: openai.types.Model) -> dict[str, object]:
    return dict(model.model_extra or {})


def test_gateway_reports_local_context_and_capabilities(tmp_path: Path) -> None:
    tiny, gemma = tmp_path / "tiny", tmp_path / "gemma"
    make_hf_model("llama", tiny)  # max_position_embeddings 256
    make_hf_model("gemma2", gemma, max_position_embeddings=128)
    # A template that renders tools in a syntax the engine cannot parse back: no tools for it.
    (gemma / "chat_template.jinja").write_text(
        "{% if tools %}[TOOLS]{{ tools | tojson }}[/TOOLS]{% endif %}"
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    )
    gguf_path = write_gguf_like_llama_cpp(
        make_hf_model("qwen2", tmp_path / "qwen", max_position_embeddings=200),
        tmp_path / "qwen",
        tmp_path / "q.gguf",
    )

    def local(name: str, path: Path, **params: object) -> dict[str, object]:
        return {"model_name": name, "params": {"model": f"local/{name}", "model_path": str(path), **params}}

    config = {
        "model_list": [
            local("tiny", tiny, dtype="float32", max_model_len=96),
            local("gemma", gemma, dtype="float32"),
            local("missing", tmp_path / "nowhere"),
            local("gguf", gguf_path),  # the length read from the GGUF header
            {"model_name": "smollm2", "params": {"model": "local/smollm2"}},  # the bundled GGUF: 8192
            # Two deployments, one name: a request may land on either, so the smaller context.
            local("pair", tiny, max_model_len=64),
            local("pair", tiny, max_model_len=80),
            {"model_name": "hosted", "params": {"model": "openai/gpt-4o-mini", "api_key": "sk-unused"}},
        ]
    }
    with gateway_process(config) as gw:
        client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0, timeout=120)
        listed = {m.id: _extra(m) for m in client.models.list().data}
        assert set(listed) == {"tiny", "gemma", "missing", "gguf", "smollm2", "pair", "hosted"}, gw.logs()
        assert (listed["gguf"]["max_model_len"], listed["smollm2"]["max_model_len"]) == (200, 8192)
        # The tiny template never mentions tools: the engine's Hermes prompt gives it some.
        assert listed["tiny"] == {"max_model_len": 96, "capabilities": WITH_TOOLS}
        assert listed["gemma"] == {"max_model_len": 128, "capabilities": NO_TOOLS}  # its own, under 8192
        assert listed["gguf"]["capabilities"] == listed["smollm2"]["capabilities"] == WITH_TOOLS
        assert listed["pair"]["max_model_len"] == 64
        # Unreadable model: the listing still answers, without a length it cannot know.
        assert listed["missing"] == {"capabilities": NO_TOOLS}
        assert listed["hosted"] == {}  # a hosted upstream's abilities are not ours to state
        # Once the engine runs, its own number (the same one) and retrieve agrees with list.
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=1
        )
        assert _extra(client.models.retrieve("tiny")) == listed["tiny"]
        assert _extra(client.models.retrieve("hosted")) == {}


def test_engine_server_reports_context_and_capabilities(tmp_path: Path) -> None:
    make_hf_model("llama", tmp_path)
    config = EngineConfig(model=tmp_path, dtype="float32", num_threads=1, warmup=False, max_model_len=72)
    server = LoopbackServer(create_app(AsyncEngine(config), "tiny"), "engine", log_level="warning")
    port = server.start()
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        [card] = client.models.list().data
        assert card.id == "tiny"
        assert _extra(card) == {"max_model_len": 72, "capabilities": WITH_TOOLS}
    finally:
        server.stop()
