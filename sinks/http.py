"""HTTP plumbing shared by the sinks: one POST with a deadline, and one classifier.

Every HTTP sink sends through :func:`post_alarm` and classifies the response with
:func:`classify_response`, so that all receivers follow the same rules:

* 2xx succeeds.
* 408, 429 and 5xx raise :class:`SinkRetryableError`. A 429 carries the
  receiver's ``Retry-After`` hint, in seconds or as an HTTP-date.
* Every other status raises :class:`SinkPermanentError`, redirects included,
  because a webhook URL that redirects is misconfigured.
* Timeouts and transport failures raise :class:`SinkRetryableError`, chained to
  the httpx or trio exception.

The URL is a secret (a Slack webhook URL is its own credential), so messages
name the sink, the status and a short excerpt of the response body, never the
URL; any copy of the URL in the body or in an httpx message is masked.
"""

from __future__ import annotations

import dataclasses
import datetime
import email.utils
import json
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import trio

from mesh import __version__

from .errors import SinkPermanentError, SinkRetryableError
from .secret import Secret, mask_secret

__all__ = [
    "USER_AGENT",
    "Delivery",
    "post_alarm",
    "classify_response",
    "parse_retry_after",
    "body_excerpt",
    "parse_json",
]


USER_AGENT = f"alarminati/{__version__}"

# Maximum bytes of a response body that are read. Receivers respond with a word
# or a short JSON error, and the cap keeps a misbehaving one from filling memory.
MAX_RESPONSE_BYTES = 64 * 1024

# Characters of the response body quoted in an error message.
BODY_EXCERPT_CHARS = 200


@dataclasses.dataclass(frozen=True, slots=True)
class Delivery:
    """A receiver's 2xx response to an alarm."""

    status: int
    # Status and standard reason phrase in lower case, such as "200 ok".
    description: str
    # The first MAX_RESPONSE_BYTES of the response body.
    body: bytes


async def post_alarm(
    client: httpx.AsyncClient,
    url: Secret,
    *,
    sink: str,
    content: bytes,
    headers: Mapping[str, str],
    timeout: float,
    now: Callable[[], float] = time.time,
    classify: Callable[..., str] | None = None,
) -> Delivery:
    """POST ``content`` to ``url`` and classify the response.

    The whole exchange, connecting and reading the body included, runs under a
    deadline of ``timeout`` seconds.

    Args:
        now: wall clock in Unix seconds, used to turn an HTTP-date
            ``Retry-After`` into a delay.
        classify: reads the response, with the signature of
            :func:`classify_response` (the default); a receiver that puts its
            wait hint in the body, such as Telegram, passes its own.

    Returns:
        The status, the description from :func:`classify_response`, and the
        start of the body of a 2xx response.

    Raises:
        SinkRetryableError: the deadline passed, the connection failed, or the
            receiver responded with 408, 429 or 5xx.
        SinkPermanentError: the receiver responded with any other non-2xx
            status, or the URL is invalid or its scheme is not supported.
    """
    try:
        with trio.fail_after(timeout):
            async with client.stream(
                "POST",
                url.reveal(),
                content=content,
                headers=dict(headers),
                timeout=timeout,
            ) as response:
                body = await _read_capped(response)
    except trio.TooSlowError as exc:
        raise SinkRetryableError(
            f"sink {sink!r}: no response within {timeout:g}s"
        ) from exc
    except httpx.TimeoutException as exc:
        raise SinkRetryableError(
            f"sink {sink!r}: {type(exc).__name__} after at most {timeout:g}s"
        ) from exc
    except httpx.UnsupportedProtocol as exc:
        raise SinkPermanentError(
            f"sink {sink!r}: {mask_secret(str(exc), url.reveal())}"
        ) from exc
    except httpx.InvalidURL as exc:
        # Not chained: httpx quotes the whole URL in this message.
        raise SinkPermanentError(
            f"sink {sink!r}: invalid URL: {mask_secret(str(exc), url.reveal())}"
        ) from None
    except httpx.RequestError as exc:
        # Connection refused or reset, DNS failure, a broken or undecodable
        # response: all may pass on a later attempt.
        detail = mask_secret(str(exc), url.reveal())
        raise SinkRetryableError(
            f"sink {sink!r}: {type(exc).__name__}: {detail}"
        ) from exc

    classify = classify or classify_response
    description = classify(response, sink=sink, body=body, now=now)
    return Delivery(response.status_code, description, body)


async def _read_capped(response: httpx.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= MAX_RESPONSE_BYTES:
            break
    return b"".join(chunks)[:MAX_RESPONSE_BYTES]


def classify_response(
    response: httpx.Response,
    *,
    sink: str,
    body: bytes | None = None,
    now: Callable[[], float] = time.time,
) -> str:
    """Return a short description of a 2xx response, or raise for any other status.

    Args:
        response: the receiver's response.
        sink: the sink's name, for messages.
        body: the response body when it was read separately; by default
            ``response.content``.
        now: wall clock in Unix seconds, for an HTTP-date ``Retry-After``.

    Returns:
        The status and its standard reason phrase in lower case, such as
        ``"200 ok"``.

    Raises:
        SinkRetryableError: 408, 429 or 5xx; ``retry_after`` is set from the
            ``Retry-After`` header of a 429.
        SinkPermanentError: any other non-2xx status.
    """
    status = response.status_code
    # The standard phrase, not the server's: HTTP/2 and some HTTP/1.1 servers
    # (hypercorn among them) send none.
    reason = httpx.codes.get_reason_phrase(status).lower()
    described = f"{status} {reason}".rstrip()
    if 200 <= status < 300:
        return described

    if body is None:
        body = response.content
    url = str(response.request.url) if _has_request(response) else None
    excerpt = body_excerpt(body, url)
    message = f"sink {sink!r}: receiver returned {described}: {excerpt!r}"

    if status == 429:
        retry_after = None
        header = response.headers.get("Retry-After")
        if header is not None:
            retry_after = parse_retry_after(header, now())
        if retry_after is not None:
            message += f", retry after {retry_after:g}s"
        raise SinkRetryableError(message, retry_after, status=status)
    if status == 408 or 500 <= status < 600:
        raise SinkRetryableError(message, status=status)
    raise SinkPermanentError(message, status=status)


def parse_retry_after(value: str, now: float) -> float | None:
    """Parse an HTTP ``Retry-After`` value into a delay in seconds.

    RFC 9110 allows a number of seconds or an HTTP-date. A date in the past
    gives 0. Returns None for a value that is neither, or negative.

    Args:
        now: the current wall-clock time in Unix seconds.
    """
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        # Decimal seconds are outside RFC 9110 but harmless, so they are
        # accepted; negative or infinite delays are not.
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
        return None

    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        # "-0000" parses to a naive datetime; HTTP-dates are always GMT.
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, moment.timestamp() - now)


def _has_request(response: httpx.Response) -> bool:
    try:
        response.request
    except RuntimeError:
        return False
    return True


def body_excerpt(body: bytes, url: str | None) -> str:
    """Return the start of ``body`` on one line, for a message, with ``url`` masked."""
    text = " ".join(body.decode("utf-8", errors="replace").split())
    # Masked before cutting, so that the cut cannot leave a fragment of the URL.
    if url is not None:
        text = mask_secret(text, url)
    if len(text) > BODY_EXCERPT_CHARS:
        text = text[:BODY_EXCERPT_CHARS] + "…"
    return text


def parse_json(body: bytes) -> Any:
    """Return the JSON value of ``body``, or None when it is not JSON."""
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
