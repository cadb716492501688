"""The agent's HTTP endpoints, as a plain ASGI application served by hypercorn.

* ``GET /healthz``: liveness for Kubernetes, unauthenticated, always ``ok``
  while the process serves requests.
* ``POST /healthz``: SWIM messages between agents, as signed msgpack frames; the
  response body carries the answers (an ack to a ping, a push-pull reply).
* ``GET /peers``: the membership table, JSON by default, a text table for
  ``Accept: text/plain``.
* ``GET /metrics``: Prometheus text format.

Four fixed routes need no web framework; hypercorn's trio worker does the HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .peers_table import format_peers
from .wire import MAX_FRAME_BYTES

if TYPE_CHECKING:
    from .agent import Agent

__all__ = ["create_app", "FRAME_CONTENT_TYPE"]

FRAME_CONTENT_TYPE = "application/vnd.alarminati.v1alpha1+msgpack"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def _respond(
    send: Send, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8"
) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    if status == 413:
        # The body was not read, so the connection cannot carry another request.
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes | None:
    """Return the request body, or None as soon as it exceeds ``limit`` bytes."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            return None
    chunks, size = [], 0
    while True:
        event = await receive()
        if event["type"] == "http.disconnect":
            return b""
        chunk = event.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not event.get("more_body", False):
            return b"".join(chunks)


def _accepts_text(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"accept":
            accept = value.decode("latin-1")
            return "text/plain" in accept and "application/json" not in accept
    return False


def create_app(agent: Agent):
    """Return the ASGI application serving ``agent``."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            # Startup and shutdown are the agent's own; acknowledge and idle.
            while True:
                event = await receive()
                if event["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif event["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return

        path, method = scope["path"], scope["method"]
        if path == "/healthz" and method in ("GET", "HEAD"):
            await _respond(send, 200, b"ok\n")
        elif path == "/healthz" and method == "POST":
            body = await _read_body(scope, receive, MAX_FRAME_BYTES)
            if body is None:
                agent.count_oversized()
                await _respond(send, 413, b"frame too large\n")
                return
            status, answer = agent.handle_frame(body)
            content_type = FRAME_CONTENT_TYPE if status == 200 else "text/plain; charset=utf-8"
            await _respond(send, status, answer, content_type)
        elif path == "/peers" and method == "GET":
            members = agent.peers_snapshot()
            if _accepts_text(scope):
                await _respond(send, 200, format_peers(members).encode())
            else:
                body = json.dumps({"self": agent.name, "members": members}, indent=1)
                await _respond(send, 200, body.encode() + b"\n", "application/json")
        elif path == "/metrics" and method == "GET":
            agent.refresh_gauges()
            output = generate_latest(agent.metrics.registry)
            await _respond(send, 200, output, CONTENT_TYPE_LATEST)
        elif path in ("/healthz", "/peers", "/metrics"):
            await _respond(send, 405, b"method not allowed\n")
        else:
            await _respond(send, 404, b"not found\n")

    return app
