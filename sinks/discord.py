"""The Discord sink: alarms as embeds through a channel webhook.

``POST https://discord.com/api/webhooks/{id}/{token}?wait=true`` with
``{"embeds": [...], "allowed_mentions": {"parse": []}}``. The webhook URL holds
the token, so it is a :class:`~sinks.secret.Secret`. ``allowed_mentions`` with
an empty ``parse`` list keeps ``@everyone`` in a summary from pinging anyone,
and user strings are markdown-escaped as well.

Limits (https://discord.com/developers/docs/resources/message#embed-object-embed-limits):
10 embeds per message, title 256, description 4096, 25 fields of name 256 and
value 1024, footer 2048, and 6000 characters across all embeds.

Rate limits (https://discord.com/developers/docs/topics/rate-limits): every
answer carries ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset-After``. When
the bucket is empty the sink waits for the reset before its next request (up to
:data:`MAX_PACING_WAIT`, else it asks the outbox to retry later), because
Discord bans clients that collect too many 429s. A 429 carries ``retry_after``
(float seconds) in its body and a ``Retry-After`` header; both are honoured.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx
import trio

from mesh.alarm import Alarm, SignedAlarm, format_time

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
    parse_chat_options,
    severity_emoji,
    status_title,
)
from ._text import escape_markdown, truncate
from .base import check_url, validate_http_sink_fields
from .errors import SinkConfigError, SinkRetryableError
from .http import Delivery, classify_response, parse_json, parse_retry_after
from .secret import Secret, resolve_secret

__all__ = ["DiscordConfig", "DiscordSink", "render_embeds"]

# Embed limits, from Discord's documentation (see the module docstring).
MAX_EMBEDS = 10
MAX_TITLE_CHARS = 256
MAX_DESCRIPTION_CHARS = 4096
MAX_FIELDS = 25
MAX_FIELD_NAME_CHARS = 256
MAX_FIELD_VALUE_CHARS = 1024
MAX_FOOTER_CHARS = 2048
MAX_TOTAL_CHARS = 6000

# Longest wait for an empty rate-limit bucket inside one attempt, in seconds;
# a longer one is left to the outbox as a retry.
MAX_PACING_WAIT = 5.0

KEYS = (*CHAT_KEYS, "url", "url_env", "url_file")

_WEBHOOK_PATH = re.compile(r"/api(/v\d+)?/webhooks/\d+/[A-Za-z0-9._-]+/?")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DiscordConfig:
    """A Discord channel webhook to post alarms to."""

    # Sink name, unique within the agent and used in logs and errors.
    name: str
    # Webhook URL, https://discord.com/api/webhooks/<id>/<token>; the credential.
    url: Secret
    # Deadline in seconds for one attempt.
    timeout: float = DEFAULT_TIMEOUT
    links: Links = Links()

    def __post_init__(self) -> None:
        validate_http_sink_fields(self.name, self.url, self.timeout)

    @classmethod
    def parse(
        cls, raw: Mapping[str, Any], where: str, environ: Mapping[str, str], name: str
    ) -> DiscordConfig:
        url = check_url(resolve_secret(raw, "url", where, environ))
        path = httpx.URL(url.reveal()).path
        if _WEBHOOK_PATH.fullmatch(path) is None:
            raise SinkConfigError(
                f"{url.source}: not a Discord webhook URL, expected "
                "https://discord.com/api/webhooks/<id>/<token>"
            )
        return cls(name=name, url=url, **parse_chat_options(raw, where))


def embed_chars(embed: Mapping[str, Any]) -> int:
    """Return the characters of ``embed`` that count towards the 6000 limit."""
    total = len(embed.get("title", "")) + len(embed.get("description", ""))
    total += len(embed.get("footer", {}).get("text", ""))
    total += len(embed.get("author", {}).get("name", ""))
    for field in embed.get("fields", []):
        total += len(field["name"]) + len(field["value"])
    return total


def _embed(
    alarm: Alarm, links: Links, summary_chars: int, *, full: bool
) -> dict[str, Any]:
    title = f"{severity_emoji(alarm)} {status_title(alarm)}: {alarm.subject}"
    summary = truncate(alarm.summary, min(summary_chars, MAX_DESCRIPTION_CHARS // 2))[0]
    description = escape_markdown(summary) if summary else "*no summary*"
    link_text = " · ".join(f"[{label}]({url})" for label, url in links.render(alarm))
    if link_text:
        description += "\n" + link_text
    facts = alarm_facts(alarm) if full else alarm_facts(alarm)[:3]
    fields = [
        {
            "name": label,
            "value": escape_markdown(cut(value, MAX_FIELD_VALUE_CHARS // 4)),
            "inline": label not in ("Incident", "Observed by"),
        }
        for label, value in facts
    ]
    return {
        # Titles are not parsed as markdown, so they are cut but not escaped.
        "title": truncate(title, MAX_TITLE_CHARS)[0],
        "description": truncate(description, MAX_DESCRIPTION_CHARS)[0],
        "color": colour([alarm]),
        "fields": fields[:MAX_FIELDS],
        "timestamp": format_time(alarm.started_at),
    }


def render_embeds(alarms: Sequence[Alarm], links: Links = Links()) -> Rendered:
    """Render ``alarms`` as one webhook message within Discord's embed limits."""

    def build(shown: Sequence[Alarm], summary_chars: int) -> dict[str, Any]:
        embeds = [_embed(a, links, summary_chars, full=len(alarms) == 1) for a in shown]
        payload: dict[str, Any] = {"embeds": embeds, "allowed_mentions": {"parse": []}}
        if len(alarms) > 1:
            content = group_title(alarms)
            if len(shown) < len(alarms):
                content += f" (showing {len(shown)})"
            payload["content"] = content
        return payload

    def size(payload: dict[str, Any]) -> float:
        total = sum(embed_chars(embed) for embed in payload["embeds"])
        return max(total / MAX_TOTAL_CHARS, len(payload["embeds"]) / MAX_EMBEDS)

    return fit(build, size, alarms)


class DiscordSink(ChatSink):
    """Posts alarms to a Discord channel through a webhook."""

    kind = "discord"
    max_group = MAX_EMBEDS

    def __init__(
        self, config: DiscordConfig, *, now: Callable[[], float] = time.time
    ) -> None:
        super().__init__(config, now=now)
        # trio time before which the rate-limit bucket is empty, from the last
        # answer's X-RateLimit headers; changed by each send.
        self._bucket_empty_until = 0.0

    def url(self, idempotency_key: str) -> Secret:
        url = httpx.URL(self.config.url.reveal()).copy_merge_params({"wait": "true"})
        return Secret(str(url))

    def render(self, alarms: Sequence[Alarm]) -> Rendered:
        return render_embeds(alarms, self.config.links)

    async def send_group(
        self,
        group: Sequence[SignedAlarm],
        *,
        client: httpx.AsyncClient,
        idempotency_key: str,
    ) -> str:
        wait = self._bucket_empty_until - trio.current_time()
        if wait > MAX_PACING_WAIT:
            raise SinkRetryableError(
                f"sink {self.name!r}: rate limit bucket empty for {wait:.1f}s", wait
            )
        if wait > 0:
            await trio.sleep(wait)
        return await super().send_group(
            group, client=client, idempotency_key=idempotency_key
        )

    def _note_bucket(self, response: httpx.Response) -> None:
        remaining = response.headers.get("X-RateLimit-Remaining")
        reset_after = response.headers.get("X-RateLimit-Reset-After")
        if remaining == "0" and reset_after is not None:
            seconds = parse_retry_after(reset_after, 0.0)
            if seconds is not None:
                self._bucket_empty_until = trio.current_time() + seconds

    def classify(
        self,
        response: httpx.Response,
        *,
        sink: str,
        body: bytes,
        now: Callable[[], float],
    ) -> str:
        self._note_bucket(response)
        if response.status_code == 429:
            answer = parse_json(body)
            hint = answer.get("retry_after") if isinstance(answer, dict) else None
            header = response.headers.get("Retry-After")
            waits = [float(hint)] if isinstance(hint, (int, float)) else []
            if header is not None and parse_retry_after(header, now()) is not None:
                waits.append(parse_retry_after(header, now()))  # type: ignore[arg-type]
            if waits:
                retry_after = max(waits)
                scope = (
                    "global"
                    if isinstance(answer, dict) and answer.get("global")
                    else "webhook"
                )
                if scope == "global":
                    self._bucket_empty_until = trio.current_time() + retry_after
                raise SinkRetryableError(
                    f"sink {sink!r}: receiver returned 429 too many requests ({scope}), "
                    f"retry after {retry_after:g}s",
                    retry_after,
                    status=429,
                )
        return classify_response(response, sink=sink, body=body, now=now)

    def check_answer(self, delivery: Delivery) -> str:
        answer = parse_json(delivery.body)
        if isinstance(answer, dict) and "id" in answer:
            return f"{delivery.description}: message id={answer['id']}"
        return super().check_answer(delivery)
