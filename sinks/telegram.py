"""The Telegram sink: alarms as HTML messages through the Bot API's sendMessage.

``POST {api_url}/bot<token>/sendMessage`` with ``{"chat_id", "text",
"parse_mode": "HTML"}``. The bot token is the credential and sits in the URL
path, so it is a :class:`~sinks.secret.Secret` and is masked wherever an answer
or an error quotes the URL.

Answers (https://core.telegram.org/bots/api#making-requests): ``{"ok": true,
"result": {...}}`` on success. A 429 carries ``parameters.retry_after`` in
seconds, which the outbox honours. A 400 with ``parameters.migrate_to_chat_id``
means the group became a supergroup: the sink switches to the new chat id and
asks for an immediate retry. Other 4xx answers ("message is too long", "can't
parse entities", a bot blocked or kicked) are permanent; 5xx are retried.
"""

from __future__ import annotations

import dataclasses
import html
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from mesh.alarm import Alarm

from ._chat import (
    CHAT_KEYS,
    DEFAULT_TIMEOUT,
    ChatSink,
    Links,
    Rendered,
    alarm_facts,
    cut,
    fit,
    group_title,
    parse_chat_options,
    severity_emoji,
    status_title,
)
from ._text import escape_html, truncate
from .base import check_url, validate_http_sink_fields
from .errors import SinkConfigError, SinkPermanentError, SinkRetryableError
from .http import Delivery, classify_response, parse_json
from .secret import Secret, resolve_secret

__all__ = ["TelegramConfig", "TelegramSink", "render_text", "MAX_TEXT_CHARS"]

logger = logging.getLogger(__name__)

TELEGRAM_API = "https://api.telegram.org"

# sendMessage text: "1-4096 characters after entities parsing"
# (https://core.telegram.org/bots/api#sendmessage).
MAX_TEXT_CHARS = 4096

KEYS = (
    *CHAT_KEYS,
    "token",
    "token_env",
    "token_file",
    "chat_id",
    "message_thread_id",
    "api_url",
)

_TAG = re.compile(r"<[^>]*>")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TelegramConfig:
    """A Telegram chat that a bot posts alarms to."""

    # Sink name, unique within the agent and used in logs and errors.
    name: str
    # Bot token from @BotFather, "123456:ABC-…"; the credential.
    token: Secret
    # Numeric chat id (negative for groups) or "@channelusername".
    chat_id: int | str
    # Topic of a forum supergroup to post in, or None for the main thread.
    message_thread_id: int | None = None
    # Bot API server: Telegram's, a self-hosted one, or a test stand-in.
    api_url: Secret = Secret(TELEGRAM_API)
    # Deadline in seconds for one attempt.
    timeout: float = DEFAULT_TIMEOUT
    links: Links = Links()

    def __post_init__(self) -> None:
        validate_http_sink_fields(self.name, self.api_url, self.timeout)
        if not isinstance(self.token, Secret):
            raise TypeError(f"token must be a Secret, got {type(self.token).__name__}")

    @classmethod
    def parse(
        cls, raw: Mapping[str, Any], where: str, environ: Mapping[str, str], name: str
    ) -> TelegramConfig:
        token = resolve_secret(raw, "token", where, environ)
        if re.fullmatch(r"\d+:[A-Za-z0-9_-]+", token.reveal()) is None:
            raise SinkConfigError(
                f"{token.source}: invalid bot token, expected <bot id>:<secret> "
                "as @BotFather gives it"
            )
        if "chat_id" not in raw:
            raise SinkConfigError(
                f"{where}.chat_id: missing, expected a chat id or @channel"
            )
        chat_id = raw["chat_id"]
        valid_chat = (isinstance(chat_id, int) and not isinstance(chat_id, bool)) or (
            isinstance(chat_id, str)
            and re.fullmatch(r"-?\d+|@[A-Za-z0-9_]{5,}", chat_id)
        )
        if not valid_chat:
            raise SinkConfigError(
                f"{where}.chat_id: invalid value {chat_id!r}, expected a number such "
                "as -1001234567890 or a channel such as @ops_alarms"
            )
        if isinstance(chat_id, str) and chat_id.lstrip("-").isdigit():
            chat_id = int(chat_id)
        thread = raw.get("message_thread_id")
        if thread is not None and (
            isinstance(thread, bool) or not isinstance(thread, int)
        ):
            raise SinkConfigError(
                f"{where}.message_thread_id: invalid value {thread!r}, expected a number"
            )
        options = parse_chat_options(raw, where)
        if "api_url" in raw:
            options["api_url"] = check_url(
                resolve_secret(raw, "api_url", where, environ)
            )
        return cls(
            name=name, token=token, chat_id=chat_id, message_thread_id=thread, **options
        )


def visible_length(text: str) -> int:
    """Return the length of HTML ``text`` after Telegram parses its entities."""
    return len(html.unescape(_TAG.sub("", text)))


def _alarm_block(alarm: Alarm, links: Links, summary_chars: int, *, full: bool) -> str:
    title = (
        f"{severity_emoji(alarm)} <b>{escape_html(status_title(alarm))}</b>: "
        f"<code>{escape_html(cut(alarm.subject))}</code>"
    )
    lines = [title]
    if full:
        facts = alarm_facts(alarm)
        lines += [
            f"<b>{label}</b>: {escape_html(cut(value))}" for label, value in facts
        ]
    else:
        since = dict(alarm_facts(alarm))["Since"]
        lines.append(f"cluster {escape_html(cut(alarm.cluster))} · since {since}")
    if alarm.summary:
        # Cut before escaping, so that no entity is split.
        lines.append(escape_html(truncate(alarm.summary, summary_chars)[0]))
    rendered = [
        f'<a href="{escape_html(url)}">{label}</a>'
        for label, url in links.render(alarm)
    ]
    if rendered:
        lines.append(" · ".join(rendered))
    return "\n".join(lines)


def render_text(alarms: Sequence[Alarm], links: Links = Links()) -> Rendered:
    """Render ``alarms`` as one HTML message of at most 4096 visible characters."""

    def build(shown: Sequence[Alarm], summary_chars: int) -> str:
        if len(alarms) == 1:
            return _alarm_block(shown[0], links, summary_chars, full=True)
        blocks = [f"<b>{escape_html(group_title(alarms))}</b>"]
        blocks += [_alarm_block(a, links, summary_chars, full=False) for a in shown]
        if len(shown) < len(alarms):
            blocks.append(f"… and {len(alarms) - len(shown)} more")
        return "\n\n".join(blocks)

    rendered = fit(build, lambda text: visible_length(text) / MAX_TEXT_CHARS, alarms)
    return rendered


class TelegramSink(ChatSink):
    """Posts alarms to a Telegram chat with the Bot API."""

    kind = "telegram"
    max_group = 20

    def __init__(
        self, config: TelegramConfig, *, now: Callable[[], float] = time.time
    ) -> None:
        super().__init__(config, now=now)
        # The chat posted to; replaced when Telegram says the group migrated.
        self.chat_id: int | str = config.chat_id

    def url(self, idempotency_key: str) -> Secret:
        base = self.config.api_url.reveal().rstrip("/")
        return Secret(f"{base}/bot{self.config.token.reveal()}/sendMessage")

    def render(self, alarms: Sequence[Alarm]) -> Rendered:
        rendered = render_text(alarms, self.config.links)
        payload: dict[str, Any] = {
            "chat_id": self.chat_id,
            "text": rendered.payload,
            "parse_mode": "HTML",
            "link_preview_options": {"is_disabled": True},
        }
        if self.config.message_thread_id is not None:
            payload["message_thread_id"] = self.config.message_thread_id
        return Rendered(payload, rendered.truncated)

    def classify(
        self,
        response: httpx.Response,
        *,
        sink: str,
        body: bytes,
        now: Callable[[], float],
    ) -> str:
        answer = parse_json(body)
        parameters = answer.get("parameters") if isinstance(answer, dict) else None
        parameters = parameters if isinstance(parameters, dict) else {}
        status = response.status_code
        if status == 429 and isinstance(parameters.get("retry_after"), (int, float)):
            retry_after = float(parameters["retry_after"])
            raise SinkRetryableError(
                f"sink {sink!r}: receiver returned 429 too many requests: "
                f"{self.excerpt(body)!r}, retry after {retry_after:g}s",
                retry_after,
                status=status,
            )
        migrate_to = parameters.get("migrate_to_chat_id")
        if (
            status == 400
            and isinstance(migrate_to, int)
            and not isinstance(migrate_to, bool)
        ):
            logger.warning(
                "telegram group became a supergroup, switching chat sink=%s chat=%s",
                sink,
                migrate_to,
            )
            self.chat_id = migrate_to
            raise SinkRetryableError(
                f"sink {sink!r}: chat migrated to {migrate_to}", 0.0, status=status
            )
        return classify_response(response, sink=sink, body=body, now=now)

    def check_answer(self, delivery: Delivery) -> str:
        answer = parse_json(delivery.body)
        if not isinstance(answer, dict) or answer.get("ok") is not True:
            raise SinkPermanentError(
                f"sink {self.name!r}: receiver returned {delivery.description} "
                f"with body {self.excerpt(delivery.body)!r}, expected ok true",
                status=delivery.status,
            )
        result = answer.get("result")
        message_id = result.get("message_id") if isinstance(result, dict) else None
        return f"{delivery.description}: message_id={message_id}"
