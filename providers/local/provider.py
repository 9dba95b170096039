"""Runs ``local/<name>`` deployments on an in-process ``AsyncEngine``.

``local/smollm2`` (or ``local/default``) serves the bundled SmolLM2 GGUF; any other name needs a
``model_path`` param (a HF directory or a ``.gguf`` file), or is itself taken as that path.
Optional deployment params: ``dtype``, ``quantization`` (``q8_0``: dense weights quantized to Q8_0
as they load), ``device``, ``max_model_len``, ``max_num_seqs``,
``max_num_batched_tokens``, ``block_size``, ``kv_cache_memory_bytes``, ``num_threads``,
``default_max_tokens`` (the completion budget of a request naming none; default 512).

The OpenAI translation is the engine server's own (``local_engine.server.serving``), so a request
gets the same answer through the gateway as from ``switchyard engine serve``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import orjson

from local_engine.config import EngineConfig
from local_engine.engine.async_engine import AsyncEngine, EngineDeadError
from local_engine.engine.outputs import RequestOutput
from local_engine.loader import ModelLoadError
from local_engine.model_info import describe, model_card
from local_engine.server.protocol import OpenAIError
from local_engine.server.serving import OpenAIServing
from providers.contract import Operation, ProviderCall, ProviderResponse
from providers.errors import ContextWindowExceededError, ProviderError
from providers.openai_compat.typed import generate_stream_via_chat, generate_via_chat, openai_call
from providers.schema import GenerationRequest, GenerationResponse, StreamEvent
from providers.usage import Usage

DEFAULT_NAMES = {"smollm2", "default"}
_ENGINE_PARAMS = {
    "dtype": str,
    "quantization": str,
    "device": str,
    "max_model_len": int,
    "max_num_seqs": int,
    "max_num_batched_tokens": int,
    "block_size": int,
    "kv_cache_memory_bytes": int,
    "num_threads": int,
    "default_max_tokens": int,
}


PhaseListener = Callable[[str, float, float, dict[str, Any]], None]


def report_phases(on_phase: PhaseListener, output: RequestOutput) -> None:
    """Tell ``on_phase`` (``ProviderCall.on_phase``) when a finished request queued, prefilled and
    decoded in the engine."""
    t = output.times
    if t is None or t.scheduled is None:
        return
    on_phase("engine.queue", t.arrival, t.scheduled, {})
    if t.first_token is None:
        return
    prefill = {
        "gen_ai.usage.input_tokens": len(output.prompt_token_ids),
        "switchyard.engine.prefix_cache_hit_tokens": output.num_cached_tokens,
    }
    on_phase("engine.prefill", t.scheduled, t.first_token, prefill)
    if t.finished is not None:
        made = sum(len(c.token_ids) for c in output.outputs)
        on_phase("engine.decode", t.first_token, t.finished, {"gen_ai.usage.output_tokens": made})


async def _watch_phases(
    outputs: AsyncIterator[tuple[int, RequestOutput]], on_phase: PhaseListener
) -> AsyncIterator[tuple[int, RequestOutput]]:
    async with contextlib.aclosing(outputs):
        async for item in outputs:
            yield item
            if item[1].finished:
                report_phases(on_phase, item[1])


def _provider_error(exc: OpenAIError) -> ProviderError:
    klass = ContextWindowExceededError if exc.code == "context_length_exceeded" else ProviderError
    return klass(exc.status, exc.message, exc.type, exc.code, exc.param)


def engine_config(upstream_model: str, params: Mapping[str, Any]) -> EngineConfig:
    """The engine settings for a deployment (``ProviderError`` 400 for a bad param)."""
    model = params.get("model_path")
    if model is None and upstream_model not in DEFAULT_NAMES:
        model = upstream_model
    values: dict[str, Any] = {"model": model}
    for name, kind in _ENGINE_PARAMS.items():
        if params.get(name) is not None:
            values[name] = kind(params[name])
    try:
        return EngineConfig(**values)
    except (TypeError, ValueError) as exc:
        raise ProviderError(
            400, f"local model {upstream_model!r}: {exc}", code="bad_deployment_config"
        ) from None


class LocalProvider:
    """``Provider`` for ``local/`` deployments: one engine per distinct model configuration.

    Serves chat and legacy completions (raw OpenAI bodies, as ``switchyard engine serve`` does);
    not embeddings: the engine's models are generative and define no pooling, so an embeddings
    request is refused by the router before it gets here.
    """

    capabilities: frozenset[Operation] = frozenset({"chat", "completions"})

    def __init__(self) -> None:
        self._servings: dict[tuple[Any, ...], OpenAIServing] = {}
        self._cards: dict[tuple[Any, ...], dict[str, Any]] = {}  # describe()'s, per engine key
        self._lock = asyncio.Lock()

    def engines(self) -> list[tuple[str, AsyncEngine]]:
        """The engines started so far, each with the upstream model name it serves (for metrics)."""
        return [(key[0], serving.engine) for key, serving in list(self._servings.items())]

    async def describe(self, upstream_model: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """What ``/v1/models`` adds for a deployment: its context length (its engine's, else read from
        the model's config without loading it) and capabilities; never raises for a bad deployment."""
        try:
            config = engine_config(upstream_model, params)
        except ProviderError:
            return model_card(None, None)
        key = self._engine_key(upstream_model, config)
        serving = self._servings.get(key)
        if serving is not None:
            return model_card(serving.engine.max_model_len, serving.engine.tokenizer.chat_template)
        card = self._cards.get(key)
        if card is None:  # the model's files do not change under a running gateway: read them once
            card = self._cards[key] = await asyncio.to_thread(describe, config)
        return card

    @staticmethod
    def _engine_key(upstream_model: str, config: EngineConfig) -> tuple[Any, ...]:
        """Deployments sharing a model and these settings share one engine."""
        return (
            upstream_model,
            str(config.model),
            str(config.dtype),
            config.quantization,
            config.device,
            config.max_model_len,
        )

    async def _serving(self, call: ProviderCall) -> OpenAIServing:
        config = engine_config(call.upstream_model, call.params)
        key = self._engine_key(call.upstream_model, config)
        serving = self._servings.get(key)
        if serving is not None:
            return serving
        async with self._lock:
            serving = self._servings.get(key)
            if serving is None:
                engine = AsyncEngine(config)
                try:
                    await engine.start()
                except ModelLoadError as exc:
                    await engine.shutdown()
                    raise ProviderError(
                        503,
                        f"local model {call.upstream_model!r} cannot be loaded: {exc}",
                        code="model_load_failed",
                    ) from None
                serving = OpenAIServing(engine, call.upstream_model)
                self._servings[key] = serving
        return serving

    @staticmethod
    def _body(call: ProviderCall) -> dict[str, Any]:
        body = dict(call.body)  # never mutate the caller's body (the router may retry with it)
        body["model"] = call.upstream_model
        return body

    async def chat(self, call: ProviderCall) -> ProviderResponse:
        return await self._complete(call, "chat")

    async def completions(self, call: ProviderCall) -> ProviderResponse:
        return await self._complete(call, "completions")

    def chat_stream(self, call: ProviderCall) -> AsyncIterator[bytes]:
        return self._stream(call, "chat")

    def completions_stream(self, call: ProviderCall) -> AsyncIterator[bytes]:
        return self._stream(call, "completions")

    async def generate(self, request: GenerationRequest, call: ProviderCall) -> GenerationResponse:
        return await generate_via_chat(self, request, call)

    def generate_stream(self, request: GenerationRequest, call: ProviderCall) -> AsyncIterator[StreamEvent]:
        return generate_stream_via_chat(self, request, call)

    async def count_tokens(self, request: GenerationRequest, call: ProviderCall) -> int:
        """The prompt tokens ``request`` takes on this deployment, exactly: its messages and tools
        through the engine's chat template and tokenizer, as a generation of it counts them in
        ``usage.prompt_tokens`` (the same ``prepare_chat``). Loads the model when no request has.
        A prompt over the model's context window is refused as its generation would be (400
        ``context_length_exceeded``): the engine has no count for what it would not run.
        """
        serving = await self._serving(call)
        body = self._body(openai_call(request, call, stream=False))
        try:
            _, prepared = serving.prepare_chat(body)
        except OpenAIError as exc:
            raise _provider_error(exc) from None
        return len(prepared.prompts[0])

    async def _complete(self, call: ProviderCall, operation: Operation) -> ProviderResponse:
        serving = await self._serving(call)
        body = self._body(call)
        body["stream"] = False
        try:
            if operation == "chat":
                _, prepared = serving.prepare_chat(body)
            else:
                _, prepared = serving.prepare_completion(body)
            outputs = await serving.run_all(prepared)
            if call.on_phase is not None:
                for output in outputs:
                    report_phases(call.on_phase, output)
        except OpenAIError as exc:
            raise _provider_error(exc) from None
        except EngineDeadError as exc:
            raise ProviderError(503, str(exc), code="engine_dead") from None
        if operation == "chat":
            response = serving.chat_response(prepared, outputs)
        else:
            response = serving.completion_response(prepared, outputs)
        usage = response["usage"]
        return ProviderResponse(
            status=200,
            body=orjson.dumps(response),
            usage=Usage(prompt_tokens=usage["prompt_tokens"], completion_tokens=usage["completion_tokens"]),
            headers={"content-type": "application/json"},
        )

    async def _stream(self, call: ProviderCall, operation: Operation) -> AsyncIterator[bytes]:
        serving = await self._serving(call)
        body = self._body(call)
        body["stream"] = True
        try:
            if operation == "chat":
                _, prepared = serving.prepare_chat(body)
            else:
                _, prepared = serving.prepare_completion(body)
        except OpenAIError as exc:
            raise _provider_error(exc) from None
        stream = serving.stream_outputs(prepared)
        if call.on_phase is not None:
            stream = _watch_phases(stream, call.on_phase)
        # Usage always goes last; the gateway drops it when the client did not ask for it.
        if operation == "chat":
            chunks = serving.chat_chunks(prepared, stream, force_usage=True)
        else:
            chunks = serving.completion_chunks(prepared, stream, force_usage=True)
        try:
            async for chunk in chunks:
                yield b"data: " + orjson.dumps(chunk) + b"\n\n"
        except OpenAIError as exc:
            raise _provider_error(exc) from None
        except EngineDeadError as exc:
            raise ProviderError(503, str(exc), code="engine_dead") from None
        finally:
            # Closing the stream (client gone) aborts the engine request and frees its blocks.
            with contextlib.suppress(Exception):
                await chunks.aclose()  # type: ignore[attr-defined]
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]

    async def aclose(self) -> None:
        """Shut every engine down (gateway shutdown)."""
        servings, self._servings = list(self._servings.values()), {}
        for serving in servings:
            await serving.engine.shutdown()
