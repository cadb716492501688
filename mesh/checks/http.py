"""The ``http`` check: status, latency, body and certificate of one request.

Redirects are not followed, so a 3xx response is judged by its own status (the
default accepts 200-399), and the certificate checked is the one of the URL's
host.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable

import httpx
import trio

from .config import HttpCheck
from .observation import CheckReason, Observation

__all__ = ["run_http_check", "MAX_BODY_BYTES"]

# Bytes of the body that ``body_match`` searches; the rest is not downloaded.
MAX_BODY_BYTES = 1024 * 1024
SECONDS_PER_DAY = 86_400


async def run_http_check(
    check: HttpCheck,
    client: httpx.AsyncClient,
    *,
    now: Callable[[], float] = time.time,
) -> Observation:
    """Send the check's request and judge the response.

    Args:
        now: wall clock in Unix seconds, compared with the certificate's
            notAfter.

    Raises:
        httpx.HTTPError: the request failed; the runner turns it into a reason.
    """
    request = f"{check.method} {check.subject}"
    headers = {name: value.reveal() for name, value in check.headers}
    started = trio.current_time()
    async with client.stream(check.method, check.url, headers=headers) as response:
        body = await _read_body(response) if check.body_match else b""
        latency = trio.current_time() - started
        days_left = None
        if check.tls_min_days is not None:
            days_left = _certificate_days_left(response, now())

    def observe(reason: CheckReason, detail: str = "") -> Observation:
        summary = f"{request} returned {response.status_code} in {latency:.2f}s"
        return Observation(
            check=check.name,
            ok=reason is CheckReason.OK,
            summary=summary + detail,
            latency=latency,
            reason=reason,
        )

    if not check.accepts_status(response.status_code):
        return observe(CheckReason.STATUS)
    if check.body_match and not check.body_match.search(_decode(body)):
        pattern = check.body_match.pattern
        return observe(CheckReason.BODY_MISMATCH, f", body does not match {pattern!r}")
    if check.max_latency is not None and latency > check.max_latency:
        return observe(CheckReason.SLOW, f", slower than {check.max_latency:g}s")
    if days_left is not None:
        detail = f", certificate expires in {days_left:.1f} days"
        if days_left < check.tls_min_days:
            limit = f"{check.tls_min_days:g}"
            return observe(CheckReason.TLS_EXPIRING, f"{detail} (minimum {limit})")
        return observe(CheckReason.OK, detail)
    return observe(CheckReason.OK)


async def _read_body(response: httpx.Response) -> bytes:
    chunks = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= MAX_BODY_BYTES:
            break
    return b"".join(chunks)[:MAX_BODY_BYTES]


def _decode(body: bytes) -> str:
    # Bytes that are not UTF-8 become U+FFFD, which no ordinary pattern matches.
    return body.decode("utf-8", errors="replace")


def _certificate_days_left(response: httpx.Response, now: float) -> float:
    """Return the days until the server certificate's notAfter.

    Raises:
        ssl.SSLError: the connection carries no verified peer certificate.
    """
    stream = response.extensions.get("network_stream")
    ssl_object = stream.get_extra_info("ssl_object") if stream else None
    # getpeercert() returns the parsed fields only for a verified certificate,
    # which every http check has: it offers no way to skip verification.
    certificate = ssl_object.getpeercert() if ssl_object else None
    if not certificate or "notAfter" not in certificate:
        raise ssl.SSLError("no verified peer certificate on the connection")
    expires = ssl.cert_time_to_seconds(certificate["notAfter"])
    return (expires - now) / SECONDS_PER_DAY
