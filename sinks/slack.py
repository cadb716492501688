"""The Slack sink: alarms through an incoming webhook or chat.postMessage.

The message is Block Kit (a header, the summary, and a section of fields) with
a plain ``text`` fallback for notifications. User-supplied strings are escaped
for mrkdwn and cut to Slack's documented limits; a cut is logged as a warning.

Slack incoming webhooks respond with HTTP 200 and the body ``ok`` on success.
With a bot token the sink calls ``chat.postMessage``, which answers 200 with
``{"ok": true, "ts": …}``, or 200 with ``{"ok": false, "error": …}`` when it
refuses. Neither takes an idempotency key, so a retry after a lost response can
post the message twice. Several alarms of one group go out as one message: a
header and a section per alarm.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from mesh.alarm import Alarm, Severity, Status, format_time

from ._chat import (
    CHAT_KEYS,
    ChatSink,
    Links,
    Rendered,
    cut,
    fit,
    group_title,
    parse_chat_options,
    status_title,
)
from ._text import ELLIPSIS, truncate
from .base import check_url, validate_http_sink_fields
from .errors import SinkConfigError, SinkPermanentError, SinkRetryableError
from .http import Delivery, parse_json
from .secret import Secret, resolve_secret

__all__ = [
    "SlackConfig",
    "SlackSink",
    "SlackMessage",
    "render_message",
    "escape_mrkdwn",
    "truncate",
    "ELLIPSIS",
    "MAX_TEXT_CHARS",
    "MAX_BLOCKS",
    "MAX_SECTION_TEXT_CHARS",
    "MAX_SECTION_FIELDS",
    "MAX_FIELD_CHARS",
    "MAX_HEADER_CHARS",
]

logger = logging.getLogger(__name__)

# Slack's documented limits. Slack's documentation counts "characters" without
# defining them, so they are counted here as Unicode code points (Python str).
#
# Top-level "text": Slack truncates longer text and may split it into several
# messages (https://api.slack.com/changelog/2018-04-truncating-really-long-messages).
MAX_TEXT_CHARS = 40_000
# Blocks per message (https://docs.slack.dev/reference/block-kit/blocks).
MAX_BLOCKS = 50
# Section text, and the number and length of section fields
# (https://api.slack.com/reference/block-kit/blocks#section).
MAX_SECTION_TEXT_CHARS = 3000
MAX_SECTION_FIELDS = 10
MAX_FIELD_CHARS = 2000
# Header block text (https://docs.slack.dev/reference/block-kit/blocks/header-block).
MAX_HEADER_CHARS = 150

# NOTE: Slack users report msg_blocks_too_long errors for messages with about
# 13,200 characters across all blocks, below every documented limit. A summary
# and fields near their own limits could reach that, and nothing here guards
# against it.

DEFAULT_TIMEOUT = 10.0

SLACK_API_URL = "https://slack.com/api/chat.postMessage"

# Characters across all blocks that stay clear of the undocumented
# msg_blocks_too_long error (reported at about 13,200).
MAX_BLOCKS_CHARS = 12_000

# chat.postMessage errors that Slack describes as transient; every other error
# (invalid_auth, channel_not_found, not_in_channel, …) is permanent.
TRANSIENT_API_ERRORS = {
    "internal_error",
    "fatal_error",
    "service_unavailable",
    "request_timeout",
    "ratelimited",
}

KEYS = (
    *CHAT_KEYS,
    "url",
    "url_env",
    "url_file",
    "token",
    "token_env",
    "token_file",
    "channel",
    "api_url",
)

RESOLVED_EMOJI = ":white_check_mark:"
FIRING_EMOJI = {
    Severity.CRITICAL: ":red_circle:",
    Severity.WARNING: ":large_orange_circle:",
    Severity.INFO: ":large_blue_circle:",
}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SlackConfig:
    """A Slack channel: through an incoming webhook, or a bot token.

    Set ``url`` for an incoming webhook, or ``token`` and ``channel`` for
    chat.postMessage; not both.
    """

    # Sink name, unique within the agent and used in logs and errors.
    name: str
    # Incoming webhook URL, https://hooks.slack.com/services/T…/B…/…. The URL
    # is the credential, so it is kept secret.
    url: Secret | None = None
    # Bot token, xoxb-…, for chat.postMessage; the credential.
    token: Secret | None = None
    # Channel id (C…) or name that the bot posts to; it must be a member.
    channel: str | None = None
    # chat.postMessage endpoint: Slack's, or a test stand-in.
    api_url: Secret = Secret(SLACK_API_URL)
    # Deadline in seconds for one attempt. A longer deadline waits out a slow
    # response but holds up the sink's queue.
    timeout: float = DEFAULT_TIMEOUT
    links: Links = Links()

    def __post_init__(self) -> None:
        if (self.url is None) == (self.token is None):
            raise ValueError("expected exactly one of url and token")
        if self.token is not None and not self.channel:
            raise ValueError("a bot token needs a channel")
        url = self.url if self.url is not None else self.api_url
        validate_http_sink_fields(self.name, url, self.timeout)

    @classmethod
    def parse(
        cls, raw: Mapping[str, Any], where: str, environ: Mapping[str, str], name: str
    ) -> SlackConfig:
        options = parse_chat_options(raw, where)
        token_keys = [k for k in ("token", "token_env", "token_file") if k in raw]
        url_keys = [k for k in ("url", "url_env", "url_file") if k in raw]
        if token_keys and url_keys:
            raise SinkConfigError(
                f"{where}: {url_keys[0]} and {token_keys[0]} are both set, expected "
                "url for an incoming webhook or token and channel for a bot"
            )
        if not token_keys:
            for key in ("channel", "api_url"):
                if key in raw:
                    raise SinkConfigError(
                        f"{where}.{key}: only for a bot token, expected token with it"
                    )
            url = check_url(resolve_secret(raw, "url", where, environ))
            return cls(name=name, url=url, **options)

        token = resolve_secret(raw, "token", where, environ)
        if not token.reveal().startswith(("xoxb-", "xoxp-")):
            raise SinkConfigError(
                f"{token.source}: invalid token, expected a bot token (xoxb-…)"
            )
        channel = raw.get("channel")
        if not isinstance(channel, str) or not channel.strip():
            raise SinkConfigError(
                f"{where}.channel: invalid value {channel!r}, expected a channel id "
                "such as C0123456789"
            )
        if "api_url" in raw:
            options["api_url"] = check_url(
                resolve_secret(raw, "api_url", where, environ)
            )
        return cls(name=name, token=token, channel=channel.strip(), **options)


@dataclasses.dataclass(frozen=True, slots=True)
class SlackMessage:
    """A rendered Slack message and the parts that had to be cut to fit."""

    # The JSON body for the incoming webhook: "text" and "blocks".
    payload: dict[str, Any]
    # Names of the cut parts, such as "header" or "field 'observers'". Empty
    # when nothing was cut.
    truncated: tuple[str, ...]


def escape_mrkdwn(text: str) -> str:
    """Escape the three characters that Slack parses as control characters in text.

    Slack reads ``<…>`` as a link or mention (``<!channel>`` notifies everyone)
    and ``&`` as the start of an entity, so an unescaped summary could ping a
    channel or hide text.
    """
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_message(alarm: Alarm) -> SlackMessage:
    """Render ``alarm`` as a Slack message within Slack's documented limits."""
    truncated: list[str] = []

    def fit_part(part: str, text: str, limit: int, *, escaped: bool = True) -> str:
        fitted, cut = truncate(text, limit, escaped=escaped)
        if cut:
            truncated.append(part)
        return fitted

    if alarm.status is Status.RESOLVED:
        emoji, title = RESOLVED_EMOJI, "RESOLVED"
    else:
        emoji, title = FIRING_EMOJI[alarm.severity], f"FIRING ({alarm.severity.value})"

    # Header text is plain_text, which Slack does not parse as mrkdwn, so it is
    # not escaped. Emoji codes still render there because of "emoji": True.
    # NOTE: Slack's documentation does not say whether plain_text decodes
    # &amp; entities; if it does, a literal "&amp;" in a subject shows as "&".
    header = f"{emoji} {title}: {alarm.subject}"
    header = fit_part("header", header, MAX_HEADER_CHARS, escaped=False)
    summary = escape_mrkdwn(alarm.summary) if alarm.summary else "_no summary_"
    summary = fit_part("summary", summary, MAX_SECTION_TEXT_CHARS)

    labelled = [
        ("cluster", "Cluster", alarm.cluster),
        ("reporter", "Reporter", alarm.reporter),
        ("since", "Since", format_time(alarm.started_at)),
    ]
    if alarm.ended_at is not None:
        labelled.append(("ended", "Ended", format_time(alarm.ended_at)))
    labelled.append(("incident", "Incident", alarm.incident))
    if alarm.observers:
        labelled.append(("observers", "Observed by", ", ".join(alarm.observers)))
    assert len(labelled) <= MAX_SECTION_FIELDS
    fields = []
    for key, label, value in labelled:
        field = f"*{label}*\n{escape_mrkdwn(value)}"
        field = fit_part(f"field {key!r}", field, MAX_FIELD_CHARS)
        fields.append({"type": "mrkdwn", "text": field})

    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": header, "emoji": True},
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": summary}},
        {"type": "section", "fields": fields},
    ]
    assert len(blocks) <= MAX_BLOCKS

    # The fallback text shows in notifications and in clients without Block Kit.
    fallback = (
        f"{emoji} {title}: {escape_mrkdwn(alarm.subject)} "
        f"on {escape_mrkdwn(alarm.cluster)}\n{escape_mrkdwn(alarm.summary)}"
    )
    text = fit_part("text", fallback.rstrip(), MAX_TEXT_CHARS)

    return SlackMessage({"text": text, "blocks": blocks}, tuple(truncated))


def _link_elements(alarm: Alarm, links: Links) -> list[dict[str, Any]]:
    # "|" and ">" would end Slack's <url|label> early.
    return [
        {
            "type": "mrkdwn",
            "text": f"<{url.replace('|', '%7C').replace('>', '%3E')}|{label}>",
        }
        for label, url in links.render(alarm)
    ]


def render_group(alarms: Sequence[Alarm], links: Links = Links()) -> Rendered:
    """Render several alarms as one message: a header and a section each."""

    def build(shown: Sequence[Alarm], summary_chars: int) -> dict[str, Any]:
        title = group_title(alarms)
        if len(shown) < len(alarms):
            title += f" (showing {len(shown)})"
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": title}}
        ]
        for alarm in shown:
            emoji = (
                RESOLVED_EMOJI
                if alarm.status is Status.RESOLVED
                else FIRING_EMOJI[alarm.severity]
            )
            summary = truncate(
                escape_mrkdwn(alarm.summary), summary_chars, escaped=True
            )[0]
            text = (
                f"{emoji} *{status_title(alarm)}*: {escape_mrkdwn(cut(alarm.subject))}\n"
                f"cluster {escape_mrkdwn(cut(alarm.cluster))} · since "
                f"{format_time(alarm.started_at)}\n{summary}"
            )
            text = truncate(text, MAX_SECTION_TEXT_CHARS, escaped=True)[0]
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text}})
            elements = _link_elements(alarm, links)
            if elements:
                blocks.append({"type": "context", "elements": elements})
        return {"text": escape_mrkdwn(title), "blocks": blocks}

    def size(payload: dict[str, Any]) -> float:
        chars = len(json.dumps(payload["blocks"], ensure_ascii=False))
        return max(len(payload["blocks"]) / MAX_BLOCKS, chars / MAX_BLOCKS_CHARS)

    return fit(build, size, alarms)


class SlackSink(ChatSink):
    """Posts alarms to a Slack channel through a webhook or chat.postMessage."""

    kind = "slack"
    max_group = 20

    def url(self, idempotency_key: str) -> Secret:
        config = self.config
        return config.url if config.url is not None else config.api_url

    def headers(self, idempotency_key: str) -> dict[str, str]:
        headers = super().headers(idempotency_key)
        if self.config.token is not None:
            headers["Authorization"] = f"Bearer {self.config.token.reveal()}"
        return headers

    def render(self, alarms: Sequence[Alarm]) -> Rendered:
        if len(alarms) == 1:
            message = render_message(alarms[0])
            payload = message.payload
            elements = _link_elements(alarms[0], self.config.links)
            if elements:
                payload["blocks"].append({"type": "context", "elements": elements})
            rendered = Rendered(payload, message.truncated)
        else:
            rendered = render_group(alarms, self.config.links)
        if self.config.channel is not None:
            rendered.payload["channel"] = self.config.channel
        return rendered

    def check_answer(self, delivery: Delivery) -> str:
        if self.config.token is not None:
            return self._check_api_answer(delivery)
        # A 2xx body other than "ok" does not come from Slack but from a proxy,
        # or from a URL that is not a Slack webhook.
        if delivery.body.strip() != b"ok":
            raise SinkPermanentError(
                f"sink {self.name!r}: receiver returned {delivery.description} "
                f"with body {self.excerpt(delivery.body)!r}, expected 'ok'",
                status=delivery.status,
            )
        return delivery.description

    def _check_api_answer(self, delivery: Delivery) -> str:
        # chat.postMessage answers 200 with {"ok": false, "error": …} when it
        # refuses (https://api.slack.com/methods/chat.postMessage#errors).
        answer = parse_json(delivery.body)
        if isinstance(answer, dict) and answer.get("ok") is True:
            ts, channel = answer.get("ts"), answer.get("channel")
            return f"{delivery.description}: ts={ts} channel={channel}"
        error = answer.get("error") if isinstance(answer, dict) else None
        message = (
            f"sink {self.name!r}: chat.postMessage returned {delivery.description} "
            f"with error {error or self.excerpt(delivery.body)!r}"
        )
        if error in TRANSIENT_API_ERRORS:
            raise SinkRetryableError(message, status=delivery.status)
        raise SinkPermanentError(message, status=delivery.status)
