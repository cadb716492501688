"""The Microsoft Teams sink: an Adaptive Card through a Workflows webhook.

Office 365 connectors are being retired (announced July 2024), so this sink
posts to a Power Automate / Workflows URL made from the template "Post to a
channel when a webhook request is received". The URL's ``sig`` parameter
authorises the call, so the URL is a :class:`~sinks.secret.Secret`. The body is
the message shape those flows expect::

    {"type": "message", "attachments": [{"contentType":
      "application/vnd.microsoft.card.adaptive", "contentUrl": null,
      "content": {"type": "AdaptiveCard", "version": "1.4", "body": [...]}}]}

A flow answers 202 Accepted. Messages are limited to about 28 KB; a larger one
gets 413, which is permanent, so the sink keeps well under it. 429 and 5xx are
retried with backoff (no wait hint is documented).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from mesh.alarm import Alarm, Severity, Status

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
    json_body,
    parse_chat_options,
    severity_emoji,
    status_title,
)
from ._text import escape_markdown, truncate
from .base import check_url, validate_http_sink_fields
from .secret import Secret, resolve_secret

__all__ = ["TeamsConfig", "TeamsSink", "render_card", "MAX_MESSAGE_BYTES"]

# About 28 KB per message (Teams' documentation for incoming webhooks).
MAX_MESSAGE_BYTES = 28 * 1024

ADAPTIVE_CARD = "application/vnd.microsoft.card.adaptive"
CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"

# TextBlock colours, named by the Adaptive Card schema.
CARD_COLOURS = {
    Severity.CRITICAL: "Attention",
    Severity.WARNING: "Warning",
    Severity.INFO: "Accent",
}

KEYS = (*CHAT_KEYS, "url", "url_env", "url_file")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TeamsConfig:
    """A Teams channel's Workflows webhook."""

    # Sink name, unique within the agent and used in logs and errors.
    name: str
    # Workflow URL with its sig parameter; the credential.
    url: Secret
    # Deadline in seconds for one attempt.
    timeout: float = DEFAULT_TIMEOUT
    links: Links = Links()

    def __post_init__(self) -> None:
        validate_http_sink_fields(self.name, self.url, self.timeout)

    @classmethod
    def parse(
        cls, raw: Mapping[str, Any], where: str, environ: Mapping[str, str], name: str
    ) -> TeamsConfig:
        url = check_url(resolve_secret(raw, "url", where, environ))
        return cls(name=name, url=url, **parse_chat_options(raw, where))


def _colour(alarm: Alarm) -> str:
    return "Good" if alarm.status is Status.RESOLVED else CARD_COLOURS[alarm.severity]


def _container(
    alarm: Alarm, links: Links, summary_chars: int, *, full: bool
) -> dict[str, Any]:
    subject = escape_markdown(cut(alarm.subject))
    title = f"{severity_emoji(alarm)} {status_title(alarm)}: {subject}"
    facts = alarm_facts(alarm) if full else alarm_facts(alarm)[:3]
    items: list[dict[str, Any]] = [
        {
            "type": "TextBlock",
            "text": title,
            "weight": "Bolder",
            "size": "Medium" if full else "Default",
            "color": _colour(alarm),
            "wrap": True,
        },
        {
            "type": "TextBlock",
            "text": escape_markdown(truncate(alarm.summary, summary_chars)[0])
            or "_no summary_",
            "wrap": True,
        },
        {
            "type": "FactSet",
            "facts": [
                {"title": label, "value": escape_markdown(cut(value))}
                for label, value in facts
            ],
        },
    ]
    actions = [
        {"type": "Action.OpenUrl", "title": label, "url": url}
        for label, url in links.render(alarm)
    ]
    if actions:
        items.append({"type": "ActionSet", "actions": actions})
    return {"type": "Container", "separator": not full, "items": items}


def render_card(alarms: Sequence[Alarm], links: Links = Links()) -> Rendered:
    """Render ``alarms`` as one Workflows message with an Adaptive Card."""

    def build(shown: Sequence[Alarm], summary_chars: int) -> dict[str, Any]:
        full = len(alarms) == 1
        body: list[dict[str, Any]] = []
        if not full:
            title = group_title(alarms)
            if len(shown) < len(alarms):
                title += f" (showing {len(shown)})"
            body.append(
                {
                    "type": "TextBlock",
                    "text": title,
                    "weight": "Bolder",
                    "size": "Large",
                    "wrap": True,
                }
            )
        body += [_container(a, links, summary_chars, full=full) for a in shown]
        card = {
            "$schema": CARD_SCHEMA,
            "type": "AdaptiveCard",
            "version": "1.4",
            "body": body,
        }
        attachment = {"contentType": ADAPTIVE_CARD, "contentUrl": None, "content": card}
        return {"type": "message", "attachments": [attachment]}

    # A margin under the limit for the flow's own envelope.
    return fit(build, lambda p: len(json_body(p)) / (MAX_MESSAGE_BYTES - 1024), alarms)


class TeamsSink(ChatSink):
    """Posts alarms to a Teams channel through a Workflows webhook."""

    kind = "teams"
    max_group = 10

    def url(self, idempotency_key: str) -> Secret:
        return self.config.url

    def render(self, alarms: Sequence[Alarm]) -> Rendered:
        return render_card(alarms, self.config.links)
