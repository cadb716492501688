"""The Google Chat sink: alarms as cards through a space's incoming webhook.

``POST https://chat.googleapis.com/v1/spaces/SPACE/messages?key=KEY&token=TOKEN``
with a ``cardsV2`` message. The URL's ``token`` is the credential, so the URL
is a :class:`~sinks.secret.Secret`.

* Idempotency: the sink adds ``requestId`` (a hash of the idempotency key) to
  the URL. Google Chat answers a repeated ``requestId`` with the message it
  already created, so a retry after a lost answer posts nothing twice.
* Threads: ``thread.threadKey`` is the incident id, with
  ``messageReplyOption=REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD``, so the resolved
  alarm lands in the thread of its firing alarm.
* Size: 32,000 bytes per message
  (https://developers.google.com/workspace/chat/api/reference/rest/v1/spaces.messages).
* Rate: 60 writes a minute per space; over it, 429 without a wait hint, so
  the outbox backs off exponentially, as Google's documentation asks.

Card text widgets take a small HTML subset, so user strings are HTML-escaped.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
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
    colour,
    cut,
    fit,
    group_title,
    json_body,
    parse_chat_options,
    severity_emoji,
    status_title,
)
from ._text import escape_html, truncate
from .base import check_url, validate_http_sink_fields
from .errors import SinkConfigError
from .http import Delivery, parse_json
from .secret import Secret, resolve_secret

__all__ = ["GoogleChatConfig", "GoogleChatSink", "render_card", "MAX_MESSAGE_BYTES"]

# "The maximum message size, including text and cards, is 32,000 bytes."
MAX_MESSAGE_BYTES = 32_000

KEYS = (*CHAT_KEYS, "url", "url_env", "url_file")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GoogleChatConfig:
    """A Google Chat space's incoming webhook."""

    # Sink name, unique within the agent and used in logs and errors.
    name: str
    # Webhook URL with its key and token; the credential.
    url: Secret
    # Deadline in seconds for one attempt.
    timeout: float = DEFAULT_TIMEOUT
    links: Links = Links()

    def __post_init__(self) -> None:
        validate_http_sink_fields(self.name, self.url, self.timeout)

    @classmethod
    def parse(
        cls, raw: Mapping[str, Any], where: str, environ: Mapping[str, str], name: str
    ) -> GoogleChatConfig:
        url = check_url(resolve_secret(raw, "url", where, environ))
        parsed = httpx.URL(url.reveal())
        if not parsed.path.endswith("/messages") or "token" not in parsed.params:
            raise SinkConfigError(
                f"{url.source}: not a Google Chat webhook URL, expected "
                "https://chat.googleapis.com/v1/spaces/<space>/messages?key=…&token=…"
            )
        return cls(name=name, url=url, **parse_chat_options(raw, where))


def _html_colour(alarms: Sequence[Alarm]) -> str:
    return f"#{colour(alarms):06x}"


def _section(
    alarm: Alarm, links: Links, summary_chars: int, *, full: bool
) -> dict[str, Any]:
    summary = (
        escape_html(truncate(alarm.summary, summary_chars)[0]) or "<i>no summary</i>"
    )
    widgets: list[dict[str, Any]] = [{"textParagraph": {"text": summary}}]
    facts = alarm_facts(alarm) if full else alarm_facts(alarm)[:3]
    widgets += [
        {"decoratedText": {"topLabel": label, "text": escape_html(cut(value))}}
        for label, value in facts
    ]
    buttons = [
        {"text": label, "onClick": {"openLink": {"url": url}}}
        for label, url in links.render(alarm)
    ]
    if buttons:
        widgets.append({"buttonList": {"buttons": buttons}})
    title = (
        f'{severity_emoji(alarm)} <font color="{_html_colour([alarm])}">'
        f"{escape_html(status_title(alarm))}</font>: {escape_html(cut(alarm.subject))}"
    )
    return {"header": title, "widgets": widgets}


def render_card(alarms: Sequence[Alarm], links: Links = Links()) -> Rendered:
    """Render ``alarms`` as one card message of at most 32,000 bytes."""

    def build(shown: Sequence[Alarm], summary_chars: int) -> dict[str, Any]:
        full = len(alarms) == 1
        first = alarms[0]
        if full:
            header = {
                "title": cut(f"{status_title(first)}: {first.subject}"),
                "subtitle": cut(f"cluster {first.cluster}"),
            }
        else:
            title = group_title(alarms)
            if len(shown) < len(alarms):
                title += f" (showing {len(shown)})"
            header = {"title": title}
        sections = [_section(a, links, summary_chars, full=full) for a in shown]
        fallback = "; ".join(f"{status_title(a)}: {cut(a.subject, 80)}" for a in alarms)
        return {
            "fallbackText": truncate(fallback, 1000)[0],
            "cardsV2": [
                {"cardId": "alarms", "card": {"header": header, "sections": sections}}
            ],
        }

    return fit(build, lambda p: len(json_body(p)) / (MAX_MESSAGE_BYTES - 512), alarms)


class GoogleChatSink(ChatSink):
    """Posts alarms to a Google Chat space through its incoming webhook."""

    kind = "googlechat"
    max_group = 10

    def url(self, idempotency_key: str) -> Secret:
        request_id = hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]
        params = {
            "requestId": request_id,
            "messageReplyOption": "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD",
        }
        url = httpx.URL(self.config.url.reveal()).copy_merge_params(params)
        return Secret(str(url))

    def render(self, alarms: Sequence[Alarm]) -> Rendered:
        rendered = render_card(alarms, self.config.links)
        payload = dict(rendered.payload)
        if len({alarm.incident for alarm in alarms}) == 1:
            # Firing and resolved alarms of one incident share a thread.
            payload["thread"] = {"threadKey": cut(alarms[0].incident, 128)}
        return Rendered(payload, rendered.truncated)

    def check_answer(self, delivery: Delivery) -> str:
        answer = parse_json(delivery.body)
        if isinstance(answer, dict) and isinstance(answer.get("name"), str):
            return f"{delivery.description}: message {answer['name']}"
        return super().check_answer(delivery)
