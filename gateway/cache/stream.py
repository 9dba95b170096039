"""Streamed responses in the cache: assemble the chunks into one completion, replay it as SSE.

The cache stores one format, the non-streaming ``chat.completion`` JSON, whichever way the
answer was first produced; a streamed hit replays it as OpenAI ``chat.completion.chunk``
events ending in ``data: [DONE]``, so SDKs reassemble identical text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

_PIECE = 64  # characters of content per replayed chunk


@dataclass(slots=True)
class _Choice:
    index: int
    role: str = "assistant"
    content: list[str] = field(default_factory=list)
    refusal: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    logprobs: list[Any] | None = None
    finish_reason: str | None = None


class StreamAssembler:
    """Feed it each chunk object of a stream; ``completion()`` is the equivalent non-streamed body."""

    def __init__(self) -> None:
        self.id: str | None = None
        self.created: int | None = None
        self.model: str | None = None
        self.system_fingerprint: str | None = None
        self.usage: dict[str, Any] | None = None
        self.choices: dict[int, _Choice] = {}
        self.broken = False

    def feed(self, chunk: dict[str, Any]) -> None:
        try:
            self._feed(chunk)
        except (TypeError, KeyError, AttributeError, ValueError):
            self.broken = True  # an odd chunk: never cache what we could not follow

    def _feed(self, chunk: dict[str, Any]) -> None:
        self.id = self.id or chunk.get("id")
        self.created = self.created or chunk.get("created")
        self.model = self.model or chunk.get("model")
        self.system_fingerprint = self.system_fingerprint or chunk.get("system_fingerprint")
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for c in chunk.get("choices") or ():
            idx = int(c.get("index", 0))
            ch = self.choices.get(idx)
            if ch is None:
                ch = self.choices[idx] = _Choice(idx)
            delta = c.get("delta") or {}
            if delta.get("role"):
                ch.role = delta["role"]
            if delta.get("content"):
                ch.content.append(delta["content"])
            if delta.get("refusal"):
                ch.refusal.append(delta["refusal"])
            if delta.get("reasoning_content"):
                ch.reasoning.append(delta["reasoning_content"])
            for tc in delta.get("tool_calls") or ():
                slot = ch.tool_calls.setdefault(
                    int(tc.get("index", 0)), {"id": None, "type": "function", "name": "", "arguments": ""}
                )
                if tc.get("id"):
                    slot["id"] = tc["id"]
                if tc.get("type"):
                    slot["type"] = tc["type"]
                fn = tc.get("function") or {}
                if fn.get("name"):
                    slot["name"] += fn["name"]
                if fn.get("arguments"):
                    slot["arguments"] += fn["arguments"]
            lp = c.get("logprobs")
            if lp and lp.get("content"):
                ch.logprobs = (ch.logprobs or []) + list(lp["content"])
            if c.get("finish_reason"):
                ch.finish_reason = c["finish_reason"]

    @property
    def complete(self) -> bool:
        """Every choice finished normally (an aborted or errored stream is never cached)."""
        return (
            not self.broken
            and bool(self.choices)
            and all(
                c.finish_reason in ("stop", "length", "tool_calls", "function_call", "content_filter")
                for c in self.choices.values()
            )
        )

    def completion(self) -> dict[str, Any]:
        choices = []
        for idx in sorted(self.choices):
            c = self.choices[idx]
            message: dict[str, Any] = {"role": c.role, "content": "".join(c.content) if c.content else None}
            if c.refusal:
                message["refusal"] = "".join(c.refusal)
            if c.reasoning:
                message["reasoning_content"] = "".join(c.reasoning)
            if c.tool_calls:
                message["tool_calls"] = [
                    {
                        "id": t["id"],
                        "type": t["type"],
                        "function": {"name": t["name"], "arguments": t["arguments"]},
                    }
                    for _, t in sorted(c.tool_calls.items())
                ]
            choices.append(
                {
                    "index": idx,
                    "message": message,
                    "logprobs": {"content": c.logprobs} if c.logprobs is not None else None,
                    "finish_reason": c.finish_reason,
                }
            )
        out: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.system_fingerprint:
            out["system_fingerprint"] = self.system_fingerprint
        if self.usage is not None:
            out["usage"] = self.usage
        return out

    def completion_bytes(self) -> bytes:
        return orjson.dumps(self.completion())


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def replay_sse(completion: bytes | dict[str, Any], *, include_usage: bool = False) -> bytes:
    """A stored ``chat.completion`` as the full SSE body of the equivalent stream, ``[DONE]`` included."""
    body = orjson.loads(completion) if isinstance(completion, bytes | bytearray) else completion
    head = {
        "id": body.get("id"),
        "object": "chat.completion.chunk",
        "created": body.get("created"),
        "model": body.get("model"),
    }
    if body.get("system_fingerprint"):
        head["system_fingerprint"] = body["system_fingerprint"]
    out: list[bytes] = []

    def chunk(idx: int, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> None:
        out.append(
            _event(
                {
                    **head,
                    "choices": [
                        {"index": idx, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
                    ],
                }
            )
        )

    for choice in body.get("choices") or ():
        idx = choice.get("index", 0)
        msg = choice.get("message") or {}
        chunk(idx, {"role": msg.get("role", "assistant"), "content": ""})
        if msg.get("reasoning_content"):
            chunk(idx, {"reasoning_content": msg["reasoning_content"]})
        content = msg.get("content") or ""
        lp = (choice.get("logprobs") or {}).get("content")
        if lp and "".join(str(t.get("token", "")) for t in lp) == content:
            # With logprobs, one chunk per token keeps each token's logprob next to its text.
            for tok in lp:
                chunk(idx, {"content": tok.get("token", "")}, logprobs={"content": [tok]})
        else:
            for i in range(0, len(content), _PIECE):
                chunk(idx, {"content": content[i : i + _PIECE]})
        if msg.get("refusal"):
            chunk(idx, {"refusal": msg["refusal"]})
        for i, tc in enumerate(msg.get("tool_calls") or ()):
            chunk(idx, {"tool_calls": [{"index": i, **tc}]})
        chunk(idx, {}, choice.get("finish_reason") or "stop")
    if include_usage and body.get("usage") is not None:
        out.append(_event({**head, "choices": [], "usage": body["usage"]}))
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)
