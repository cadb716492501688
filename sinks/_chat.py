"""What the chat receivers share: links, colours, facts, and one send path.

Every chat sink (Slack, Telegram, Discord, Google Chat, Teams) renders a list
of alarms, one or more, into its receiver's JSON, posts it through
:func:`sinks.http.post_alarm`, and checks the answer. :class:`ChatSink` is that
path; a receiver module supplies the config, the renderer and the answer check.

Links: a chat sink may add a runbook link and a UI link to each alarm, from URL
templates in its config. The placeholders ``{incident}``, ``{subject}``,
``{cluster}``, ``{severity}`` and ``{status}`` are replaced by the alarm's
fields, percent-encoded, for example
``runbook_url: "https://wiki.example.com/runbooks?subject={subject}"``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import string
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import httpx

from mesh.alarm import Alarm, Severity, SignedAlarm, Status, format_time

from ._text import truncate
from .base import check_timeout
from .errors import SinkConfigError
from .http import USER_AGENT, Delivery, body_excerpt, classify_response, post_alarm
from .secret import Secret, mask_secret

__all__ = [
    "Links",
    "LINK_FIELDS",
    "parse_links",
    "Rendered",
    "ChatSink",
    "status_title",
    "severity_emoji",
    "colour",
    "alarm_facts",
    "group_title",
    "json_body",
    "fit",
    "parse_chat_options",
    "CHAT_KEYS",
    "MAX_FACT_CHARS",
]

# Keys every chat sink accepts besides its own.
CHAT_KEYS = ("name", "type", "timeout", "runbook_url", "ui_url")

DEFAULT_TIMEOUT = 10.0

# Longest fact value (cluster, subject, incident…) shown; a longer one is cut,
# so that the facts of one alarm stay far below every receiver's limit.
MAX_FACT_CHARS = 256
# Longest summary tried first; fit() halves it while the message is too big.
MAX_SUMMARY_CHARS = 3000

logger = logging.getLogger(__name__)

LINK_KEYS = ("runbook_url", "ui_url")
LINK_FIELDS = ("incident", "subject", "cluster", "severity", "status")

# Colours by severity, and for resolved alarms, as 0xRRGGBB.
COLOURS = {
    Severity.CRITICAL: 0xD0021B,
    Severity.WARNING: 0xF5A623,
    Severity.INFO: 0x4A90E2,
}
RESOLVED_COLOUR = 0x2EB67D

EMOJI = {
    Severity.CRITICAL: "\U0001f534",  # red circle
    Severity.WARNING: "\U0001f7e0",  # orange circle
    Severity.INFO: "\U0001f535",  # blue circle
}
RESOLVED_EMOJI = "\u2705"  # white heavy check mark


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Links:
    """URL templates of the links shown with each alarm; empty means none."""

    runbook_url: str = ""
    ui_url: str = ""

    def render(self, alarm: Alarm) -> list[tuple[str, str]]:
        """Return ``(label, url)`` for each configured link of ``alarm``."""
        values = {
            "incident": alarm.incident,
            "subject": alarm.subject,
            "cluster": alarm.cluster,
            "severity": alarm.severity.value,
            "status": alarm.status.value,
        }
        quoted = {k: urllib.parse.quote(v, safe="") for k, v in values.items()}
        links = []
        if self.runbook_url:
            links.append(("Runbook", self.runbook_url.format(**quoted)))
        if self.ui_url:
            links.append(("Open in UI", self.ui_url.format(**quoted)))
        return links


def parse_links(raw: Mapping[str, Any], where: str) -> Links:
    """Read ``runbook_url`` and ``ui_url`` from a sink's config mapping.

    Raises:
        SinkConfigError: a template is not an http(s) URL or names an unknown
            placeholder.
    """
    values = {}
    for key in LINK_KEYS:
        if key not in raw:
            continue
        template = raw[key]
        expected = (
            "expected an http or https URL template with placeholders among "
            + ", ".join("{" + f + "}" for f in LINK_FIELDS)
        )
        if not isinstance(template, str) or not template.startswith(
            ("http://", "https://")
        ):
            raise SinkConfigError(
                f"{where}.{key}: invalid value {template!r}, {expected}"
            )
        try:
            names = [
                name for _, name, _, _ in string.Formatter().parse(template) if name
            ]
        except ValueError:
            raise SinkConfigError(
                f"{where}.{key}: invalid value {template!r}, {expected}"
            ) from None
        unknown = [name for name in names if name not in LINK_FIELDS]
        if unknown:
            raise SinkConfigError(
                f"{where}.{key}: unknown placeholder {unknown[0]!r}, {expected}"
            )
        values[key] = template
    return Links(**values)


def status_title(alarm: Alarm) -> str:
    """Return ``FIRING (critical)`` or ``RESOLVED``."""
    if alarm.status is Status.RESOLVED:
        return "RESOLVED"
    return f"FIRING ({alarm.severity.value})"


def severity_emoji(alarm: Alarm) -> str:
    return RESOLVED_EMOJI if alarm.status is Status.RESOLVED else EMOJI[alarm.severity]


def colour(alarms: Sequence[Alarm]) -> int:
    """Return the colour of the most severe firing alarm, green if none fires."""
    firing = [a.severity for a in alarms if a.status is Status.FIRING]
    for severity in Severity:  # most severe first
        if severity in firing:
            return COLOURS[severity]
    return RESOLVED_COLOUR


def alarm_facts(alarm: Alarm) -> list[tuple[str, str]]:
    """Return the labelled fields shown with an alarm, in display order."""
    facts = [
        ("Cluster", alarm.cluster),
        ("Subject", alarm.subject),
        ("Since", format_time(alarm.started_at)),
    ]
    if alarm.ended_at is not None:
        facts.append(("Ended", format_time(alarm.ended_at)))
    facts.append(("Reporter", alarm.reporter))
    facts.append(("Incident", alarm.incident))
    if alarm.observers:
        facts.append(("Observed by", ", ".join(alarm.observers)))
    return facts


def group_title(alarms: Sequence[Alarm]) -> str:
    """Return the title of a message of several alarms.

    For example ``3 alarms: 2 firing, 1 resolved``.
    """
    firing = sum(1 for a in alarms if a.status is Status.FIRING)
    resolved = len(alarms) - firing
    parts = [
        f"{n} {label}" for n, label in ((firing, "firing"), (resolved, "resolved")) if n
    ]
    return f"{len(alarms)} alarms: {', '.join(parts)}"


def parse_chat_options(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Read the keys every chat sink shares: ``timeout`` and the link templates."""
    options: dict[str, Any] = {"links": parse_links(raw, where)}
    if "timeout" in raw:
        problem = check_timeout(raw["timeout"])
        if problem is not None:
            raise SinkConfigError(
                f"{where}.timeout: invalid value {raw['timeout']!r}, {problem}"
            )
        options["timeout"] = float(raw["timeout"])
    return options


def fit(
    build: Callable[[Sequence[Alarm], int], Any],
    size: Callable[[Any], float],
    alarms: Sequence[Alarm],
) -> Rendered:
    """Build the largest message of ``alarms`` whose ``size`` is at most 1.

    ``build(alarms, summary_chars)`` renders the alarms with summaries cut to
    ``summary_chars``, noting when alarms were left out (``len(alarms)`` is
    then less than the group's); ``size`` returns the payload's size as a
    fraction of the receiver's limit. Summaries are halved down to 200
    characters first, then alarms are left out from the end, then the summary
    of the one alarm left is halved down to 20 characters.
    """
    count = len(alarms)
    longest = max(len(alarm.summary) for alarm in alarms)
    summary_chars = min(longest, MAX_SUMMARY_CHARS)
    while True:
        payload = build(alarms[:count], summary_chars)
        if size(payload) <= 1:
            break
        if summary_chars > 200:
            summary_chars //= 2
        elif count > 1:
            count -= 1
        elif summary_chars > 20:
            summary_chars //= 2
        else:
            break
    truncated = []
    if summary_chars < longest:
        truncated.append("summary")
    if count < len(alarms):
        truncated.append(f"alarms {count + 1}-{len(alarms)}")
    return Rendered(payload, tuple(truncated))


def cut(text: str, limit: int = MAX_FACT_CHARS) -> str:
    """Cut a plain-text value to ``limit`` characters, before any escaping."""
    return truncate(text, limit)[0]


def json_body(payload: Any) -> bytes:
    return json.dumps(
        payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False
    ).encode("utf-8")


@dataclasses.dataclass(frozen=True, slots=True)
class Rendered:
    """A rendered message and the parts that had to be cut to fit."""

    # The JSON body for the receiver.
    payload: dict[str, Any]
    # Names of the cut or dropped parts, such as "summary" or "alarms 9-12".
    truncated: tuple[str, ...] = ()


class ChatSink:
    """Base of the chat sinks: render, POST, check the answer.

    A subclass sets :attr:`kind` and :attr:`max_group`, and implements
    :meth:`render` and :meth:`url`; it may override :meth:`headers`,
    :meth:`classify` (how a non-2xx answer is read) and :meth:`check_answer`
    (how a 2xx answer is read).
    """

    # Receiver kind, for log lines.
    kind: ClassVar[str] = "chat"
    # Most alarms in one message.
    max_group: ClassVar[int] = 10

    def __init__(self, config: Any, *, now: Callable[[], float] = time.time) -> None:
        self.config = config
        self.name: str = config.name
        # Wall clock, for HTTP-date Retry-After values.
        self._now = now
        # Values masked in answers quoted back: every Secret of the config.
        self._secrets = [
            value.reveal()
            for value in (getattr(config, f) for f in config.__dataclass_fields__)
            if isinstance(value, Secret)
        ]

    def excerpt(self, body: bytes) -> str:
        """Return the start of an answer body, with the config's secrets masked."""
        text = body_excerpt(body, None)
        for secret in self._secrets:
            text = mask_secret(text, secret)
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    def render(self, alarms: Sequence[Alarm]) -> Rendered:
        raise NotImplementedError

    def url(self, idempotency_key: str) -> Secret:
        raise NotImplementedError

    def headers(self, idempotency_key: str) -> dict[str, str]:
        return {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": USER_AGENT,
        }

    def classify(
        self,
        response: httpx.Response,
        *,
        sink: str,
        body: bytes,
        now: Callable[[], float],
    ) -> str:
        return classify_response(response, sink=sink, body=body, now=now)

    def check_answer(self, delivery: Delivery) -> str:
        """Return the description of a 2xx answer, or raise if it means failure."""
        excerpt = self.excerpt(delivery.body)
        return f"{delivery.description}: {excerpt}" if excerpt else delivery.description

    async def send(
        self, signed: SignedAlarm, *, client: httpx.AsyncClient, idempotency_key: str
    ) -> str:
        return await self.send_group(
            [signed], client=client, idempotency_key=idempotency_key
        )

    async def send_group(
        self,
        group: Sequence[SignedAlarm],
        *,
        client: httpx.AsyncClient,
        idempotency_key: str,
    ) -> str:
        """Deliver the alarms of ``group`` in one message.

        Raises:
            SinkRetryableError: the attempt failed and a later one may succeed.
            SinkPermanentError: the receiver rejected the message for good.
        """
        alarms = [signed.alarm for signed in group]
        message = self.render(alarms)
        if message.truncated:
            # Under the receiver module's logger, such as "sinks.slack".
            logging.getLogger(type(self).__module__).warning(
                "%s message truncated to fit documented limits: %s sink=%s incident=%s",
                self.kind,
                ", ".join(message.truncated),
                self.name,
                ",".join(alarm.incident for alarm in alarms),
            )
        delivery = await post_alarm(
            client,
            self.url(idempotency_key),
            sink=self.name,
            content=json_body(message.payload),
            headers=self.headers(idempotency_key),
            timeout=self.config.timeout,
            now=self._now,
            classify=self.classify,
        )
        return self.check_answer(delivery)
