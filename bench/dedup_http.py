"""The local HTTP side of the dedup benchmark: check targets and alarm receivers.

One ASGI app on 127.0.0.1 serves both:

* ``GET /target/<n>``: a check target that returns 200, or 503 once flipped, so
  that every agent's shared check of it starts failing at the same moment;
* ``POST /alertmanager`` and ``POST /alarminati``: webhook receivers that record
  the monotonic arrival time of every notification.

Arrival times come from ``time.monotonic()`` in this process, the same clock
that stamps the event, so a latency needs no clock synchronisation.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import hypercorn.config
import hypercorn.trio
import trio

__all__ = ["Delivery", "BenchServer", "run_bench_server"]

logger = logging.getLogger(__name__)

# Larger bodies are rejected with 413: Alertmanager posts a group of 1 alert
# and an agent posts one alarm, both far below this.
MAX_BODY_BYTES = 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Delivery:
    """One notification as a receiver saw it."""

    # "alertmanager" or "alarminati".
    source: str
    # time.monotonic() at arrival, in seconds.
    arrived: float
    # The incident label (Alertmanager) or incident id (Alarminati).
    incident: str
    # "firing" or "resolved".
    status: str
    # The sending agent, or the empty string for Alertmanager.
    reporter: str


class BenchServer:
    """ASGI app with flippable targets and recording receivers."""

    def __init__(self, targets: int) -> None:
        # Status each target returns, indexed by target number; changed by flip().
        self.target_status = [200] * targets
        # Every notification received, in arrival order.
        self.deliveries: list[Delivery] = []
        # Requests per target since start, to confirm the agents are checking.
        self.target_hits = [0] * targets

    def flip(self, status: int) -> float:
        """Set every target to ``status`` at once; return the moment (monotonic)."""
        self.target_status = [status] * len(self.target_status)
        return time.monotonic()

    def received(self, source: str, since: float = 0.0) -> list[Delivery]:
        return [d for d in self.deliveries if d.source == source and d.arrived >= since]

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await _serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path.startswith("/target/") and method in ("GET", "HEAD"):
            await self._serve_target(path, send)
            return
        if path in ("/alertmanager", "/alarminati") and method == "POST":
            body = await _read_body(receive)
            if body is None:
                await _respond(send, 413, b"body too large")
                return
            arrived = time.monotonic()
            try:
                self.deliveries.extend(_parse(path[1:], json.loads(body), arrived))
            except (ValueError, KeyError, TypeError) as exc:
                logger.warning("unreadable notification path=%s error=%s", path, exc)
                await _respond(send, 400, b"unreadable notification")
                return
            await _respond(send, 200, b"ok")
            return
        await _respond(send, 404, b"not found")

    async def _serve_target(self, path: str, send: Callable) -> None:
        try:
            number = int(path.removeprefix("/target/"))
            status = self.target_status[number]
        except (ValueError, IndexError):
            await _respond(send, 404, b"no such target")
            return
        self.target_hits[number] += 1
        await _respond(send, status, b"ok" if status < 400 else b"unavailable")


def _parse(source: str, payload: Any, arrived: float) -> list[Delivery]:
    if source == "alarminati":
        incident, status = payload["incident"], payload["status"]
        return [Delivery(source, arrived, incident, status, payload["reporter"])]
    # Alertmanager's webhook payload (version 4): one group per request, and
    # the group labels name the incident because the route groups by it.
    incident = payload["groupLabels"]["incident"]
    return [Delivery(source, arrived, incident, payload["status"], "")]


async def _read_body(receive: Callable) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _respond(send: Callable, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _serve_lifespan(receive: Callable, send: Callable) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def run_bench_server(
    app: BenchServer,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on 127.0.0.1 and a free port; start with its base URL."""
    config = hypercorn.config.Config()
    config.bind = ["127.0.0.1:0"]
    config.graceful_timeout = 1.0
    config.accesslog = None
    config.errorlog = logger
    async with trio.open_nursery() as nursery:
        serve = partial(
            hypercorn.trio.serve, app, config, shutdown_trigger=shutdown_trigger
        )
        binds = await nursery.start(serve)
        task_status.started(binds[0])
