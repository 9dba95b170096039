"""Function calling for local models: tools rendered into the prompt in the model's own syntax,
tool calls parsed back out of the generated text (whole, or streamed as deltas), and the grammar
that forces a call when ``tool_choice`` requires one."""

from local_engine.tools.formats import ToolFormat, ToolsUnsupported, tool_format
from local_engine.tools.parse import ToolCall, ToolCallDelta, ToolStreamParser, parse_tool_calls
from local_engine.tools.render import forced_call_grammar, prepare_messages

__all__ = [
    "ToolCall",
    "ToolCallDelta",
    "ToolFormat",
    "ToolStreamParser",
    "ToolsUnsupported",
    "forced_call_grammar",
    "parse_tool_calls",
    "prepare_messages",
    "tool_format",
]
