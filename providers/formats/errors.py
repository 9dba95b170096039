"""The one error a codec raises: the input is not valid in its format."""

from __future__ import annotations


class FormatError(ValueError):
    """A body (or stream event) that does not follow its format.

    ``param`` names the offending field as a dotted path (``messages.2.content``) so a door can
    answer 400 naming it, in its own error shape.
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
