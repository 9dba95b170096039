"""The limits on what one HTTP request may send, and how long it may take to send it.

Numbers an operator rarely needs to change are constants here; the read timeouts and the body
size come from ``general_settings`` (``request_header_timeout_s``, ``request_body_timeout_s``,
``max_request_body_mb``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

# Request line + headers. Browsers and SDKs send a few KiB; nginx's default tops out at 32 KiB.
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADERS = 100
# After refusing a request, read (and drop) what the client is still sending, for this long or this
# many bytes, before closing: closing with unread data makes the kernel send RST, and a client still
# writing its request may lose the answer with it.
LINGER_S = 2.0
LINGER_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class RequestBounds:
    """What the server protocol enforces on every request, before the app runs."""

    max_body_bytes: int = 10 * 1024 * 1024
    header_timeout_s: float = 10.0  # first byte of a request -> end of its headers
    body_timeout_s: float = 30.0  # end of the headers -> end of the body (total, not idle)
    max_header_bytes: int = MAX_HEADER_BYTES
    max_headers: int = MAX_HEADERS
    linger_s: float = LINGER_S
    linger_bytes: int = LINGER_BYTES

    @classmethod
    def from_config(cls, config: GatewayConfig) -> RequestBounds:
        gs = config.general_settings
        return cls(
            max_body_bytes=config.max_request_body_bytes,
            header_timeout_s=gs.request_header_timeout_s,
            body_timeout_s=gs.request_body_timeout_s,
        )
