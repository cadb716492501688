"""The archive interface and the layout of its keys.

The archive stores one object per alarm, under a key that sorts by the time the
alarm was sent and is partitioned by hour::

    alarms/2026/12/04/16/20261204T164353.379Z_<cluster>_<reporter>_<incident>_<status>.alarm

so that a time-range query lists only the hours it needs, and a listing comes
back in time order. Each object is the signed frame exactly as the reporter
sealed it, so that any record can be verified later with the reporter's public
key. The folder backend and object storage use the same keys.

A retried write of the same alarm computes the same key and overwrites the
object with the same bytes, so retries never create a second object. Names that
contain characters outside ``[A-Za-z0-9.-]`` are rewritten into that set, and a
hash of the original name is appended so that different names keep different
keys.

Agents also publish their public key under ``keys/<member>.pub``.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import math
import re
from typing import Protocol

from mesh.alarm import Alarm

__all__ = [
    "Archive",
    "ALARMS_PREFIX",
    "KEYS_PREFIX",
    "AlarmKeyFields",
    "alarm_key",
    "parse_alarm_key",
    "slugify",
    "hour_prefixes",
    "public_key_key",
    "split_key",
]

ALARMS_PREFIX = "alarms/"
KEYS_PREFIX = "keys/"

HOUR = 3600

# Maximum length of a name kept as it is in a key. Longer names are cut and get
# a hash. S3 limits keys to 1024 bytes, and a key contains three names: the
# cluster, the reporter and the incident.
MAX_SLUG_LENGTH = 64

_SAFE_NAME = re.compile(r"[A-Za-z0-9.-]+")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9.-]+")
_MEMBER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_ALARM_KEY = re.compile(
    r"alarms/\d{4}/\d{2}/\d{2}/\d{2}/"
    r"(?P<stamp>\d{8}T\d{6}\.\d{3}Z)_(?P<cluster>[A-Za-z0-9.-]+)_"
    r"(?P<reporter>[A-Za-z0-9.-]+)_(?P<incident>[A-Za-z0-9.-]+)_"
    r"(?P<status>[A-Za-z0-9.-]+)\.alarm"
)


class Archive(Protocol):
    """A store of objects under string keys: a folder, or an S3 bucket.

    Keys are ``/``-separated paths without empty, ``.`` or ``..`` segments, and
    no segment starts with a dot.
    """

    async def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing any object there, atomically.

        Raises:
            ArchiveUnavailableError: the write failed and a retry may succeed.
            ArchiveError: the write cannot succeed, for example because the key
                conflicts with an existing object.
            ValueError: the key is invalid.
        """
        ...

    async def get(self, key: str) -> bytes:
        """Return the object stored under ``key``.

        Raises:
            ObjectNotFoundError: no object is stored under ``key``.
            ArchiveUnavailableError: the read failed and a retry may succeed.
            ValueError: the key is invalid.
        """
        ...

    async def list(self, prefix: str) -> list[str]:
        """Return the keys that start with ``prefix``, sorted.

        A prefix that matches nothing returns an empty list.

        Raises:
            ArchiveUnavailableError: the listing failed and a retry may succeed.
        """
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class AlarmKeyFields:
    """The parts of an alarm key; names are in their :func:`slugify` form."""

    # Time the alarm was sent, Unix seconds, cut to milliseconds.
    sent_at: float
    cluster: str
    reporter: str
    incident: str
    status: str


def slugify(name: str) -> str:
    """Return ``name`` as it appears in an archive key.

    A name made only of ``[A-Za-z0-9.-]``, and at most 64 characters long, is
    returned as it is. Any other name has each run of other characters replaced
    by ``-``, is cut to 64 characters, and gets ``-`` and 8 hex digits of its
    SHA-256 appended, so that two different names give different slugs.
    """
    if len(name) <= MAX_SLUG_LENGTH and _SAFE_NAME.fullmatch(name):
        return name
    readable = _UNSAFE_RUN.sub("-", name)[:MAX_SLUG_LENGTH].strip("-")
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    return f"{readable}-{digest}" if readable else digest


def _utc(unix_seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(unix_seconds, datetime.timezone.utc)


def alarm_key(alarm: Alarm) -> str:
    """Return the archive key of ``alarm``.

    The key depends only on the alarm's fields, so every write of the same
    alarm goes to the same key.
    """
    moment = _utc(alarm.sent_at)
    stamp = moment.strftime("%Y%m%dT%H%M%S") + f".{moment.microsecond // 1000:03d}Z"
    name = "_".join(
        [
            stamp,
            slugify(alarm.cluster),
            slugify(alarm.reporter),
            slugify(alarm.incident),
            slugify(alarm.status.value),
        ]
    )
    return f"{ALARMS_PREFIX}{moment:%Y/%m/%d/%H}/{name}.alarm"


def parse_alarm_key(key: str) -> AlarmKeyFields | None:
    """Split a key written by :func:`alarm_key`; return None for any other key."""
    match = _ALARM_KEY.fullmatch(key)
    if match is None:
        return None
    moment = datetime.datetime.strptime(match["stamp"], "%Y%m%dT%H%M%S.%fZ")
    sent_at = moment.replace(tzinfo=datetime.timezone.utc).timestamp()
    return AlarmKeyFields(
        sent_at=sent_at,
        cluster=match["cluster"],
        reporter=match["reporter"],
        incident=match["incident"],
        status=match["status"],
    )


def hour_prefixes(since: float, until: float) -> list[str]:
    """Return the key prefixes of the hours that overlap ``[since, until)``.

    Args:
        since: start of the range, Unix seconds, included.
        until: end of the range, Unix seconds, excluded.

    Returns:
        One prefix such as ``"alarms/2026/12/04/16/"`` per hour, oldest first,
        or an empty list when ``until`` is not after ``since``.

    Raises:
        ValueError: a bound is not a finite number.
    """
    for name, value in (("since", since), ("until", until)):
        if not math.isfinite(value):
            raise ValueError(f"invalid {name} {value!r}, expected finite Unix seconds")
    if until <= since:
        return []
    first_hour = math.floor(since / HOUR)
    end_hour = math.ceil(until / HOUR)
    return [
        f"{ALARMS_PREFIX}{_utc(hour * HOUR):%Y/%m/%d/%H}/"
        for hour in range(first_hour, end_hour)
    ]


def split_key(key: str, *, allow_partial: bool = False) -> list[str]:
    """Return the segments of ``key``.

    With ``allow_partial`` the last segment may be empty, as in the prefix
    ``"alarms/"``, and the empty key is allowed.

    Raises:
        ValueError: the key is absolute, or has an empty, ``.`` or ``..``
            segment, or one that starts with a dot, or contains a NUL.
    """
    if not isinstance(key, str):
        raise TypeError(f"key must be a string, got {type(key).__name__}")
    if "\0" in key or key.startswith("/"):
        raise ValueError(f"invalid key {key!r}")
    segments = key.split("/")
    for index, segment in enumerate(segments):
        # A prefix may end in the middle of a segment, or right after a "/".
        may_be_empty = allow_partial and index == len(segments) - 1
        if (not segment and not may_be_empty) or segment.startswith("."):
            raise ValueError(f"invalid key {key!r}, segment {segment!r} is not allowed")
    return segments


def public_key_key(member: str) -> str:
    """Return the key under which ``member`` publishes its public key.

    Raises:
        ValueError: the member name cannot be used in a key as it is.
    """
    if not _MEMBER_NAME.fullmatch(member):
        raise ValueError(
            f"invalid member name {member!r}, expected letters, digits, '.', '_' "
            "and '-', starting with a letter or digit"
        )
    return f"{KEYS_PREFIX}{member}.pub"
