"""The HTTP client of receivers, with one trust store per process loaded at the first request."""

from __future__ import annotations

import functools
import ssl

import httpx

__all__ = ["default_ssl_context", "open_http_client"]


@functools.cache
def default_ssl_context() -> ssl.SSLContext:
    """Return httpx's default SSL context (certifi's CAs, or ``SSL_CERT_FILE``).

    It is built once per process and shared by the receivers and the checks.
    Parsing the bundle takes longer than the request it secures and uses about
    2.5 MiB of memory, so each client building its own would cost that again.
    """
    return httpx.create_ssl_context()


class _LazyTransport(httpx.AsyncBaseTransport):
    """httpx's own transport, created at the first request.

    httpx builds an SSL context when a client is created, which loads the trust
    store. An agent that has not sent an alarm yet does not need it.
    """

    def __init__(self, **options: object) -> None:
        self._options = options
        self._transport: httpx.AsyncHTTPTransport | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._transport is None:
            self._transport = httpx.AsyncHTTPTransport(verify=default_ssl_context(), **self._options)
        return await self._transport.handle_async_request(request)

    async def aclose(self) -> None:
        if self._transport is not None:
            await self._transport.aclose()


def open_http_client(*, timeout: float = 5.0, max_connections: int = 64) -> httpx.AsyncClient:
    """Open the HTTP client that receivers and cluster endpoint probes share.

    ``timeout`` is in seconds; 5 is httpx's default. Receivers bound each
    request with their own timeout as well.
    """
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=32)
    return httpx.AsyncClient(transport=_LazyTransport(limits=limits), timeout=timeout)
