"""Tool calls out of generated text, whole or as it streams.

Both paths run one scan over the text so far (``_snapshot``): the content before the first call,
and per call its name (once its JSON string is complete) and the raw text of its arguments value
(growing as tokens arrive). The raw text is a prefix of the final arguments, so the streamed
argument deltas concatenate to exactly what the non-streamed reply carries. Text after the first
call (whitespace between calls, trailing chatter) is not content.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

from local_engine.tools.formats import HERMES_END, HERMES_START, ToolFormat

_WS = " \t\r\n"
_ARGUMENT_KEYS = ("arguments", "parameters")


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass(slots=True)
class ToolCallDelta:
    """A streamed piece of call ``index``: ``id`` and ``name`` in its first delta only."""

    index: int
    arguments: str
    id: str | None = None
    name: str | None = None


def _skip_ws(s: str, i: int) -> int:
    while i < len(s) and s[i] in _WS:
        i += 1
    return i


def _string_end(s: str, i: int) -> int | None:
    """``s[i]`` is an opening quote: the index after the closing one, None if not there yet."""
    i += 1
    while i < len(s):
        if s[i] == "\\":
            i += 2
        elif s[i] == '"':
            return i + 1
        else:
            i += 1
    return None


def _value_end(s: str, i: int) -> int | None:
    """The index after the JSON value starting at ``s[i]``, None while it is incomplete."""
    if i >= len(s):
        return None
    if s[i] == '"':
        return _string_end(s, i)
    if s[i] in "{[":
        depth = 0
        while i < len(s):
            c = s[i]
            if c == '"':
                end = _string_end(s, i)
                if end is None:
                    return None
                i = end
                continue
            if c in "{[":
                depth += 1
            elif c in "}]":
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        return None
    j = i
    while j < len(s) and s[j] not in ",}]" + _WS:
        j += 1
    return j if j < len(s) else None  # a number at the very end may still grow


def _top_fields(obj: str) -> dict[str, tuple[int, int | None]]:
    """Top-level ``key -> (value start, value end or None)`` of a (partial) JSON object text."""
    fields: dict[str, tuple[int, int | None]] = {}
    i = _skip_ws(obj, 1)
    while i < len(obj) and obj[i] == '"':
        key_end = _string_end(obj, i)
        if key_end is None:
            break
        key = json.loads(obj[i:key_end])
        i = _skip_ws(obj, key_end)
        if i >= len(obj) or obj[i] != ":":
            break
        start = _skip_ws(obj, i + 1)
        if start >= len(obj):
            break
        end = _value_end(obj, start)
        fields[key] = (start, end)
        if end is None:
            break
        i = _skip_ws(obj, end)
        if i >= len(obj) or obj[i] != ",":
            break
        i = _skip_ws(obj, i + 1)
    return fields


@dataclass(slots=True)
class _CallState:
    name: str | None
    arguments: str  # raw text so far (a prefix of the final arguments)
    complete: bool  # the call's JSON object is closed
    valid: bool  # closed, parses, and has a string name


def _call_state(block: str, closed: bool) -> _CallState:
    obj = block.strip(_WS) if closed else block.lstrip(_WS)
    if not obj.startswith("{"):
        return _CallState(None, "", closed, False)
    fields = _top_fields(obj)
    name = None
    if "name" in fields and fields["name"][1] is not None:
        start, end = fields["name"]
        value = json.loads(obj[start:end])
        name = value if isinstance(value, str) else None
    arguments = ""
    key = next((k for k in _ARGUMENT_KEYS if k in fields), None)
    if key is not None:
        start, end = fields[key]
        raw = obj[start:end] if end is not None else obj[start:]
        if raw.startswith('"'):
            # Arguments sent as a JSON string: only its decoded value is the arguments text.
            arguments = json.loads(raw) if end is not None else ""
            arguments = arguments if isinstance(arguments, str) else ""
        else:
            arguments = raw
    valid = False
    if closed:
        try:
            parsed = json.loads(obj)
        except ValueError:
            parsed = None
        valid = isinstance(parsed, dict) and isinstance(parsed.get("name"), str)
        if valid and key is None:
            arguments = "{}"
    return _CallState(name, arguments, closed, valid)


def _held(text: str, marker: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``marker``."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0


def _snapshot(text: str, fmt: ToolFormat, final: bool) -> tuple[str, list[_CallState]]:
    """(content, calls) of ``text``; while not ``final``, content that may start a call is held."""
    if fmt.name == "llama3_json":
        body = text.lstrip(_WS)
        if not body:
            return (text if final else ""), []
        if not body.startswith("{"):
            return text, []
        calls = []
        i = 0
        while True:
            i = _skip_ws(body, i)
            while i < len(body) and body[i] == ";":
                i = _skip_ws(body, i + 1)
            if i >= len(body) or body[i] != "{":
                break
            end = _value_end(body, i)
            calls.append(_call_state(body[i : end or len(body)], end is not None))
            if end is None:
                break
            i = end
        return "", calls
    start = text.find(HERMES_START)
    if start < 0:
        return (text if final else text[: len(text) - _held(text, HERMES_START)]), []
    calls = []
    while start >= 0:
        begin = start + len(HERMES_START)
        end = text.find(HERMES_END, begin)
        calls.append(_call_state(text[begin : end if end >= 0 else len(text)], end >= 0 or final))
        if end < 0:
            break
        start = text.find(HERMES_START, end + len(HERMES_END))
    return text[: text.find(HERMES_START)], calls


def parse_tool_calls(text: str, fmt: ToolFormat) -> tuple[str | None, list[ToolCall]]:
    """A finished reply's ``(content, tool_calls)``. Text that is not wholly valid calls after its
    content (a malformed call) is returned as plain content with no calls."""
    content, states = _snapshot(text, fmt, final=True)
    if not states or not all(s.valid for s in states):
        return text, []
    calls = [ToolCall(new_call_id(), s.name or "", s.arguments) for s in states]
    return (content if content.strip() else None), calls


@dataclass
class ToolStreamParser:
    """Feed the text deltas of one choice; get content deltas and tool-call deltas back."""

    fmt: ToolFormat
    text: str = ""
    _content_sent: int = 0
    _ids: list[str] = field(default_factory=list)
    _args_sent: list[int] = field(default_factory=list)

    @property
    def num_calls(self) -> int:
        return len(self._ids)

    def feed(self, delta: str, final: bool = False) -> tuple[str, list[ToolCallDelta]]:
        self.text += delta
        content, states = _snapshot(self.text, self.fmt, final)
        content_delta = content[self._content_sent :]
        self._content_sent = max(self._content_sent, len(content))
        deltas: list[ToolCallDelta] = []
        for index, state in enumerate(states):
            if index == len(self._ids):
                if state.name is None:
                    break  # a call's name goes out first, before any of its arguments
                self._ids.append(new_call_id())
                self._args_sent.append(0)
                first = True
            else:
                first = False
            new_args = state.arguments[self._args_sent[index] :]
            self._args_sent[index] = len(state.arguments)
            if first:
                deltas.append(ToolCallDelta(index, new_args, self._ids[index], state.name))
            elif new_args:
                deltas.append(ToolCallDelta(index, new_args))
        return content_delta, deltas
