"""OpenAI chat/completions semantics on top of the ``AsyncEngine``: request -> prompt ids and
``SamplingParams``; engine outputs -> OpenAI response bodies and stream chunks.

Shared by the standalone server (``local_engine.server.app``) and the gateway's ``local/`` provider,
so both speak exactly the same dialect. Everything here returns plain dicts; framing (HTTP, SSE)
is the caller's job.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from local_engine.detokenizer import token_bytes
from local_engine.engine.async_engine import AsyncEngine
from local_engine.engine.outputs import CompletionOutput, RequestOutput, TokenLogprob
from local_engine.generation_defaults import GenerationDefaults
from local_engine.sampling_params import SamplingParams
from local_engine.server.constraints import ToolPlan, output_grammar, tool_plan
from local_engine.server.protocol import ChatCompletionRequest, CompletionRequest, OpenAIError
from local_engine.tokenizer import ChatTemplateError
from local_engine.tools import ToolCallDelta, ToolFormat, ToolStreamParser, parse_tool_calls, prepare_messages

_M = TypeVar("_M", bound=BaseModel)


def parse_request(model: type[_M], body: Any) -> _M:
    """Validate a JSON body; a bad field becomes a 400 naming it."""
    if not isinstance(body, dict):
        raise OpenAIError(400, "request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first.get("loc", ()))
        raise OpenAIError(400, f"{param}: {first.get('msg')}", param=param or None) from None


def _message_text(content: str | list[dict[str, Any]] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for part in content:
        if part.get("type") != "text":
            raise OpenAIError(
                400, f"content part type {part.get('type')!r} is not supported", param="messages"
            )
        parts.append(str(part.get("text", "")))
    return "".join(parts)


@dataclass
class Prepared:
    """A validated request: prompt ids per prompt, sampling params, ids and flags for rendering."""

    request_id: str
    prompts: list[list[int]]
    params: SamplingParams
    created: int
    include_usage: bool
    echo_texts: list[str] | None = None
    # Chat with tools: the syntax to parse tool calls out of each choice's text.
    tool_format: ToolFormat | None = None


class OpenAIServing:
    """Turns OpenAI requests into engine requests and engine outputs into OpenAI bodies."""

    def __init__(self, engine: AsyncEngine, model_name: str | None = None) -> None:
        self.engine = engine
        self.model_name = model_name or engine.model_name
        # The model's own sampling defaults, and the completion budget of requests that name none.
        self.defaults = GenerationDefaults.from_generation_config(
            engine.generation_config, engine.config.default_max_tokens
        )

    # -- preparing -------------------------------------------------------------------------------

    def _params(
        self,
        req: ChatCompletionRequest | CompletionRequest,
        max_tokens: int | None,
        logprobs: int | None,
        plan: ToolPlan | None = None,
    ):
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        values: dict[str, Any] = {
            "n": req.n,
            # temperature, top_p, top_k, min_p, repetition_penalty: the request's, else the model's.
            **self.defaults.sampling_for(req),
            "presence_penalty": req.presence_penalty or 0.0,
            "frequency_penalty": req.frequency_penalty or 0.0,
            "seed": req.seed,
            "stop": stop,
            "stop_token_ids": list(req.stop_token_ids or []),
            "max_tokens": max_tokens,
            "min_tokens": req.min_tokens or 0,
            "ignore_eos": req.ignore_eos,
            "logprobs": logprobs,
            "skip_special_tokens": req.skip_special_tokens,
            "include_stop_str_in_output": req.include_stop_str_in_output,
            "grammar": output_grammar(req, plan),
        }
        try:
            return SamplingParams(**values)
        except ValueError as exc:
            param = str(exc).split(":", 1)[0]
            raise OpenAIError(400, str(exc), param=param if param in values else None) from None

    def _check_length(self, prompt: list[int], max_tokens: int | None) -> None:
        limit = self.engine.max_model_len
        if not prompt:
            raise OpenAIError(400, "the prompt is empty", param="prompt")
        wanted = len(prompt) + (max_tokens or 1)
        if wanted > limit:
            raise OpenAIError(
                400,
                f"This model's maximum context length is {limit} tokens. However, you requested {wanted} "
                f"tokens ({len(prompt)} in the messages, {max_tokens or 1} in the completion). "
                "Please reduce the length of the messages or completion.",
                param="messages",
                code="context_length_exceeded",
            )

    def prepare_chat(self, body: Any) -> tuple[ChatCompletionRequest, Prepared]:
        req = parse_request(ChatCompletionRequest, body)
        messages = [
            {**m.model_dump(exclude_none=True), "content": _message_text(m.content)} for m in req.messages
        ]
        tokenizer = self.engine.tokenizer
        plan = tool_plan(req, tokenizer.chat_template)
        tools = None
        if plan is not None and plan.fmt is not None:
            messages, tools = prepare_messages(messages, plan.tools, plan.fmt)
        try:
            text = tokenizer.apply_chat_template(
                messages,
                add_generation_prompt=req.add_generation_prompt,
                tools=tools,
                **(req.chat_template_kwargs or {}),
            )
        except ChatTemplateError as exc:
            raise OpenAIError(400, str(exc), param="messages") from None
        prompt = tokenizer.encode(text)
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        if max_tokens is None:
            max_tokens = self.defaults.max_tokens_for(len(prompt), self.engine.max_model_len)
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        if req.top_logprobs and not req.logprobs:
            raise OpenAIError(400, "top_logprobs requires logprobs to be true", param="top_logprobs")
        params = self._params(req, max_tokens, logprobs, plan)
        self._check_length(prompt, max_tokens)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return req, Prepared(
            f"chatcmpl-{uuid.uuid4().hex}",
            [prompt],
            params,
            int(time.time()),
            include_usage,
            tool_format=plan.fmt if plan is not None and plan.parse else None,
        )

    def prepare_completion(self, body: Any) -> tuple[CompletionRequest, Prepared]:
        req = parse_request(CompletionRequest, body)
        if req.suffix:
            raise OpenAIError(400, "suffix is not supported", param="suffix")
        tokenizer = self.engine.tokenizer
        raw = req.prompt
        if isinstance(raw, str):
            prompts = [tokenizer.encode(raw)]
        elif raw and all(isinstance(p, int) for p in raw):
            prompts = [list(raw)]  # type: ignore[arg-type]
        elif raw:
            prompts = [tokenizer.encode(p) if isinstance(p, str) else list(p) for p in raw]  # type: ignore[union-attr]
        else:
            raise OpenAIError(400, "prompt must not be empty", param="prompt")
        max_tokens = req.max_tokens
        if max_tokens is None:
            # An explicit null (absent is OpenAI's 16) takes the chat default budget, not the whole
            # context: vLLM's reading of null let a plain prompt ramble for minutes.
            longest = max(len(p) for p in prompts)
            max_tokens = self.defaults.max_tokens_for(longest, self.engine.max_model_len)
        params = self._params(req, max_tokens, req.logprobs)
        for prompt in prompts:
            self._check_length(prompt, max_tokens)
        echo = [tokenizer.decode(p, skip_special_tokens=False) for p in prompts] if req.echo else None
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return req, Prepared(
            f"cmpl-{uuid.uuid4().hex}", prompts, params, int(time.time()), include_usage, echo
        )

    # -- running ---------------------------------------------------------------------------------

    async def _final(self, request_id: str, prompt: list[int], params: SamplingParams) -> RequestOutput:
        last: RequestOutput | None = None
        try:
            async for output in self.engine.generate(request_id, prompt, params):
                last = output
        except ValueError as exc:
            raise OpenAIError(400, str(exc)) from None
        assert last is not None
        return last

    def stream_outputs(self, prepared: Prepared) -> AsyncIterator[tuple[int, RequestOutput]]:
        """``(prompt index, output)`` for each step of each prompt (prompts run one after another)."""

        async def run() -> AsyncIterator[tuple[int, RequestOutput]]:
            for i, prompt in enumerate(prepared.prompts):
                gen = self.engine.generate(f"{prepared.request_id}-{i}", prompt, prepared.params)
                try:
                    # aclosing: closing this stream must close (and so abort) the engine request at once.
                    async with contextlib.aclosing(gen):
                        async for output in gen:
                            yield i, output
                except ValueError as exc:
                    raise OpenAIError(400, str(exc)) from None

        return run()

    async def run_all(self, prepared: Prepared) -> list[RequestOutput]:
        import asyncio

        return list(
            await asyncio.gather(
                *(
                    self._final(f"{prepared.request_id}-{i}", p, prepared.params)
                    for i, p in enumerate(prepared.prompts)
                )
            )
        )

    # -- rendering -------------------------------------------------------------------------------

    @staticmethod
    def usage(prompts: list[list[int]], outputs: list[RequestOutput]) -> dict[str, int]:
        prompt_tokens = sum(len(p) for p in prompts)
        completion_tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    @staticmethod
    def _finish(c: CompletionOutput) -> str | None:
        if c.finish_reason is None:
            return None
        return "length" if c.finish_reason == "length" else "stop"

    def chat_logprobs(self, items: list[TokenLogprob]) -> dict[str, Any]:
        # A token holding part of a multi-byte character reads as U+FFFD; its bytes are the raw ones.
        tokenizer = self.engine.tokenizer
        return {
            "content": [
                {
                    "token": lp.token,
                    "logprob": lp.logprob,
                    "bytes": list(token_bytes(tokenizer, lp.token_id)),
                    "top_logprobs": [
                        {"token": text, "logprob": value, "bytes": list(token_bytes(tokenizer, token_id))}
                        for token_id, text, value in lp.top
                    ],
                }
                for lp in items
            ]
        }

    @staticmethod
    def completion_logprobs(items: list[TokenLogprob], offset: int) -> dict[str, Any]:
        offsets = []
        for lp in items:
            offsets.append(offset)
            offset += len(lp.token)
        return {
            "tokens": [lp.token for lp in items],
            "token_logprobs": [lp.logprob for lp in items],
            "top_logprobs": [{text: value for _, text, value in lp.top} for lp in items],
            "text_offset": offsets,
        }

    def chat_response(self, prepared: Prepared, outputs: list[RequestOutput]) -> dict[str, Any]:
        choices = []
        for c in outputs[0].outputs:
            message: dict[str, Any] = {"role": "assistant", "content": c.text}
            finish = self._finish(c)
            if prepared.tool_format is not None:
                content, calls = parse_tool_calls(c.text, prepared.tool_format)
                if calls:
                    message["content"] = content
                    message["tool_calls"] = [
                        {
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": call.arguments},
                        }
                        for call in calls
                    ]
                    finish = "tool_calls" if finish == "stop" else finish
            choice: dict[str, Any] = {
                "index": c.index,
                "message": message,
                "logprobs": self.chat_logprobs(c.logprobs) if c.logprobs is not None else None,
                "finish_reason": finish,
            }
            choices.append(choice)
        return {
            "id": prepared.request_id,
            "object": "chat.completion",
            "created": prepared.created,
            "model": self.model_name,
            "choices": choices,
            "usage": self.usage(prepared.prompts, outputs),
        }

    def completion_response(self, prepared: Prepared, outputs: list[RequestOutput]) -> dict[str, Any]:
        n = prepared.params.n
        choices = []
        for i, output in enumerate(outputs):
            prefix = prepared.echo_texts[i] if prepared.echo_texts else ""
            for c in output.outputs:
                logprobs = (
                    self.completion_logprobs(c.logprobs, len(prefix)) if c.logprobs is not None else None
                )
                choices.append(
                    {
                        "index": i * n + c.index,
                        "text": prefix + c.text,
                        "logprobs": logprobs,
                        "finish_reason": self._finish(c),
                    }
                )
        return {
            "id": prepared.request_id,
            "object": "text_completion",
            "created": prepared.created,
            "model": self.model_name,
            "choices": choices,
            "usage": self.usage(prepared.prompts, outputs),
        }

    async def chat_chunks(
        self, prepared: Prepared, stream: AsyncIterator[tuple[int, RequestOutput]], force_usage: bool = False
    ) -> AsyncIterator[dict[str, Any]]:
        """``chat.completion.chunk`` dicts: a role chunk per choice, content deltas, finish, then usage."""
        base = {"id": prepared.request_id, "object": "chat.completion.chunk", "created": prepared.created}
        base["model"] = self.model_name
        started: set[int] = set()
        parsers: dict[int, ToolStreamParser] = {}
        last: RequestOutput | None = None
        async for _, output in stream:
            last = output
            for c in output.outputs:
                if c.index not in started:
                    started.add(c.index)
                    yield {
                        **base,
                        "choices": [
                            {
                                "index": c.index,
                                "delta": {"role": "assistant", "content": ""},
                                "logprobs": None,
                                "finish_reason": None,
                            }
                        ],
                    }
                finish = self._finish(c)
                if not c.text_delta and finish is None and not c.num_new_tokens:
                    continue
                logprobs = None
                if c.logprobs is not None and c.num_new_tokens:
                    logprobs = self.chat_logprobs(c.logprobs[-c.num_new_tokens :])
                if prepared.tool_format is not None:
                    parser = parsers.setdefault(c.index, ToolStreamParser(prepared.tool_format))
                    for choice in self._tool_stream_choices(parser, c.index, c.text_delta, finish, logprobs):
                        yield {**base, "choices": [choice]}
                    continue
                delta = {"content": c.text_delta} if c.text_delta or finish is None else {}
                yield {
                    **base,
                    "choices": [
                        {"index": c.index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
                    ],
                }
        if (prepared.include_usage or force_usage) and last is not None:
            yield {**base, "choices": [], "usage": self.usage(prepared.prompts, [last])}

    @staticmethod
    def _tool_stream_choices(
        parser: ToolStreamParser, index: int, text_delta: str, finish: str | None, logprobs: Any
    ) -> list[dict[str, Any]]:
        """One step of a choice whose text may hold tool calls: its content delta, then a delta per
        tool-call piece (id, type and name first, then arguments), the finish reason on the last."""
        content, calls = parser.feed(text_delta, final=finish is not None)
        deltas: list[dict[str, Any]] = [{"content": content}] if content else []
        deltas.extend({"tool_calls": [_tool_call_delta(d)]} for d in calls)
        if finish is not None:
            finish = "tool_calls" if finish == "stop" and parser.num_calls else finish
            deltas = deltas or [{}]
        choices = [
            {"index": index, "delta": delta, "logprobs": None, "finish_reason": None} for delta in deltas
        ]
        if choices:
            choices[0]["logprobs"] = logprobs
            choices[-1]["finish_reason"] = finish
        return choices

    async def completion_chunks(
        self, prepared: Prepared, stream: AsyncIterator[tuple[int, RequestOutput]], force_usage: bool = False
    ) -> AsyncIterator[dict[str, Any]]:
        """``text_completion`` chunks (one per new text piece per choice), then usage."""
        base = {"id": prepared.request_id, "object": "text_completion", "created": prepared.created}
        base["model"] = self.model_name
        n = prepared.params.n
        finals: dict[int, RequestOutput] = {}
        echoed: set[int] = set()
        offsets: dict[int, int] = {}
        async for i, output in stream:
            finals[i] = output
            for c in output.outputs:
                index = i * n + c.index
                text = c.text_delta
                if prepared.echo_texts and index not in echoed:
                    echoed.add(index)
                    text = prepared.echo_texts[i] + text
                finish = self._finish(c)
                if not text and finish is None:
                    continue
                logprobs = None
                if c.logprobs is not None and c.num_new_tokens:
                    start = offsets.get(index, len(prepared.echo_texts[i]) if prepared.echo_texts else 0)
                    logprobs = self.completion_logprobs(c.logprobs[-c.num_new_tokens :], start)
                    offsets[index] = start + sum(len(lp.token) for lp in c.logprobs[-c.num_new_tokens :])
                yield {
                    **base,
                    "choices": [
                        {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
                    ],
                }
        if (prepared.include_usage or force_usage) and finals:
            outputs = [finals[i] for i in sorted(finals)]
            yield {**base, "choices": [], "usage": self.usage(prepared.prompts, outputs)}


def _tool_call_delta(delta: ToolCallDelta) -> dict[str, Any]:
    if delta.id is None:
        return {"index": delta.index, "function": {"arguments": delta.arguments}}
    function = {"name": delta.name, "arguments": delta.arguments}
    return {"index": delta.index, "id": delta.id, "type": "function", "function": function}
