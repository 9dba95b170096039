"""The HTTP server layer: every byte a client sends is bounded before a route sees it.

- ``bounds``: the limits (header bytes and count, read timeouts per phase, body size), from the config.
- ``protocol``: uvicorn's httptools protocol with those limits enforced while parsing, and every
  error it answers itself (malformed HTTP, 408, 413, 431) in the OpenAI error shape.
- ``body``: reading a request body inside a route (bounded, nesting depth checked before parsing).
"""
