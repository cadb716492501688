"""The alarm record, schema ``v1alpha1``.

An alarm is what a reporter sends to the receivers and writes to the archive. It
travels as a signed frame (see :mod:`mesh.wire`) whose payload is the msgpack map
of :meth:`Alarm.to_dict`, so the archive keeps the exact signed bytes and any
record can be verified later with the reporter's public key.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
from typing import Any

from .errors import Reason, RejectedMessage
from .keys import Keyring, SigningKey
from .wire import Frame, open_frame, seal

__all__ = ["SCHEMA", "Status", "Severity", "Alarm", "SignedAlarm", "seal_alarm", "open_alarm"]

SCHEMA = "alarminati.io/v1alpha1"


class Status(enum.Enum):
    FIRING = "firing"
    RESOLVED = "resolved"


class Severity(enum.Enum):
    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Alarm:
    """One transition of one incident, as sent to receivers."""

    # Stable id shared by every member, e.g. ``member-down/busan@3``.
    incident: str
    status: Status
    severity: Severity
    # What failed, e.g. ``member/busan``.
    subject: str
    # The cluster or member the subject belongs to.
    cluster: str
    # Member that sent this alarm.
    reporter: str
    # Members whose observations the incident rests on.
    observers: tuple[str, ...]
    # When the incident started, and when this alarm was sent: Unix seconds, UTC.
    started_at: float
    sent_at: float
    summary: str
    # Set on resolved alarms: when the incident ended.
    ended_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "incident": self.incident,
            "status": self.status.value,
            "severity": self.severity.value,
            "subject": self.subject,
            "cluster": self.cluster,
            "reporter": self.reporter,
            "observers": list(self.observers),
            "started_at": self.started_at,
            "sent_at": self.sent_at,
            "ended_at": self.ended_at,
            "summary": self.summary,
        }

    def to_json_dict(self) -> dict[str, Any]:
        """Return :meth:`to_dict` with RFC 3339 times added, for JSON receivers."""
        data = self.to_dict()
        for field in ("started_at", "sent_at", "ended_at"):
            value = data[field]
            if value is not None:
                data[field.replace("_at", "_time")] = format_time(value)
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Alarm:
        """Build an alarm from a decoded payload.

        Raises:
            ValueError: a field is missing or has the wrong type.
        """
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ValueError(f"payload is not an alarm of schema {SCHEMA!r}")
        try:
            ended_at = data.get("ended_at")
            return cls(
                incident=str(data["incident"]),
                status=Status(data["status"]),
                severity=Severity(data["severity"]),
                subject=str(data["subject"]),
                cluster=str(data["cluster"]),
                reporter=str(data["reporter"]),
                observers=tuple(str(o) for o in data["observers"]),
                started_at=float(data["started_at"]),
                sent_at=float(data["sent_at"]),
                ended_at=None if ended_at is None else float(ended_at),
                summary=str(data["summary"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"invalid alarm payload: {exc!r}") from exc


def format_time(unix_seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(unix_seconds, datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclasses.dataclass(frozen=True, slots=True)
class SignedAlarm:
    """An alarm together with the signed frame it was decoded from or sealed into."""

    alarm: Alarm
    frame: bytes


def seal_alarm(key: SigningKey, alarm: Alarm) -> SignedAlarm:
    """Sign ``alarm`` with the reporter's key."""
    frame = seal(key, alarm.reporter, alarm.to_dict(), alarm.sent_at)
    return SignedAlarm(alarm, frame)


def open_alarm(frame: bytes, keyring: Keyring) -> SignedAlarm:
    """Verify and decode an archived or received alarm frame.

    Raises:
        RejectedMessage: the frame is unsigned, signed by an unknown member,
            tampered with, or not an alarm.
    """
    opened: Frame = open_frame(frame, keyring)
    try:
        alarm = Alarm.from_dict(opened.payload)
    except ValueError as exc:
        raise RejectedMessage(Reason.MALFORMED, str(exc)) from None
    if alarm.reporter != opened.sender:
        raise RejectedMessage(
            Reason.BAD_SIGNATURE,
            f"alarm names reporter {alarm.reporter!r} but was signed by {opened.sender!r}",
        )
    return SignedAlarm(alarm, frame)
