"""Local stand-ins for alarm receivers, served over real HTTP on loopback.

Each receiver is an ASGI app that records what it receives. Serve one with
hypercorn on 127.0.0.1 and a free port::

    receiver = WebhookReceiver()
    async with serve_receiver(receiver) as base_url:
        ...  # POST to base_url + "/alarms"

or, where a fixture or a nursery owns the server's lifetime::

    base_url = await nursery.start(run_receiver, receiver)

:class:`SlackWebhookReceiver` follows the documented behaviour of Slack
incoming webhooks, limits and rate limit included, so that the Slack sink is
tested against the rules and not against its own idea of them. Its limits are
written out here from Slack's documentation, not imported from the sink.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import json
import logging
import math
import secrets
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from functools import partial
from typing import Any

import hypercorn.config
import hypercorn.trio
import nacl.exceptions
import trio

from mesh.keys import VerifyKey, key_id

__all__ = [
    "ReceivedRequest",
    "WebhookReceiver",
    "SlackWebhookReceiver",
    "run_receiver",
    "serve_receiver",
]

logger = logging.getLogger(__name__)

# Seconds that in-flight requests get to finish once shutdown begins. The mocks
# respond at once, so this only matters when a test leaves a request hanging.
GRACEFUL_TIMEOUT = 1.0

# Maximum request body size in bytes. A larger body gets a 413 response.
MAX_BODY_BYTES = 1024 * 1024

Headers = list[tuple[bytes, bytes]]


@dataclasses.dataclass(slots=True)
class ReceivedRequest:
    """One HTTP request as a receiver saw it, and the status of its response."""

    method: str
    path: str
    # Lower-case names. Repeated headers are joined with ", " as RFC 9110 allows.
    headers: dict[str, str]
    body: bytes
    # Parsed body, or None when it is not JSON.
    json: Any
    # Status of the receiver's response, or None until the response is chosen.
    status: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class _Scripted:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]


class _Receiver:
    """An ASGI app that records requests and lets subclasses choose the responses."""

    def __init__(self) -> None:
        self.requests: list[ReceivedRequest] = []
        self._scripted: deque[_Scripted] = deque()
        # Replaced on every request, so that waiters wake up and check again.
        self._changed = trio.Event()

    def respond_next(
        self,
        status: int,
        count: int = 1,
        *,
        body: bytes | str = b"",
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Respond to the next ``count`` requests with ``status``, whatever they are."""
        if isinstance(body, str):
            body = body.encode("utf-8")
        for _ in range(count):
            self._scripted.append(_Scripted(status, body, tuple(headers)))

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` is true, checking it after every request.

        The caller sets the deadline, for example with ``trio.fail_after``.
        """
        while not condition():
            await self._changed.wait()

    async def wait_for_requests(self, count: int) -> list[ReceivedRequest]:
        """Wait until ``count`` requests have arrived and return all of them."""
        await self.wait_until(lambda: len(self.requests) >= count)
        return self.requests

    async def handle(self, request: ReceivedRequest) -> tuple[int, Headers, bytes]:
        raise NotImplementedError

    def _take_scripted(self) -> tuple[int, Headers, bytes] | None:
        if not self._scripted:
            return None
        scripted = self._scripted.popleft()
        headers = [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in scripted.headers
        ]
        return scripted.status, headers, scripted.body

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            await _run_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return

        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > MAX_BODY_BYTES:
                await _respond(send, 413, [], b"request body too large")
                return
            if not message.get("more_body", False):
                break

        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        request = ReceivedRequest(
            method=scope["method"],
            path=scope["path"],
            headers=headers,
            body=bytes(body),
            json=_parse_json(bytes(body)),
        )
        self.requests.append(request)

        status, response_headers, response_body = await self.handle(request)
        request.status = status
        self._changed.set()
        self._changed = trio.Event()
        await _respond(send, status, response_headers, response_body)


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


async def _run_lifespan(
    receive: Callable[[], Awaitable[dict[str, Any]]],
    send: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _respond(
    send: Callable[[dict[str, Any]], Awaitable[None]],
    status: int,
    headers: Headers,
    body: bytes,
) -> None:
    if not any(name.lower() == b"content-type" for name, _ in headers):
        headers = [*headers, (b"content-type", b"text/plain; charset=utf-8")]
    headers = [*headers, (b"content-length", str(len(body)).encode("ascii"))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class WebhookReceiver(_Receiver):
    """A generic webhook endpoint that records every request and responds 200 ``ok``.

    Use :meth:`respond_next` to make it respond differently, and
    :meth:`verify_signature` to check a request's Ed25519 signature.
    """

    async def handle(self, request: ReceivedRequest) -> tuple[int, Headers, bytes]:
        scripted = self._take_scripted()
        if scripted is not None:
            return scripted
        if request.method != "POST":
            return 405, [(b"allow", b"POST")], b"method not allowed"
        return 200, [], b"ok"

    @staticmethod
    def verify_signature(request: ReceivedRequest, keys: Iterable[VerifyKey]) -> bool:
        """Return whether the request's signature headers verify its raw body.

        The key is chosen among ``keys`` by ``X-Alarminati-Key-Id``. A request
        does not verify if it lacks the headers, names an unknown key id, or
        carries a malformed or wrong signature.
        """
        key_ids = {key_id(key): key for key in keys}
        key = key_ids.get(request.headers.get("x-alarminati-key-id", ""))
        encoded = request.headers.get("x-alarminati-signature")
        if key is None or encoded is None:
            return False
        try:
            signature = base64.b64decode(encoded, validate=True)
            key.verify(request.body, signature)
        except (binascii.Error, ValueError, nacl.exceptions.BadSignatureError):
            return False
        return True


# Limits of Slack incoming webhooks and Block Kit, from Slack's documentation:
# https://api.slack.com/changelog/2018-04-truncating-really-long-messages (text),
# https://api.slack.com/reference/block-kit/blocks (blocks, section, header).
SLACK_TEXT_CHARS = 40_000
SLACK_BLOCKS = 50
SLACK_SECTION_TEXT_CHARS = 3000
SLACK_SECTION_FIELDS = 10
SLACK_FIELD_CHARS = 2000
SLACK_HEADER_CHARS = 150
SLACK_BLOCK_ID_CHARS = 255


class SlackWebhookReceiver(_Receiver):
    """A Slack incoming webhook as Slack documents it.

    * The URL path is the secret. Any other path gets 404 ``no_service``, as a
      revoked webhook does.
    * A POST with a JSON object that has ``text`` or ``blocks`` within the
      documented limits gets 200 ``ok`` and is kept in :attr:`messages`.
      Anything else gets 400 ``invalid_payload``, and the reason is kept in
      :attr:`rejections`. Slack itself cuts ``text`` longer than 40,000
      characters instead of rejecting it; this mock rejects it, so that tests
      notice.
    * Slack allows about one message per second with short bursts. This mock
      allows ``burst`` requests at once, refilled at ``rate`` per second, and
      responds 429 with a ``Retry-After`` header in whole seconds beyond that.

    Slack's documentation gives no status for a method other than POST and no
    body for a 429, so this mock responds 405 and ``rate_limited``.
    """

    def __init__(
        self,
        *,
        path: str | None = None,
        rate: float = 1.0,
        burst: int = 3,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        super().__init__()
        # Path of the webhook URL, random by default like Slack's.
        self.path = path or (
            f"/services/T{secrets.token_hex(4).upper()}/B{secrets.token_hex(4).upper()}"
            f"/{secrets.token_urlsafe(18)}"
        )
        # Accepted payloads, in arrival order.
        self.messages: list[dict[str, Any]] = []
        # Reason for each 400 response, in arrival order.
        self.rejections: list[str] = []
        # Messages per second allowed after the burst, and the burst size.
        self.rate = rate
        self.burst = burst
        # Seconds, monotonic. Tests may pass a function they advance by hand.
        self._clock = clock
        self._tokens = float(burst)
        self._refilled_at: float | None = None

    async def handle(self, request: ReceivedRequest) -> tuple[int, Headers, bytes]:
        if request.path != self.path:
            return 404, [], b"no_service"
        scripted = self._take_scripted()
        if scripted is not None:
            return scripted
        if request.method != "POST":
            return 405, [(b"allow", b"POST")], b"invalid_method"

        wait = self._take_token()
        if wait > 0:
            retry_after = str(max(1, math.ceil(wait))).encode("ascii")
            return 429, [(b"retry-after", retry_after)], b"rate_limited"

        problem = _check_slack_request(request)
        if problem is not None:
            self.rejections.append(problem)
            return 400, [], b"invalid_payload"
        self.messages.append(request.json)
        return 200, [], b"ok"

    async def wait_for_messages(self, count: int) -> list[dict[str, Any]]:
        """Wait until ``count`` messages have been accepted and return all of them."""
        await self.wait_until(lambda: len(self.messages) >= count)
        return self.messages

    def _take_token(self) -> float:
        """Spend a request token; return 0, or the seconds until a token is free."""
        now = self._clock()
        if self._refilled_at is not None:
            elapsed = max(0.0, now - self._refilled_at)
            self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
        self._refilled_at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.rate


def _check_slack_request(request: ReceivedRequest) -> str | None:
    """Return why Slack would reject the request's payload, or None if it is valid."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        return f"content type {content_type!r} is not application/json"
    payload = request.json
    if not isinstance(payload, dict):
        return "body is not a JSON object"

    text = payload.get("text")
    blocks = payload.get("blocks")
    if text is None and blocks is None:
        return "neither text nor blocks is present"
    if text is not None:
        if not isinstance(text, str):
            return "text is not a string"
        if len(text) > SLACK_TEXT_CHARS:
            return f"text has {len(text)} characters, limit {SLACK_TEXT_CHARS}"
        if blocks is None and not text.strip():
            return "text is empty"
    if blocks is not None:
        return _check_blocks(blocks)
    return None


def _check_blocks(blocks: Any) -> str | None:
    if not isinstance(blocks, list) or not blocks:
        return "blocks is not a non-empty list"
    if len(blocks) > SLACK_BLOCKS:
        return f"{len(blocks)} blocks, limit {SLACK_BLOCKS}"
    for index, block in enumerate(blocks):
        where = f"blocks[{index}]"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            return f"{where} has no type"
        block_id = block.get("block_id")
        if block_id is not None and (
            not isinstance(block_id, str) or len(block_id) > SLACK_BLOCK_ID_CHARS
        ):
            return f"{where}.block_id is not a string of at most {SLACK_BLOCK_ID_CHARS}"
        if block["type"] == "header":
            problem = _check_text_object(
                block.get("text"), SLACK_HEADER_CHARS, types=("plain_text",)
            )
            if problem is not None:
                return f"{where}.text {problem}"
        elif block["type"] == "section":
            problem = _check_section(block)
            if problem is not None:
                return f"{where}{problem}"
    return None


def _check_section(block: dict[str, Any]) -> str | None:
    text = block.get("text")
    fields = block.get("fields")
    if text is None and fields is None:
        return " has neither text nor fields"
    if text is not None:
        problem = _check_text_object(text, SLACK_SECTION_TEXT_CHARS)
        if problem is not None:
            return f".text {problem}"
    if fields is not None:
        if not isinstance(fields, list) or not fields:
            return ".fields is not a non-empty list"
        if len(fields) > SLACK_SECTION_FIELDS:
            return f".fields has {len(fields)} items, limit {SLACK_SECTION_FIELDS}"
        for index, field in enumerate(fields):
            problem = _check_text_object(field, SLACK_FIELD_CHARS)
            if problem is not None:
                return f".fields[{index}] {problem}"
    return None


def _check_text_object(
    value: Any, limit: int, *, types: tuple[str, ...] = ("plain_text", "mrkdwn")
) -> str | None:
    if not isinstance(value, dict) or value.get("type") not in types:
        return f"is not a text object of type {' or '.join(types)}"
    text = value.get("text")
    if not isinstance(text, str) or not text:
        return "has no text"
    if len(text) > limit:
        return f"has {len(text)} characters, limit {limit}"
    return None


async def run_receiver(
    app: Any,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on 127.0.0.1 and a free port until cancelled or triggered.

    ``task_status.started`` receives the base URL, such as
    ``http://127.0.0.1:40123``. When ``shutdown_trigger`` returns, the server
    stops taking requests and gives open ones :data:`GRACEFUL_TIMEOUT` seconds.
    """
    config = hypercorn.config.Config()
    config.bind = ["127.0.0.1:0"]
    config.graceful_timeout = GRACEFUL_TIMEOUT
    config.accesslog = None
    config.errorlog = logger
    async with trio.open_nursery() as nursery:
        serve = partial(
            hypercorn.trio.serve, app, config, shutdown_trigger=shutdown_trigger
        )
        binds = await nursery.start(serve)
        task_status.started(binds[0])


@contextlib.asynccontextmanager
async def serve_receiver(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` on loopback for the duration of the block; yield its base URL."""
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        base_url = await nursery.start(
            partial(run_receiver, app, shutdown_trigger=shutdown.wait)
        )
        try:
            yield base_url
        finally:
            shutdown.set()
