"""Wire-format codecs: pure translations between each API's JSON/SSE and ``providers.schema``.

One module per format (``openai_chat``, ``anthropic_messages``, ``openai_responses``), each both
ways: client side (a door parses a body, writes a response or stream) and upstream side (an
adapter builds a body, parses the answer or stream). ``sse`` frames and unframes every stream.
No I/O here.
"""
