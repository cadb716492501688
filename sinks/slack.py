"""The Slack sink: one message per alarm through an incoming webhook.

The message is Block Kit (a header, the summary, and a section of fields) with
a plain ``text`` fallback for notifications. User-supplied strings are escaped
for mrkdwn and cut to Slack's documented limits; a cut is logged as a warning.

Slack incoming webhooks respond with HTTP 200 and the body ``ok`` on success.
They take no idempotency key, so a retry after a lost response can post the
message twice.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import unicodedata
from collections.abc import Callable
from typing import Any

import httpx

from mesh.alarm import Alarm, Severity, SignedAlarm, Status, format_time

from .base import validate_http_sink_fields
from .errors import SinkPermanentError
from .http import USER_AGENT, body_excerpt, post_alarm
from .secret import Secret

__all__ = [
    "SlackConfig",
    "SlackSink",
    "SlackMessage",
    "render_message",
    "escape_mrkdwn",
    "truncate",
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

ELLIPSIS = "…"

RESOLVED_EMOJI = ":white_check_mark:"
FIRING_EMOJI = {
    Severity.CRITICAL: ":red_circle:",
    Severity.WARNING: ":large_orange_circle:",
    Severity.INFO: ":large_blue_circle:",
}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SlackConfig:
    """A Slack incoming webhook to post alarms to."""

    # Sink name, unique within the agent and used in logs and errors.
    name: str
    # Incoming webhook URL, https://hooks.slack.com/services/T…/B…/…. The URL
    # is the credential, so it is kept secret.
    url: Secret
    # Deadline in seconds for one attempt. A longer deadline waits out a slow
    # response but holds up the sink's queue.
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        validate_http_sink_fields(self.name, self.url, self.timeout)


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


def truncate(text: str, limit: int, *, escaped: bool = False) -> tuple[str, bool]:
    """Cut ``text`` to at most ``limit`` characters, ending in an ellipsis.

    The cut never falls inside a user-perceived character: a combining mark,
    an emoji modifier or a joined emoji sequence stays with its base or goes
    with it, and so does the second half of a flag. With ``escaped``, the cut
    never falls inside an ``&amp;``, ``&lt;`` or ``&gt;`` entity either.

    Returns:
        The text, cut or not, and whether it was cut.
    """
    if len(text) <= limit:
        return text, False
    cut = limit - len(ELLIPSIS)
    while True:
        moved = _cluster_start(text, cut)
        if escaped:
            moved = _entity_start(text, moved)
        if moved == cut:
            break
        cut = moved
    return text[:cut] + ELLIPSIS, True


def _extends_previous(char: str) -> bool:
    """Return whether ``char`` is displayed as part of the character before it."""
    code = ord(char)
    return (
        unicodedata.category(char) in ("Mn", "Mc", "Me")
        or code == 0x200D  # zero width joiner
        or 0xFE00 <= code <= 0xFE0F  # variation selectors
        or 0x1F3FB <= code <= 0x1F3FF  # emoji skin tone modifiers
        or 0xE0020 <= code <= 0xE007F  # tags, as in subdivision flags
        or 0xE0100 <= code <= 0xE01EF  # variation selectors supplement
    )


def _is_regional_indicator(char: str) -> bool:
    return 0x1F1E6 <= ord(char) <= 0x1F1FF


def _cluster_start(text: str, index: int) -> int:
    """Move ``index`` back to the start of the user-perceived character it falls in.

    This covers combining marks, emoji sequences and flags, not every rule of
    Unicode text segmentation (UAX #29), which the standard library lacks.
    """
    while 0 < index < len(text):
        if _extends_previous(text[index]) or text[index - 1] == "\u200d":
            index -= 1
            continue
        if _is_regional_indicator(text[index]):
            # Flags are pairs of regional indicators, so an odd run before the
            # index means that text[index] is the second half of a pair.
            run = 0
            while run < index and _is_regional_indicator(text[index - run - 1]):
                run += 1
            if run % 2 == 1:
                index -= 1
                continue
        break
    return index


def _entity_start(text: str, index: int) -> int:
    """Move ``index`` back to the ``&`` of an entity that it would split."""
    # "&amp;", 5 characters, is the longest entity that escape_mrkdwn writes.
    ampersand = text.rfind("&", max(0, index - 4), index)
    if ampersand != -1 and ";" not in text[ampersand:index]:
        return ampersand
    return index


def render_message(alarm: Alarm) -> SlackMessage:
    """Render ``alarm`` as a Slack message within Slack's documented limits."""
    truncated: list[str] = []

    def fit(part: str, text: str, limit: int, *, escaped: bool = True) -> str:
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
    header = fit("header", header, MAX_HEADER_CHARS, escaped=False)
    summary = escape_mrkdwn(alarm.summary) if alarm.summary else "_no summary_"
    summary = fit("summary", summary, MAX_SECTION_TEXT_CHARS)

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
        field = fit(f"field {key!r}", field, MAX_FIELD_CHARS)
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
    text = fit("text", fallback.rstrip(), MAX_TEXT_CHARS)

    return SlackMessage({"text": text, "blocks": blocks}, tuple(truncated))


class SlackSink:
    """Posts each alarm to a Slack channel through an incoming webhook."""

    def __init__(
        self, config: SlackConfig, *, now: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self.name = config.name
        # Wall clock, for HTTP-date Retry-After values.
        self._now = now

    def __repr__(self) -> str:
        return f"SlackSink(name={self.name!r})"

    async def send(
        self,
        signed: SignedAlarm,
        *,
        client: httpx.AsyncClient,
        idempotency_key: str,
    ) -> str:
        alarm = signed.alarm
        message = render_message(alarm)
        if message.truncated:
            logger.warning(
                "slack message truncated to fit documented limits: %s "
                "sink=%s incident=%s",
                ", ".join(message.truncated),
                self.name,
                alarm.incident,
            )
        body = json.dumps(
            message.payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False
        ).encode("utf-8")
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": USER_AGENT,
        }
        delivery = await post_alarm(
            client,
            self.config.url,
            sink=self.name,
            content=body,
            headers=headers,
            timeout=self.config.timeout,
            now=self._now,
        )
        # A 2xx body other than "ok" does not come from Slack but from a proxy,
        # or from a URL that is not a Slack webhook.
        if delivery.body.strip() != b"ok":
            excerpt = body_excerpt(delivery.body, self.config.url.reveal())
            raise SinkPermanentError(
                f"sink {self.name!r}: receiver returned {delivery.description} "
                f"with body {excerpt!r}, expected 'ok'",
                status=delivery.status,
            )
        return delivery.description
