"""Exceptions raised by the sinks.

    SinkError
    ├── SinkRetryableError   the send failed, a later one may succeed; has retry_after
    ├── SinkPermanentError   the send failed and repeating it unchanged cannot help
    └── SinkConfigError      a sink's configuration is invalid (also a ValueError)

A sink raises one of the first two from ``send`` and never retries by itself:
the outbox decides when, and whether, to try again.
"""

from __future__ import annotations

__all__ = ["SinkError", "SinkRetryableError", "SinkPermanentError", "SinkConfigError"]


class SinkError(Exception):
    """Base class of every error the sinks raise on purpose."""


class SinkRetryableError(SinkError):
    """The receiver could not take the alarm now; a later attempt may succeed.

    Raised for timeouts, connection failures, and 408, 429 and 5xx responses.
    """

    def __init__(
        self,
        message: str,
        retry_after: float | None = None,
        *,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        # Delay in seconds that the receiver asked for (HTTP ``Retry-After``),
        # or None when it gave no hint and the outbox picks its own backoff.
        self.retry_after = retry_after
        # HTTP status of the response, or None when no response arrived.
        self.status = status


class SinkPermanentError(SinkError):
    """The receiver rejected the alarm; sending it again unchanged cannot help.

    Raised for 4xx responses other than 408 and 429, for redirects, and for
    unexpected 2xx bodies.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        # HTTP status of the response, or None when the failure was not a response.
        self.status = status


class SinkConfigError(SinkError, ValueError):
    """A sink's configuration is invalid.

    The message names the key, the bad value and what is expected, so that it
    can be shown to the operator as it is. Secret values are never included.
    """
