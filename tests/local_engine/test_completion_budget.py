"""Legacy ``/v1/completions`` with ``max_tokens: null`` takes the engine's default completion budget
(the model's ``max_new_tokens``, else ``default_max_tokens``), as a chat request naming none does,
instead of running to the end of the context; absent, it is OpenAI's 16. Through the engine server
on loopback (a tiny random model), called with the ``openai`` SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest

from local_engine import AsyncEngine, EngineConfig
from local_engine.server.app import create_app
from tests.support.engine_models import make_hf_model
from tests.support.loopback_server import LoopbackServer

NO_EOS = {"ignore_eos": True}  # a random model may emit its eos token at any step
SHORT = "Hello world!"
LONG = "The quick brown fox jumps over the lazy dog. Hello world! The quick brown fox."


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model_dir = tmp_path_factory.mktemp("tiny")
    make_hf_model("llama", model_dir, seed=5)
    return model_dir


@contextmanager
def _served(model_dir: Path, **engine: object) -> Iterator[openai.OpenAI]:
    config = EngineConfig(model=model_dir, dtype="float32", num_threads=1, warmup=False, **engine)  # type: ignore[arg-type]
    server = LoopbackServer(create_app(AsyncEngine(config), "tiny"), "engine", log_level="warning")
    port = server.start()
    try:
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    finally:
        server.stop()


def test_null_max_tokens_takes_the_default_budget(model_dir: Path) -> None:
    with _served(model_dir, default_max_tokens=7, max_model_len=256) as client:
        reply = client.completions.create(model="tiny", prompt=SHORT, max_tokens=None, extra_body=NO_EOS)
        assert reply.usage is not None and reply.usage.completion_tokens == 7
        assert reply.choices[0].finish_reason == "length"
        # Every prompt of a batch gets the budget; streamed the same.
        batch = client.completions.create(
            model="tiny", prompt=[SHORT, LONG], max_tokens=None, extra_body=NO_EOS
        )
        assert batch.usage is not None and batch.usage.completion_tokens == 14
        assert [c.finish_reason for c in batch.choices] == ["length", "length"]
        stream = client.completions.create(
            model="tiny",
            prompt=SHORT,
            max_tokens=None,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=NO_EOS,
        )
        usage = [chunk.usage for chunk in stream if chunk.usage is not None]
        assert [u.completion_tokens for u in usage] == [7]
        # Absent is OpenAI's documented 16; a number is the caller's.
        assert (
            client.completions.create(model="tiny", prompt=SHORT, extra_body=NO_EOS).usage.completion_tokens
            == 16
        )
        explicit = client.completions.create(model="tiny", prompt=SHORT, max_tokens=30, extra_body=NO_EOS)
        assert explicit.usage is not None and explicit.usage.completion_tokens == 30


def test_the_models_max_new_tokens_wins_and_the_context_caps(model_dir: Path, tmp_path: Path) -> None:
    for name in model_dir.iterdir():
        (tmp_path / name.name).write_bytes(name.read_bytes())
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 2, "max_new_tokens": 5}))
    with _served(tmp_path, default_max_tokens=7) as client:
        reply = client.completions.create(model="tiny", prompt=SHORT, max_tokens=None, extra_body=NO_EOS)
        assert reply.usage is not None and reply.usage.completion_tokens == 5
    with _served(model_dir, default_max_tokens=None, max_model_len=64) as client:
        # No budget configured: each prompt up to the end of the context, never a 400 for asking nothing.
        short = client.completions.create(model="tiny", prompt=SHORT, max_tokens=None, extra_body=NO_EOS)
        long = client.completions.create(model="tiny", prompt=LONG, max_tokens=None, extra_body=NO_EOS)
        assert short.usage.prompt_tokens + short.usage.completion_tokens == 64
        assert long.usage.prompt_tokens + long.usage.completion_tokens == 64
    with _served(model_dir, default_max_tokens=50, max_model_len=64) as client:
        # A budget past what the longest prompt of a batch leaves: that much, for each prompt.
        both = client.completions.create(
            model="tiny", prompt=[SHORT, LONG], max_tokens=None, extra_body=NO_EOS
        )
        assert both.usage.completion_tokens == 2 * long.usage.completion_tokens
        assert [c.finish_reason for c in both.choices] == ["length", "length"]
