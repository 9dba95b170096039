"""What codecs raise: the input is not valid in its format, or the upstream stream reported an error."""

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


class StreamError(Exception):
    """An upstream stream ended with an error event/object instead of the rest of the answer."""

    def __init__(self, message: str, type_: str | None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.type = type_
        self.code = code
