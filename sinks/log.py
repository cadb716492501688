"""The log sink: one human-readable line per alarm on standard output.

Useful for a first run and for demos, and as a last-resort receiver whose
output the container runtime keeps. A line looks like::

    2024-05-01T12:00:00.000Z FIRING critical member/busan cluster=busan reporter=seoul \
incident=member-down/busan@3 since=2024-05-01T11:58:30.000Z: busan missed 3 probes
"""

from __future__ import annotations

import dataclasses
import sys
from typing import TYPE_CHECKING, TextIO

from mesh.alarm import Alarm, SignedAlarm, format_time

from .base import check_sink_name
from .errors import SinkRetryableError

# Only for annotations: the receivers load httpx when they are configured.
if TYPE_CHECKING:
    import httpx

__all__ = ["LogConfig", "LogSink", "format_line"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    """Print alarms to standard output."""

    # Sink name, unique within the agent and used in logs and errors.
    name: str

    def __post_init__(self) -> None:
        problem = check_sink_name(self.name)
        if problem is not None:
            raise ValueError(f"invalid sink name {self.name!r}, {problem}")


def format_line(alarm: Alarm) -> str:
    """Format ``alarm`` as one line without the line break."""
    parts = [
        format_time(alarm.sent_at),
        alarm.status.value.upper(),
        alarm.severity.value,
        alarm.subject,
        f"cluster={alarm.cluster}",
        f"reporter={alarm.reporter}",
        f"incident={alarm.incident}",
        f"since={format_time(alarm.started_at)}",
    ]
    if alarm.ended_at is not None:
        parts.append(f"ended={format_time(alarm.ended_at)}")
    line = " ".join(parts) + ": " + alarm.summary
    # A line break inside a field would start what looks like another alarm.
    return line.replace("\r", "\\r").replace("\n", "\\n")


class LogSink:
    """Writes each alarm as one line to standard output."""

    def __init__(self, config: LogConfig, *, stream: TextIO | None = None) -> None:
        self.config = config
        self.name = config.name
        # None means sys.stdout as it is at the time of each write, so that a
        # replaced sys.stdout (pytest's capture, a redirect) is honoured.
        self._stream = stream

    def __repr__(self) -> str:
        return f"LogSink(name={self.name!r})"

    async def send(
        self,
        signed: SignedAlarm,
        *,
        client: httpx.AsyncClient,
        idempotency_key: str,
    ) -> str:
        stream = self._stream if self._stream is not None else sys.stdout
        # A short blocking write: a terminal or a container log pipe takes one
        # line at once unless its reader has stalled.
        try:
            stream.write(format_line(signed.alarm) + "\n")
            stream.flush()
        except OSError as exc:
            raise SinkRetryableError(
                f"sink {self.name!r}: cannot write to standard output: {exc}"
            ) from exc
        return "printed"
