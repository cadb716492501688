"""The interface every sink implements, and the rule for sink names."""

from __future__ import annotations

import math
import re
import urllib.parse
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from mesh.alarm import SignedAlarm

from .errors import SinkConfigError
from .secret import Secret

# Only for annotations: the receivers load httpx when they are configured.
if TYPE_CHECKING:
    import httpx

__all__ = [
    "Sink",
    "SINK_NAME_PATTERN",
    "check_sink_name",
    "check_timeout",
    "validate_http_sink_fields",
    "check_url",
]

# Restricted to characters that need no quoting, so that a sink name can be used
# as it is in log lines, metric labels and file names.
SINK_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]*")


@runtime_checkable
class Sink(Protocol):
    """A receiver of alarms: one Slack channel, one webhook, standard output.

    ``send`` makes one attempt and classifies its outcome. It never retries by
    itself: the outbox owns retries, backoff and dead letters.
    """

    # The sink's configured name, unique within an agent.
    name: str

    async def send(
        self,
        signed: SignedAlarm,
        *,
        client: httpx.AsyncClient,
        idempotency_key: str,
    ) -> str:
        """Deliver one alarm and return a short description of the response.

        The description is for logs, such as ``"200 ok"`` or ``"printed"``.

        Args:
            signed: the alarm and the signed frame it was sealed into.
            client: the HTTP client shared by all sinks of the agent.
            idempotency_key: the same for every attempt at this alarm on this
                sink, so that a receiver can drop the duplicates that retries
                after a lost response produce.

        Raises:
            SinkRetryableError: the attempt failed and a later one may succeed.
            SinkPermanentError: the receiver rejected the alarm for good.
        """
        ...


def check_sink_name(name: object) -> str | None:
    """Return why ``name`` is not a valid sink name, or None when it is valid."""
    if not isinstance(name, str):
        return f"expected a string, got {type(name).__name__}"
    if SINK_NAME_PATTERN.fullmatch(name) is None:
        return (
            "expected lowercase letters, digits and '-', "
            "starting with a letter or digit"
        )
    return None


def check_timeout(timeout: object) -> str | None:
    """Return why ``timeout`` is not a valid number of seconds, or None if it is."""
    # bool is an int subclass, but "timeout: true" in YAML is a mistake.
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        return f"expected a number of seconds, got {type(timeout).__name__}"
    if not (math.isfinite(timeout) and timeout > 0):
        return "expected a number of seconds greater than 0"
    return None


def validate_http_sink_fields(name: object, url: object, timeout: object) -> None:
    """Raise ValueError or TypeError unless the fields common to HTTP sinks are valid.

    Config classes call this when they are built; the config file parser checks
    the same rules earlier, with messages that name the key.
    """
    problem = check_sink_name(name)
    if problem is not None:
        raise ValueError(f"invalid sink name {name!r}, {problem}")
    if not isinstance(url, Secret):
        raise TypeError(f"url must be a Secret, got {type(url).__name__}")
    problem = check_timeout(timeout)
    if problem is not None:
        raise ValueError(f"invalid timeout {timeout!r}, {problem}")


def check_url(url: Secret) -> Secret:
    """Return ``url`` if it is an http or https URL with a host.

    Raises:
        SinkConfigError: it is not; the message names the key the URL came
            from and quotes the scheme at most.
    """
    # Messages quote the scheme at most: the rest of the URL can be the credential.
    expected = "expected an http or https URL such as https://host/path"
    import httpx  # loaded only when a receiver is configured

    try:
        parts = urllib.parse.urlsplit(url.reveal())
        httpx.URL(url.reveal())
    except (ValueError, httpx.InvalidURL):
        raise SinkConfigError(f"{url.source}: invalid URL, {expected}") from None
    if not parts.scheme:
        raise SinkConfigError(f"{url.source}: missing scheme, {expected}")
    if parts.scheme not in ("http", "https"):
        raise SinkConfigError(
            f"{url.source}: invalid scheme {parts.scheme!r}, expected http or https"
        )
    if not parts.hostname:
        raise SinkConfigError(f"{url.source}: missing host, {expected}")
    return url
