"""Time-range queries over the archive, and the output of ``alarminati logs``.

A query lists only the hour prefixes of its range, reads each object, and
verifies its signature with the reporter's public key. A record that fails the
check is returned with ``verified=False`` and the reason, never dropped, because
a tampered or forged record is exactly what the operator needs to see. The
fields of such a record are decoded without the check and are only claims.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import re
import zlib
from collections.abc import Sequence

import msgpack
import trio

from mesh.alarm import Alarm, Status, format_time, open_alarm
from mesh.errors import KeyFileError, RejectedMessage
from mesh.keys import Keyring, VerifyKey, parse_public_key
from mesh.wire import FLAG_ZLIB, MAX_FRAME_BYTES, MAX_PAYLOAD_BYTES, SIGNATURE_BYTES

from .archive import (
    KEYS_PREFIX,
    Archive,
    alarm_key,
    hour_prefixes,
    parse_alarm_key,
    slugify,
)
from .errors import ArchiveError, ArchiveUnavailableError, ObjectNotFoundError

__all__ = [
    "ArchivedAlarm",
    "query_alarms",
    "load_published_keys",
    "format_table",
    "format_json_lines",
    "parse_since",
]

logger = logging.getLogger(__name__)

# Objects read at the same time. Object storage serves many small reads faster in
# parallel; a local folder does not mind.
MAX_CONCURRENT_READS = 16

# Summaries longer than this are cut in the table; the JSON output keeps them.
MAX_SUMMARY_WIDTH = 60

TABLE_COLUMNS = (
    "TIME SENT",
    "STATUS",
    "SEVERITY",
    "SUBJECT",
    "REPORTER",
    "INCIDENT",
    "SUMMARY",
    "SIGNATURE",
)

_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[smhd])+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

# The key stores the send time cut to milliseconds; this margin keeps the
# comparison of key times with the range safe from float rounding.
_KEY_TIME_MARGIN = 0.002


@dataclasses.dataclass(frozen=True, slots=True)
class ArchivedAlarm:
    """One archived alarm object and the result of its checks."""

    key: str
    # The decoded alarm, or None when the object cannot be decoded. When
    # ``verified`` is False, its fields are unverified claims.
    alarm: Alarm | None
    # True when the signature matches a trusted key and the object is stored
    # under the key that its alarm belongs under.
    verified: bool
    # Reason a check failed, or None when verified.
    error: str | None

    @property
    def sent_at(self) -> float | None:
        """Return the send time from the alarm, or else from the key."""
        if self.alarm is not None:
            return self.alarm.sent_at
        fields = parse_alarm_key(self.key)
        return None if fields is None else fields.sent_at


@dataclasses.dataclass(frozen=True, slots=True)
class _Filter:
    since: float
    until: float
    cluster: str | None
    subject: str | None
    status: str | None

    def matches_key(self, key: str) -> bool:
        """Return whether the object under ``key`` may match, judged by the key alone.

        A key outside the archive's layout may contain anything, so it matches.
        """
        fields = parse_alarm_key(key)
        if fields is None:
            return True
        if fields.sent_at >= self.until + _KEY_TIME_MARGIN:
            return False
        if fields.sent_at + _KEY_TIME_MARGIN <= self.since:
            return False
        if self.cluster is not None and fields.cluster != slugify(self.cluster):
            return False
        if self.status is not None and fields.status != slugify(self.status):
            return False
        return True

    def matches_alarm(self, alarm: Alarm) -> bool:
        return (
            self.since <= alarm.sent_at < self.until
            and (self.cluster is None or alarm.cluster == self.cluster)
            and (self.subject is None or alarm.subject == self.subject)
            and (self.status is None or alarm.status.value == self.status)
        )

    def matches(self, result: ArchivedAlarm) -> bool:
        if result.verified:
            assert result.alarm is not None
            return self.matches_alarm(result.alarm)
        # A failed record's fields may be forged to hide it, so its key can
        # also make it match. The key does not contain the subject.
        if result.alarm is not None and self.matches_alarm(result.alarm):
            return True
        return self.matches_key(result.key)


async def query_alarms(
    archive: Archive,
    keyring: Keyring,
    *,
    since: float,
    until: float,
    cluster: str | None = None,
    subject: str | None = None,
    status: Status | str | None = None,
) -> list[ArchivedAlarm]:
    """Read and verify the alarms sent in ``[since, until)``, in time order.

    Args:
        archive: where the alarms are stored.
        keyring: the public keys that signatures are checked against.
        since: start of the range, Unix seconds, included.
        until: end of the range, Unix seconds, excluded.
        cluster, subject, status: when given, only alarms with this value.

    Returns:
        The matching records, sorted by send time and then key. A record that
        fails verification is kept when its claimed fields or its key match.

    Raises:
        ArchiveUnavailableError: the archive cannot be listed or an object
            cannot be read.
        ValueError: ``status`` is not a known status, or a bound is not finite.
    """
    status_value = Status(status).value if status is not None else None
    query = _Filter(since, until, cluster, subject, status_value)

    keys = []
    for prefix in hour_prefixes(since, until):
        listed = await archive.list(prefix)
        keys.extend(k for k in listed if k.endswith(".alarm") and query.matches_key(k))

    results = await _read_and_verify(archive, keyring, keys)
    matching = [result for result in results if query.matches(result)]
    matching.sort(key=lambda result: (result.sent_at or 0.0, result.key))
    return matching


async def _read_and_verify(
    archive: Archive, keyring: Keyring, keys: list[str]
) -> list[ArchivedAlarm]:
    results: list[ArchivedAlarm | None] = [None] * len(keys)
    failures: list[ArchiveError] = []
    limiter = trio.CapacityLimiter(MAX_CONCURRENT_READS)

    async def read(index: int, key: str) -> None:
        async with limiter:
            try:
                data = await archive.get(key)
            except ObjectNotFoundError:
                return  # Removed between the listing and the read.
            except ArchiveError as exc:
                failures.append(exc)
                return
        results[index] = _verify(key, data, keyring)

    async with trio.open_nursery() as nursery:
        for index, key in enumerate(keys):
            nursery.start_soon(read, index, key)

    if failures:
        raise ArchiveUnavailableError(
            f"cannot read {len(failures)} of {len(keys)} alarm objects: {failures[0]}"
        ) from ExceptionGroup("archive reads failed", failures)
    return [result for result in results if result is not None]


def _verify(key: str, frame: bytes, keyring: Keyring) -> ArchivedAlarm:
    try:
        signed = open_alarm(frame, keyring)
    except RejectedMessage as exc:
        return ArchivedAlarm(key, _decode_unverified(frame), False, str(exc))

    # A valid alarm copied or moved to another key would show up at the wrong
    # time or under the wrong incident.
    expected = alarm_key(signed.alarm)
    if expected != key:
        error = f"alarm is stored under the wrong key, expected {expected!r}"
        return ArchivedAlarm(key, signed.alarm, False, error)
    return ArchivedAlarm(key, signed.alarm, True, None)


def _decode_unverified(frame: bytes) -> Alarm | None:
    """Decode an alarm frame without checking its signature, for display only.

    Follows the frame layout of :mod:`mesh.wire`: a signature, then the msgpack
    array ``[version, sender, sent_at, flags, payload]``.
    """
    if len(frame) > MAX_FRAME_BYTES:
        return None
    try:
        fields = msgpack.unpackb(
            frame[SIGNATURE_BYTES:], raw=False, max_bin_len=MAX_FRAME_BYTES
        )
        if not (isinstance(fields, list) and len(fields) == 5):
            return None
        flags, body = fields[3], fields[4]
        if not (isinstance(flags, int) and isinstance(body, bytes)):
            return None
        if flags & FLAG_ZLIB:
            inflater = zlib.decompressobj()
            body = inflater.decompress(body, MAX_PAYLOAD_BYTES)
            if inflater.unconsumed_tail:
                return None
        payload = msgpack.unpackb(body, raw=False, max_bin_len=MAX_PAYLOAD_BYTES)
        return Alarm.from_dict(payload)
    except (ValueError, TypeError, zlib.error):
        return None


async def load_published_keys(archive: Archive) -> dict[str, VerifyKey]:
    """Read the public keys that members published under ``keys/``.

    A key read from the archive proves only that someone who can write the
    archive published it. Prefer the configured trusted keys when they exist.
    Files that are not valid public keys are skipped with a warning.

    Raises:
        ArchiveUnavailableError: the archive cannot be listed or read.
    """
    keys = {}
    for key in await archive.list(KEYS_PREFIX):
        member = key[len(KEYS_PREFIX) :].removesuffix(".pub")
        if not key.endswith(".pub") or "/" in member or not member:
            continue
        try:
            data = await archive.get(key)
            keys[member] = parse_public_key(data.decode("ascii"))
        except ObjectNotFoundError:
            continue
        except (UnicodeDecodeError, KeyFileError) as exc:
            logger.warning("ignoring published key: %s key=%s", exc, key)
    return keys


# ---------------------------------------------------------------------- output


def _printable(text: str) -> str:
    # Archived text is untrusted: a control character could move the cursor or
    # recolour the terminal.
    return "".join(char if char.isprintable() else " " for char in text)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _table_row(result: ArchivedAlarm) -> list[str]:
    mark = "VERIFIED" if result.verified else f"FAILED: {result.error}"
    alarm = result.alarm
    if alarm is not None:
        cells = [
            format_time(alarm.sent_at),
            alarm.status.value,
            alarm.severity.value,
            alarm.subject,
            alarm.reporter,
            alarm.incident,
            _shorten(alarm.summary, MAX_SUMMARY_WIDTH),
            mark,
        ]
    else:
        # Only the key is known; show it where the summary goes.
        fields = parse_alarm_key(result.key)
        cells = [
            format_time(fields.sent_at) if fields else "-",
            fields.status if fields else "-",
            "-",
            "-",
            fields.reporter if fields else "-",
            fields.incident if fields else "-",
            result.key,
            mark,
        ]
    return [_printable(cell) for cell in cells]


def format_table(results: Sequence[ArchivedAlarm]) -> str:
    """Return the results as an aligned text table with a header line.

    The last column reads ``VERIFIED``, or ``FAILED:`` and the reason.
    """
    rows = [list(TABLE_COLUMNS)] + [_table_row(result) for result in results]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for row in rows:
        padded = [cell.ljust(width) for cell, width in zip(row[:-1], widths)]
        lines.append("  ".join(padded + [row[-1]]).rstrip())
    return "\n".join(lines) + "\n"


def format_json_lines(results: Sequence[ArchivedAlarm]) -> str:
    """Return one JSON object per result and line: key, verified, error, alarm.

    ``alarm`` is :meth:`Alarm.to_json_dict`, or null when it cannot be decoded.
    """
    lines = []
    for result in results:
        record = {
            "key": result.key,
            "verified": result.verified,
            "error": result.error,
            "alarm": None if result.alarm is None else result.alarm.to_json_dict(),
        }
        lines.append(json.dumps(record, ensure_ascii=False))
    return "".join(line + "\n" for line in lines)


def parse_since(text: str, now: float) -> float:
    """Parse the start of a time range.

    Args:
        text: a duration before ``now`` such as ``90s``, ``30m``, ``1h``, ``2d``
            or ``1h30m``, or an RFC 3339 timestamp with a UTC offset such as
            ``2026-12-04T16:43:53Z``.
        now: the current time, Unix seconds.

    Returns:
        The start, Unix seconds.

    Raises:
        ValueError: the text is neither; the message shows the accepted forms.
    """
    stripped = text.strip()
    if _DURATION.fullmatch(stripped):
        parts = _DURATION_PART.findall(stripped)
        return now - sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)

    # RFC 3339 allows a lowercase "t" and "z", which fromisoformat does not.
    try:
        moment = datetime.datetime.fromisoformat(stripped.upper())
    except ValueError:
        raise ValueError(
            f"invalid time {text!r}, expected a duration such as 90s, 30m, 1h or "
            "2d, or an RFC 3339 timestamp such as 2026-12-04T16:43:53Z"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(
            f"timestamp {text!r} has no UTC offset, add Z or an offset such as +02:00"
        )
    return moment.timestamp()
