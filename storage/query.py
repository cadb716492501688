"""Time-range queries over the archive, and the output of ``alarminati logs``.

A query lists only the hour prefixes of its range, reads each object, and
verifies its signature with the reporter's public key. A record that fails the
check is returned with ``verified=False`` and the reason, never dropped, because
a tampered or forged record is exactly what the operator needs to see. The
fields of such a record are decoded without the check and are only claims.

Records of every cluster share the hour prefixes, so one query returns them all
in time order; :func:`merge_results` merges the results of several archives,
such as the folders of agents that each keep their own.
"""

from __future__ import annotations

import dataclasses
import datetime
import heapq
import json
import logging
import re
import zlib
from collections.abc import Callable, Collection, Iterable, Sequence

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
    "merge_results",
    "load_published_keys",
    "format_table",
    "format_json_lines",
    "parse_since",
    "parse_duration",
]

logger = logging.getLogger(__name__)

# Objects read at the same time, unless the archive names its own number in a
# ``read_concurrency`` attribute. Object storage serves many small reads faster
# in parallel; a local folder does not mind.
MAX_CONCURRENT_READS = 16
# Hour prefixes listed at the same time. A one-day query lists 24; object
# storage answers each after a round trip, so they overlap.
MAX_CONCURRENT_LISTINGS = 8
# Keys per call of an archive's ``get_many``, when it has one.
READ_BATCH_SIZE = 256

# Summaries longer than this are cut in the table; the JSON output keeps them.
MAX_SUMMARY_WIDTH = 60

TABLE_COLUMNS = (
    "TIME SENT",
    "STATUS",
    "CLUSTER",
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
    # The project that owns the alarm, when the query was given a way to tell
    # (``project_of``) and the alarm decodes; None otherwise.
    project: str | None = None

    @property
    def sent_at(self) -> float | None:
        """Return the send time from the alarm, or else from the key."""
        if self.alarm is not None:
            return self.alarm.sent_at
        fields = parse_alarm_key(self.key)
        return None if fields is None else fields.sent_at


def _values(name: str, value: str | Collection[str] | None) -> frozenset[str] | None:
    """Return a filter's accepted values, or None when every value is accepted."""
    if value is None:
        return None
    values = frozenset([value] if isinstance(value, str) else value)
    if not values or not all(isinstance(item, str) for item in values):
        raise ValueError(f"invalid {name} filter {value!r}, expected names")
    return values


@dataclasses.dataclass(frozen=True, slots=True)
class _Filter:
    since: float
    until: float
    # Accepted values of each field, or None to accept any.
    clusters: frozenset[str] | None
    projects: frozenset[str] | None
    subjects: frozenset[str] | None
    status: str | None

    # The clusters as they appear in keys, or None.
    cluster_slugs: frozenset[str] | None = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        slugs = None
        if self.clusters is not None:
            slugs = frozenset(slugify(cluster) for cluster in self.clusters)
        object.__setattr__(self, "cluster_slugs", slugs)

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
        slugs = self.cluster_slugs
        if slugs is not None and fields.cluster not in slugs:
            return False
        if self.status is not None and fields.status != slugify(self.status):
            return False
        return True

    def matches_alarm(self, alarm: Alarm, project: str | None) -> bool:
        return (
            self.since <= alarm.sent_at < self.until
            and (self.clusters is None or alarm.cluster in self.clusters)
            and (self.projects is None or project in self.projects)
            and (self.subjects is None or alarm.subject in self.subjects)
            and (self.status is None or alarm.status.value == self.status)
        )

    def matches(self, result: ArchivedAlarm) -> bool:
        if result.verified:
            assert result.alarm is not None
            return self.matches_alarm(result.alarm, result.project)
        # A failed record's fields may be forged to hide it, so its key can
        # also make it match. The key holds neither the subject nor the project.
        alarm = result.alarm
        if alarm is not None and self.matches_alarm(alarm, result.project):
            return True
        return self.matches_key(result.key)


async def query_alarms(
    archive: Archive,
    keyring: Keyring,
    *,
    since: float,
    until: float,
    cluster: str | Collection[str] | None = None,
    project: str | Collection[str] | None = None,
    subject: str | Collection[str] | None = None,
    status: Status | str | None = None,
    project_of: Callable[[Alarm], str | None] | None = None,
) -> list[ArchivedAlarm]:
    """Read and verify the alarms sent in ``[since, until)``, in time order.

    Only the hour prefixes that overlap the range are listed.

    Args:
        archive: where the alarms are stored.
        keyring: the public keys that signatures are checked against.
        since: start of the range, Unix seconds, included.
        until: end of the range, Unix seconds, excluded.
        cluster, project, subject: when given, only alarms with this value, or
            with one of these values.
        status: when given, only alarms with this status.
        project_of: returns the project that owns an alarm, or None; the
            agents' routing (``Router.decide``) answers this. Needed by the
            ``project`` filter, and fills :attr:`ArchivedAlarm.project`.

    Returns:
        The matching records of every cluster, sorted by send time and then
        key. A record that fails verification is kept when its claimed fields
        or its key match.

    Raises:
        ArchiveUnavailableError: the archive cannot be listed or an object
            cannot be read.
        ValueError: ``status`` is not a known status, a filter is empty, a
            project filter comes without ``project_of``, or a bound is not
            finite.
    """
    status_value = Status(status).value if status is not None else None
    if project is not None and project_of is None:
        raise ValueError("a project filter needs project_of, which tells the owner")
    query = _Filter(
        since,
        until,
        _values("cluster", cluster),
        _values("project", project),
        _values("subject", subject),
        status_value,
    )

    results = await _read_and_verify(
        archive, keyring, hour_prefixes(since, until), query
    )
    if project_of is not None:
        results = [_with_project(result, project_of) for result in results]
    matching = [result for result in results if query.matches(result)]
    matching.sort(key=_time_order)
    return matching


def _with_project(
    result: ArchivedAlarm, project_of: Callable[[Alarm], str | None]
) -> ArchivedAlarm:
    if result.alarm is None:
        return result
    return dataclasses.replace(result, project=project_of(result.alarm))


def _time_order(result: ArchivedAlarm) -> tuple[float, str]:
    return (result.sent_at or 0.0, result.key)


def merge_results(*results: Iterable[ArchivedAlarm]) -> list[ArchivedAlarm]:
    """Merge the time-ordered results of several queries into one, in time order.

    A key found in several archives is kept once: the first verified copy, or
    else the first copy.

    Args:
        results: lists returned by :func:`query_alarms`, each in time order.
    """
    merged: list[ArchivedAlarm] = []
    index: dict[str, int] = {}
    for result in heapq.merge(*results, key=_time_order):
        seen = index.get(result.key)
        if seen is None:
            index[result.key] = len(merged)
            merged.append(result)
        elif result.verified and not merged[seen].verified:
            merged[seen] = result
    return merged


async def _read_and_verify(
    archive: Archive, keyring: Keyring, prefixes: list[str], query: _Filter
) -> list[ArchivedAlarm]:
    """List each hour prefix, read its alarm objects and verify them.

    The hours overlap: listings, reads and verifications of different hours
    run at the same time, within the limits above. Signatures are checked in
    worker threads, where libsodium runs without the GIL.
    """
    results: list[ArchivedAlarm] = []
    failures: list[ArchiveError] = []
    read_limiter = trio.CapacityLimiter(
        getattr(archive, "read_concurrency", MAX_CONCURRENT_READS)
    )
    list_limiter = trio.CapacityLimiter(MAX_CONCURRENT_LISTINGS)

    async def query_hour(prefix: str) -> None:
        try:
            async with list_limiter:
                listed = await archive.list(prefix)
        except ArchiveError as exc:
            failures.append(exc)
            return
        keys = [k for k in listed if k.endswith(".alarm") and query.matches_key(k)]
        frames = await _read_objects(archive, keys, read_limiter, failures)
        if frames:
            verified = await trio.to_thread.run_sync(_verify_all, frames, keyring)
            results.extend(verified)

    async with trio.open_nursery() as nursery:
        for prefix in prefixes:
            nursery.start_soon(query_hour, prefix)

    if failures:
        raise ArchiveUnavailableError(
            f"cannot read {len(failures)} alarm listings or objects: {failures[0]}"
        ) from ExceptionGroup("archive reads failed", failures)
    return results


async def _read_objects(
    archive: Archive,
    keys: list[str],
    limiter: trio.CapacityLimiter,
    failures: list[ArchiveError],
) -> list[tuple[str, bytes]]:
    """Return the (key, data) of the objects under ``keys`` that still exist.

    Uses the archive's ``get_many`` when it has one (the folder reads a batch in
    one worker thread), and otherwise one ``get`` per key, concurrently.
    """
    found: list[tuple[str, bytes] | None] = [None] * len(keys)
    get_many = getattr(archive, "get_many", None)

    async def read_batch(start: int) -> None:
        batch = keys[start : start + READ_BATCH_SIZE]
        try:
            async with limiter:
                data = await get_many(batch)
        except ArchiveError as exc:
            failures.append(exc)
            return
        for offset, (key, value) in enumerate(zip(batch, data)):
            # None: removed between the listing and the read.
            found[start + offset] = None if value is None else (key, value)

    async def read(index: int, key: str) -> None:
        try:
            async with limiter:
                found[index] = (key, await archive.get(key))
        except ObjectNotFoundError:
            pass  # Removed between the listing and the read.
        except ArchiveError as exc:
            failures.append(exc)

    async with trio.open_nursery() as nursery:
        if get_many is not None:
            for start in range(0, len(keys), READ_BATCH_SIZE):
                nursery.start_soon(read_batch, start)
        else:
            for index, key in enumerate(keys):
                nursery.start_soon(read, index, key)
    return [item for item in found if item is not None]


def _verify_all(
    frames: list[tuple[str, bytes]], keyring: Keyring
) -> list[ArchivedAlarm]:
    return [_verify(key, frame, keyring) for key, frame in frames]


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


def _table_row(result: ArchivedAlarm, with_project: bool) -> list[str]:
    mark = "VERIFIED" if result.verified else f"FAILED: {result.error}"
    alarm = result.alarm
    if alarm is not None:
        cells = [
            format_time(alarm.sent_at),
            alarm.status.value,
            alarm.cluster,
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
            fields.cluster if fields else "-",
            "-",
            "-",
            fields.reporter if fields else "-",
            fields.incident if fields else "-",
            result.key,
            mark,
        ]
    if with_project:
        cells.insert(TABLE_COLUMNS.index("CLUSTER") + 1, result.project or "-")
    return [_printable(cell) for cell in cells]


def format_table(results: Sequence[ArchivedAlarm]) -> str:
    """Return the results as an aligned text table with a header line.

    The last column reads ``VERIFIED``, or ``FAILED:`` and the reason. A
    PROJECT column follows CLUSTER when the query told projects.
    """
    with_project = any(result.project is not None for result in results)
    header = list(TABLE_COLUMNS)
    if with_project:
        header.insert(header.index("CLUSTER") + 1, "PROJECT")
    rows = [header] + [_table_row(result, with_project) for result in results]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for row in rows:
        padded = [cell.ljust(width) for cell, width in zip(row[:-1], widths)]
        lines.append("  ".join(padded + [row[-1]]).rstrip())
    return "\n".join(lines) + "\n"


def format_json_lines(results: Sequence[ArchivedAlarm]) -> str:
    """Return one JSON object per result and line: key, verified, error, project, alarm.

    ``alarm`` is :meth:`Alarm.to_json_dict`, or null when it cannot be decoded.
    ``project`` is the owning project when the query told it, or null.
    """
    lines = []
    for result in results:
        record = {
            "key": result.key,
            "verified": result.verified,
            "error": result.error,
            "project": result.project,
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
        return now - parse_duration(stripped)

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


def parse_duration(text: str) -> float:
    """Parse a duration such as ``90s``, ``30m``, ``1h``, ``90d`` or ``1h30m``.

    Returns:
        The duration in seconds.

    Raises:
        ValueError: the text is not a duration.
    """
    stripped = text.strip()
    if not _DURATION.fullmatch(stripped):
        raise ValueError(
            f"invalid duration {text!r}, expected a number and a unit such as 90s, "
            "30m, 12h or 90d"
        )
    parts = _DURATION_PART.findall(stripped)
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
