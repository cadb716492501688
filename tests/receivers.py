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
import re
import secrets
import urllib.parse
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
    "TokenBucket",
    "WebhookReceiver",
    "SlackWebhookReceiver",
    "SlackApiReceiver",
    "TelegramBotApi",
    "DiscordWebhookReceiver",
    "GoogleChatReceiver",
    "TeamsWorkflowReceiver",
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
    # Query parameters of the URL; a repeated name keeps its last value.
    query: dict[str, str] = dataclasses.field(default_factory=dict)
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
            query=dict(
                urllib.parse.parse_qsl(scope.get("query_string", b"").decode("latin-1"))
            ),
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


class TokenBucket:
    """A rate limit: ``burst`` requests at once, refilled at ``rate`` per second."""

    def __init__(
        self, *, rate: float, burst: int, clock: Callable[[], float] = trio.current_time
    ) -> None:
        self.rate = rate
        self.burst = burst
        # Seconds, monotonic. Tests may pass a function they advance by hand.
        self._clock = clock
        self._tokens = float(burst)
        self._refilled_at: float | None = None

    def take(self) -> float:
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

    @property
    def remaining(self) -> int:
        return int(self._tokens)


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
        self._bucket = TokenBucket(rate=rate, burst=burst, clock=clock)

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
        return self._bucket.take()


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


def _json_response(
    status: int, data: Any, headers: Headers = ()
) -> tuple[int, Headers, bytes]:
    body = json.dumps(data).encode("utf-8")
    return status, [*headers, (b"content-type", b"application/json")], body


def _is_json(request: ReceivedRequest) -> bool:
    content_type = request.headers.get("content-type", "")
    return content_type.split(";")[0].strip().lower() == "application/json"


class _ChatReceiver(_Receiver):
    """A receiver that keeps accepted messages and the reasons of rejections."""

    def __init__(self) -> None:
        super().__init__()
        # Accepted message bodies, in arrival order.
        self.messages: list[dict[str, Any]] = []
        # Reason for each rejected request, in arrival order.
        self.rejections: list[str] = []

    async def wait_for_messages(self, count: int) -> list[dict[str, Any]]:
        """Wait until ``count`` messages have been accepted and return all of them."""
        await self.wait_until(lambda: len(self.messages) >= count)
        return self.messages


class SlackApiReceiver(_ChatReceiver):
    """Slack's Web API method chat.postMessage, as Slack documents it.

    * ``POST /api/chat.postMessage`` with ``Authorization: Bearer <token>`` and
      a JSON body. A missing token answers ``not_authed``, a wrong one
      ``invalid_auth``; both, like every refusal, as HTTP 200 with
      ``{"ok": false, "error": …}``.
    * ``channel`` must be one of :attr:`channels`; a channel the bot is not in
      answers ``not_in_channel``, an unknown one ``channel_not_found``.
    * ``text`` and ``blocks`` follow the same limits as incoming webhooks;
      a bad payload answers ``invalid_blocks`` or ``no_text``.
    * About one message per second per channel: beyond the burst, HTTP 429
      with ``Retry-After`` and ``{"ok": false, "error": "ratelimited"}``.
    * Success: ``{"ok": true, "channel": …, "ts": …, "message": …}``.
    """

    PATH = "/api/chat.postMessage"

    def __init__(
        self,
        *,
        token: str | None = None,
        channels: Iterable[str] = ("C0ALARMS01",),
        not_member: Iterable[str] = (),
        rate: float = 1.0,
        burst: int = 3,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        super().__init__()
        self.token = (
            token or f"xoxb-{secrets.randbelow(10**12)}-{secrets.token_hex(12)}"
        )
        self.channels = set(channels)
        self.not_member = set(not_member)
        self._rate, self._burst, self._clock = rate, burst, clock
        self._buckets: dict[str, TokenBucket] = {}
        self._ts = 0

    async def handle(self, request: ReceivedRequest) -> tuple[int, Headers, bytes]:
        if request.path != self.PATH:
            return 404, [], b"not found"
        scripted = self._take_scripted()
        if scripted is not None:
            return scripted
        if request.method != "POST":
            return _json_response(200, {"ok": False, "error": "invalid_method"})
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            return self._refuse("not_authed")
        if auth.removeprefix("Bearer ") != self.token:
            return self._refuse("invalid_auth")
        if not _is_json(request) or not isinstance(request.json, dict):
            return self._refuse("invalid_json")
        channel = request.json.get("channel")
        if channel in self.not_member:
            return self._refuse("not_in_channel")
        if channel not in self.channels:
            return self._refuse("channel_not_found")

        bucket = self._buckets.setdefault(
            channel, TokenBucket(rate=self._rate, burst=self._burst, clock=self._clock)
        )
        wait = bucket.take()
        if wait > 0:
            retry_after = str(max(1, math.ceil(wait))).encode("ascii")
            self.rejections.append("ratelimited")
            return _json_response(
                429,
                {"ok": False, "error": "ratelimited"},
                [(b"retry-after", retry_after)],
            )

        problem = _check_slack_request(request)
        if problem is not None:
            self.rejections.append(problem)
            error = "no_text" if "neither" in problem else "invalid_blocks"
            return _json_response(200, {"ok": False, "error": error})
        self.messages.append(request.json)
        self._ts += 1
        ts = f"1714564800.{self._ts:06d}"
        return _json_response(
            200, {"ok": True, "channel": channel, "ts": ts, "message": request.json}
        )

    def _refuse(self, error: str) -> tuple[int, Headers, bytes]:
        self.rejections.append(error)
        return _json_response(200, {"ok": False, "error": error})


# Telegram Bot API limits (https://core.telegram.org/bots/api#sendmessage):
# text is 1-4096 characters after entities parsing.
TELEGRAM_TEXT_CHARS = 4096
# Tags that parse_mode HTML accepts (https://core.telegram.org/bots/api#html-style).
TELEGRAM_TAGS = {
    "b",
    "strong",
    "i",
    "em",
    "u",
    "ins",
    "s",
    "strike",
    "del",
    "a",
    "code",
    "pre",
    "tg-spoiler",
    "span",
    "blockquote",
    "tg-emoji",
}
_TELEGRAM_ENTITIES = {"&lt;", "&gt;", "&amp;", "&quot;"}


class TelegramBotApi(_ChatReceiver):
    """The Telegram Bot API's sendMessage, as Telegram documents it.

    * ``POST /bot<token>/sendMessage``; a wrong token answers 401
      ``Unauthorized`` and an unknown method 404 ``Not Found``, in Telegram's
      ``{"ok": false, "error_code", "description"}`` shape.
    * ``chat_id`` must be one of :attr:`chats`; a chat in :attr:`migrated`
      answers 400 with ``parameters.migrate_to_chat_id``; others answer 400
      ``chat not found``.
    * ``text`` must hold 1-4096 characters after entity parsing; with
      ``parse_mode: HTML`` only Telegram's tags and its four entities are
      allowed and tags must nest, else 400 ``can't parse entities``.
    * About one message per second per chat: beyond the burst, 429 with
      ``parameters.retry_after`` in whole seconds.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        chats: Iterable[int | str] = (-1001234567890,),
        migrated: dict[int, int] | None = None,
        rate: float = 1.0,
        burst: int = 3,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        super().__init__()
        self.token = token or f"{secrets.randbelow(10**9)}:{secrets.token_urlsafe(26)}"
        self.chats = set(chats)
        self.migrated = dict(migrated or {})
        self._rate, self._burst, self._clock = rate, burst, clock
        self._buckets: dict[Any, TokenBucket] = {}
        self._message_id = 0

    @staticmethod
    def _error(
        status: int, description: str, **parameters: Any
    ) -> tuple[int, Headers, bytes]:
        data: dict[str, Any] = {
            "ok": False,
            "error_code": status,
            "description": description,
        }
        if parameters:
            data["parameters"] = parameters
        return _json_response(status, data)

    async def handle(self, request: ReceivedRequest) -> tuple[int, Headers, bytes]:
        prefix, _, method = request.path.rpartition("/")
        if prefix != f"/bot{self.token}":
            return self._error(401, "Unauthorized")
        if method != "sendMessage":
            return self._error(404, "Not Found")
        scripted = self._take_scripted()
        if scripted is not None:
            return scripted
        if request.method != "POST" or not _is_json(request):
            return self._error(400, "Bad Request: message text is empty")
        payload = request.json if isinstance(request.json, dict) else {}
        chat = payload.get("chat_id")
        if chat in self.migrated:
            return self._error(
                400,
                "Bad Request: group chat was upgraded to a supergroup chat",
                migrate_to_chat_id=self.migrated[chat],
            )
        if chat not in self.chats:
            self.rejections.append("chat not found")
            return self._error(400, "Bad Request: chat not found")

        bucket = self._buckets.setdefault(
            chat, TokenBucket(rate=self._rate, burst=self._burst, clock=self._clock)
        )
        wait = bucket.take()
        if wait > 0:
            retry_after = max(1, math.ceil(wait))
            self.rejections.append("too many requests")
            return self._error(
                429,
                f"Too Many Requests: retry after {retry_after}",
                retry_after=retry_after,
            )

        problem = _check_telegram_text(payload)
        if problem is not None:
            self.rejections.append(problem)
            return self._error(400, f"Bad Request: {problem}")
        self.messages.append(payload)
        self._message_id += 1
        result = {
            "message_id": self._message_id,
            "chat": {"id": chat},
            "text": payload["text"],
        }
        return _json_response(200, {"ok": True, "result": result})


def _check_telegram_text(payload: dict[str, Any]) -> str | None:
    text = payload.get("text")
    if not isinstance(text, str) or not text.strip():
        return "message text is empty"
    if payload.get("parse_mode") == "HTML":
        visible = _parse_telegram_html(text)
        if visible is None:
            return "can't parse entities"
    else:
        visible = text
    if len(visible) > TELEGRAM_TEXT_CHARS:
        return "message is too long"
    return None


def _parse_telegram_html(text: str) -> str | None:
    """Return the visible text of Telegram HTML, or None if it does not parse."""
    stack: list[str] = []
    visible = []
    position = 0
    for match in re.finditer(r"<(/?)([a-z-]+)(\s[^<>]*)?>|&[^;\s]*;?|[<>]", text):
        visible.append(text[position : match.start()])
        position = match.end()
        token = match.group(0)
        if token in ("<", ">"):
            return None
        if token.startswith("&"):
            if token not in _TELEGRAM_ENTITIES:
                return None
            visible.append(
                {"&lt;": "<", "&gt;": ">", "&amp;": "&", "&quot;": '"'}[token]
            )
            continue
        closing, tag = match.group(1), match.group(2)
        if tag not in TELEGRAM_TAGS:
            return None
        if closing:
            if not stack or stack.pop() != tag:
                return None
        else:
            stack.append(tag)
    visible.append(text[position:])
    return None if stack else "".join(visible)


# Discord embed limits (https://discord.com/developers/docs/resources/message#embed-object-embed-limits).
DISCORD_CONTENT_CHARS = 2000
DISCORD_EMBEDS = 10
DISCORD_TITLE_CHARS = 256
DISCORD_DESCRIPTION_CHARS = 4096
DISCORD_FIELDS = 25
DISCORD_FIELD_NAME_CHARS = 256
DISCORD_FIELD_VALUE_CHARS = 1024
DISCORD_FOOTER_CHARS = 2048
DISCORD_AUTHOR_CHARS = 256
DISCORD_TOTAL_CHARS = 6000


class DiscordWebhookReceiver(_ChatReceiver):
    """A Discord channel webhook, as Discord documents it.

    * ``POST /api/webhooks/<id>/<token>``; an unknown webhook answers 404
      ``{"message": "Unknown Webhook", "code": 10015}``.
    * The body needs ``content`` or ``embeds`` within the embed limits; a bad
      one answers 400 ``{"code": 50035, "message": "Invalid Form Body"}``.
    * Success: 204, or 200 with the message object when ``?wait=true``.
    * Rate limit: ``limit`` requests per ``window`` seconds. Every answer
      carries ``X-RateLimit-Limit``, ``-Remaining``, ``-Reset``,
      ``-Reset-After`` and ``-Bucket``; beyond the limit, 429 with
      ``Retry-After``, ``X-RateLimit-Scope`` and a body with ``retry_after``
      in float seconds and ``global``.
    """

    def __init__(
        self,
        *,
        webhook_id: str = "1234567890123456789",
        token: str | None = None,
        limit: int = 5,
        window: float = 2.0,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        super().__init__()
        self.webhook_id = webhook_id
        self.token = token or secrets.token_urlsafe(50)
        self.path = f"/api/webhooks/{webhook_id}/{self.token}"
        self.limit = limit
        self.window = window
        self._clock = clock
        # Start of the current window, and requests counted in it.
        self._window_start: float | None = None
        self._used = 0
        # Requests that got a 429: Discord bans clients that collect many.
        self.rate_limited = 0

    def _rate_headers(self) -> tuple[Headers, float]:
        now = self._clock()
        if self._window_start is None or now >= self._window_start + self.window:
            self._window_start, self._used = now, 0
        reset_after = self._window_start + self.window - now
        remaining = max(0, self.limit - self._used)
        headers = [
            (b"x-ratelimit-limit", str(self.limit).encode()),
            (b"x-ratelimit-remaining", str(remaining).encode()),
            (b"x-ratelimit-reset", f"{1714564800 + now + reset_after:.3f}".encode()),
            (b"x-ratelimit-reset-after", f"{reset_after:.3f}".encode()),
            (b"x-ratelimit-bucket", b"abcd1234"),
        ]
        return headers, reset_after

    async def handle(self, request: ReceivedRequest) -> tuple[int, Headers, bytes]:
        if request.path.rstrip("/") != self.path:
            return _json_response(404, {"message": "Unknown Webhook", "code": 10015})
        scripted = self._take_scripted()
        if scripted is not None:
            return scripted
        if request.method != "POST":
            return _json_response(
                405, {"message": "405: Method Not Allowed", "code": 0}
            )

        headers, reset_after = self._rate_headers()
        if self._used >= self.limit:
            self.rate_limited += 1
            self.rejections.append("rate limited")
            headers += [
                (b"retry-after", str(math.ceil(reset_after)).encode()),
                (b"x-ratelimit-scope", b"shared"),
            ]
            body = {
                "message": "You are being rate limited.",
                "retry_after": round(reset_after, 3),
                "global": False,
            }
            return _json_response(429, body, headers)
        self._used += 1
        headers = [
            (n, str(max(0, self.limit - self._used)).encode())
            if n == b"x-ratelimit-remaining"
            else (n, v)
            for n, v in headers
        ]

        problem = _check_discord_payload(request)
        if problem is not None:
            self.rejections.append(problem)
            body = {
                "code": 50035,
                "message": "Invalid Form Body",
                "errors": {"_errors": [{"message": problem}]},
            }
            return _json_response(400, body, headers)
        self.messages.append(request.json)
        if request.query.get("wait") != "true":
            return 204, headers, b""
        message = {
            "id": str(1_200_000_000_000_000_000 + len(self.messages)),
            **request.json,
        }
        return _json_response(200, message, headers)


def _check_discord_payload(request: ReceivedRequest) -> str | None:
    if not _is_json(request) or not isinstance(request.json, dict):
        return "body is not a JSON object"
    payload = request.json
    content = payload.get("content")
    embeds = payload.get("embeds")
    if not content and not embeds:
        return "cannot send an empty message"
    if content is not None and (
        not isinstance(content, str) or len(content) > DISCORD_CONTENT_CHARS
    ):
        return f"content must be a string of at most {DISCORD_CONTENT_CHARS}"
    if embeds is None:
        return None
    if not isinstance(embeds, list) or len(embeds) > DISCORD_EMBEDS:
        return f"embeds must be a list of at most {DISCORD_EMBEDS}"
    total = 0
    for index, embed in enumerate(embeds):
        if not isinstance(embed, dict):
            return f"embeds[{index}] is not an object"
        for key, limit in (
            ("title", DISCORD_TITLE_CHARS),
            ("description", DISCORD_DESCRIPTION_CHARS),
        ):
            value = embed.get(key, "")
            if not isinstance(value, str) or len(value) > limit:
                return f"embeds[{index}].{key} longer than {limit}"
            total += len(value)
        fields = embed.get("fields", [])
        if not isinstance(fields, list) or len(fields) > DISCORD_FIELDS:
            return f"embeds[{index}].fields: at most {DISCORD_FIELDS}"
        for field in fields:
            name, value = field.get("name"), field.get("value")
            if (
                not isinstance(name, str)
                or not name
                or len(name) > DISCORD_FIELD_NAME_CHARS
            ):
                return f"embeds[{index}] field name must be 1-{DISCORD_FIELD_NAME_CHARS} chars"
            if (
                not isinstance(value, str)
                or not value
                or len(value) > DISCORD_FIELD_VALUE_CHARS
            ):
                return f"embeds[{index}] field value must be 1-{DISCORD_FIELD_VALUE_CHARS} chars"
            total += len(name) + len(value)
        footer = embed.get("footer", {}).get("text", "")
        if len(footer) > DISCORD_FOOTER_CHARS:
            return f"embeds[{index}].footer longer than {DISCORD_FOOTER_CHARS}"
        author = embed.get("author", {}).get("name", "")
        if len(author) > DISCORD_AUTHOR_CHARS:
            return f"embeds[{index}].author longer than {DISCORD_AUTHOR_CHARS}"
        total += len(footer) + len(author)
        color = embed.get("color")
        if color is not None and (
            not isinstance(color, int) or not 0 <= color <= 0xFFFFFF
        ):
            return f"embeds[{index}].color is not a 24-bit integer"
    if total > DISCORD_TOTAL_CHARS:
        return f"embeds have {total} characters, limit {DISCORD_TOTAL_CHARS}"
    return None


# Google Chat: "The maximum message size, including text and cards, is 32,000 bytes."
GOOGLE_CHAT_MESSAGE_BYTES = 32_000
_GOOGLE_CHAT_REPLY_OPTIONS = {
    "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD",
    "REPLY_MESSAGE_OR_FAIL",
    "MESSAGE_REPLY_OPTION_UNSPECIFIED",
}


class GoogleChatReceiver(_ChatReceiver):
    """A Google Chat space's incoming webhook, as Google documents it.

    * ``POST /v1/spaces/<space>/messages?key=…&token=…``; a wrong token
      answers 401, an unknown space 404, in Google's ``{"error": {"code",
      "message", "status"}}`` shape.
    * The body needs ``text`` or ``cardsV2``, at most 32,000 bytes; else 400
      ``INVALID_ARGUMENT``.
    * A repeated ``requestId`` answers the message already created, and no new
      message is kept (server-side idempotency).
    * ``thread.threadKey`` with ``messageReplyOption`` threads the message.
    * 60 writes a minute per space: beyond the burst, 429
      ``RESOURCE_EXHAUSTED`` with no wait hint.
    """

    def __init__(
        self,
        *,
        space: str = "AAAA1234567",
        key: str = "AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI",
        token: str | None = None,
        rate: float = 1.0,
        burst: int = 5,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        super().__init__()
        self.space = space
        self.key = key
        self.token = token or secrets.token_urlsafe(32)
        self.path = f"/v1/spaces/{space}/messages"
        self._bucket = TokenBucket(rate=rate, burst=burst, clock=clock)
        # Message name of each requestId seen.
        self.by_request_id: dict[str, str] = {}
        # Thread key of each accepted message, in arrival order.
        self.threads: list[str | None] = []

    @staticmethod
    def _error(code: int, status: str, message: str) -> tuple[int, Headers, bytes]:
        return _json_response(
            code, {"error": {"code": code, "message": message, "status": status}}
        )

    async def handle(self, request: ReceivedRequest) -> tuple[int, Headers, bytes]:
        if request.path != self.path:
            return self._error(404, "NOT_FOUND", "Requested entity was not found.")
        params = request.query
        if params.get("token") != self.token or params.get("key") != self.key:
            return self._error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials.",
            )
        scripted = self._take_scripted()
        if scripted is not None:
            return scripted
        if request.method != "POST":
            return self._error(405, "METHOD_NOT_ALLOWED", "Method not allowed")

        request_id = params.get("requestId")
        if request_id is not None and request_id in self.by_request_id:
            name = self.by_request_id[request_id]
            return _json_response(
                200, {"name": name, "space": {"name": f"spaces/{self.space}"}}
            )
        if self._bucket.take() > 0:
            self.rejections.append("resource exhausted")
            return self._error(
                429,
                "RESOURCE_EXHAUSTED",
                "Resource has been exhausted (e.g. check quota).",
            )

        problem = self._check(request, params)
        if problem is not None:
            self.rejections.append(problem)
            return self._error(400, "INVALID_ARGUMENT", problem)
        self.messages.append(request.json)
        thread = request.json.get("thread", {}).get("threadKey")
        self.threads.append(thread)
        name = f"spaces/{self.space}/messages/{len(self.messages)}.{len(self.messages)}"
        if request_id is not None:
            self.by_request_id[request_id] = name
        thread_name = f"spaces/{self.space}/threads/{thread or len(self.messages)}"
        return _json_response(200, {"name": name, "thread": {"name": thread_name}})

    @staticmethod
    def _check(request: ReceivedRequest, params: dict[str, str]) -> str | None:
        if not _is_json(request) or not isinstance(request.json, dict):
            return "Invalid JSON payload received."
        if len(request.body) > GOOGLE_CHAT_MESSAGE_BYTES:
            return f"Message of {len(request.body)} bytes exceeds {GOOGLE_CHAT_MESSAGE_BYTES}"
        payload = request.json
        if not payload.get("text") and not payload.get("cardsV2"):
            return "Message cannot be empty."
        cards = payload.get("cardsV2", [])
        if not isinstance(cards, list):
            return "cardsV2 must be a list"
        for card in cards:
            body = card.get("card") if isinstance(card, dict) else None
            if not isinstance(body, dict) or not isinstance(
                body.get("sections", []), list
            ):
                return "cardsV2[].card must be a card"
            for section in body.get("sections", []):
                widgets = section.get("widgets")
                if not isinstance(widgets, list) or not widgets:
                    return "a card section needs widgets"
        option = params.get("messageReplyOption")
        if option is not None and option not in _GOOGLE_CHAT_REPLY_OPTIONS:
            return f"Invalid value for messageReplyOption: {option}"
        return None


# Teams: about 28 KB per message
# (https://learn.microsoft.com/microsoftteams/platform/webhooks-and-connectors/how-to/add-incoming-webhook).
TEAMS_MESSAGE_BYTES = 28 * 1024
ADAPTIVE_CARD = "application/vnd.microsoft.card.adaptive"


class TeamsWorkflowReceiver(_ChatReceiver):
    """A Teams Workflows webhook ("Post to a channel when a webhook request is received").

    * ``POST /workflows/<id>/triggers/manual/paths/invoke?api-version=…&sig=…``;
      a wrong ``sig`` answers 401 ``DirectApiAuthorizationRequired``.
    * The body is ``{"type": "message", "attachments": [...]}`` with Adaptive
      Card attachments whose ``content`` has ``type: AdaptiveCard``, a
      ``version`` and a ``body`` list of elements with a ``type``; else 400.
    * Over about 28 KB: 413 ``Request Entity Too Large``.
    * Success: 202 Accepted with an empty body.
    * Beyond ``rate`` a second after a burst: 429 without a wait hint.
    """

    def __init__(
        self,
        *,
        workflow: str = "a1b2c3d4e5f6",
        sig: str | None = None,
        rate: float = 4.0,
        burst: int = 4,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        super().__init__()
        self.sig = sig or secrets.token_urlsafe(32)
        self.path = f"/workflows/{workflow}/triggers/manual/paths/invoke"
        self._bucket = TokenBucket(rate=rate, burst=burst, clock=clock)

    async def handle(self, request: ReceivedRequest) -> tuple[int, Headers, bytes]:
        params = request.query
        if request.path != self.path:
            return _json_response(
                404, {"error": {"code": "TriggerNotFound", "message": "not found"}}
            )
        if params.get("sig") != self.sig:
            error = {
                "code": "DirectApiAuthorizationRequired",
                "message": "The request must be authenticated.",
            }
            return _json_response(401, {"error": error})
        scripted = self._take_scripted()
        if scripted is not None:
            return scripted
        if request.method != "POST":
            return 405, [], b""
        if self._bucket.take() > 0:
            self.rejections.append("too many requests")
            return _json_response(
                429,
                {
                    "error": {
                        "code": "WorkflowTriggeredTooManyTimes",
                        "message": "Rate limit",
                    }
                },
            )
        if len(request.body) > TEAMS_MESSAGE_BYTES:
            self.rejections.append("too large")
            return 413, [], b"Request Entity Too Large"
        problem = _check_teams_payload(request)
        if problem is not None:
            self.rejections.append(problem)
            return _json_response(
                400, {"error": {"code": "InvalidRequestContent", "message": problem}}
            )
        self.messages.append(request.json)
        return 202, [], b""


def _check_teams_payload(request: ReceivedRequest) -> str | None:
    if not _is_json(request) or not isinstance(request.json, dict):
        return "body is not a JSON object"
    payload = request.json
    if payload.get("type") != "message":
        return "type must be 'message'"
    attachments = payload.get("attachments")
    if not isinstance(attachments, list) or not attachments:
        return "attachments must be a non-empty list"
    for attachment in attachments:
        if attachment.get("contentType") != ADAPTIVE_CARD:
            return f"contentType must be {ADAPTIVE_CARD}"
        card = attachment.get("content")
        if not isinstance(card, dict) or card.get("type") != "AdaptiveCard":
            return "content must be an AdaptiveCard"
        if not isinstance(card.get("version"), str):
            return "AdaptiveCard needs a version"
        body = card.get("body")
        if not isinstance(body, list) or not body:
            return "AdaptiveCard needs a body"
        problem = _check_card_elements(body)
        if problem:
            return problem
    return None


def _check_card_elements(elements: list[Any]) -> str | None:
    for element in elements:
        if not isinstance(element, dict) or not isinstance(element.get("type"), str):
            return "every card element needs a type"
        if element["type"] == "TextBlock" and not isinstance(element.get("text"), str):
            return "a TextBlock needs text"
        if element["type"] == "Container":
            problem = _check_card_elements(element.get("items", []))
            if problem:
                return problem
        if element["type"] == "FactSet":
            for fact in element.get("facts", []):
                if not isinstance(fact.get("title"), str) or not isinstance(
                    fact.get("value"), str
                ):
                    return "a fact needs a title and a value"
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
