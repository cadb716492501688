"""Dead letters: deliveries the outbox gave up on, kept on disk and archived.

An entry becomes a dead letter when its receiver rejects it for good, when it
outlives the maximum age, or when its file cannot be read. The outbox moves it
to ``dead/<id>.dead`` (the entry's fields, the reason and the detail), counts
it in the metrics, logs it at ERROR, and then copies it to the archive under::

    dead-letters/2026/12/04/16/20261204T164353.379Z_<destination>_<reason>_<id>.json

so that an operator reading the archive sees which alarms never reached their
team. The archive copy is JSON with the signed frame in base64, so the alarm
itself can still be verified. An ``<id>.archived`` marker beside the dead
letter records the upload; without it (a crash, an archive that was down) the
upload is tried again, and the same key gets the same bytes.
"""

# TODO: no command resends a dead letter to its receiver once it is fixed.

from __future__ import annotations

import base64
import collections
import dataclasses
import datetime
import enum
import json
import logging
import os
import random
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import msgpack
import trio

from mesh.alarm import format_time

from ._outbox_files import Entry, fsync_folder, pack, write_synced
from .retry import RetryPolicy, describe_error, retry_delay

__all__ = [
    "DeadLetterReason",
    "DeadLetter",
    "DeadLetterArchive",
    "DeadLetterStore",
    "DEAD_LETTERS_PREFIX",
    "DEAD_LETTER_SCHEMA",
    "archive_key",
    "archive_record",
]

logger = logging.getLogger(__name__)

DEAD_LETTERS_PREFIX = "dead-letters/"
DEAD_LETTER_SCHEMA = "alarminati.io/v1alpha1/dead-letter"


class DeadLetterReason(enum.Enum):
    """Reason an entry became a dead letter. The value is the metrics label.

    Values are stored in dead letter files and dashboards select on them, so
    new values are only ever added and existing ones never renamed.
    """

    PERMANENT_ERROR = "permanent_error"
    EXPIRED = "expired"
    UNDECODABLE = "undecodable"
    UNKNOWN_DESTINATION = "unknown_destination"
    CORRUPT_ENTRY = "corrupt_entry"


class DeadLetterArchive(Protocol):
    """Where dead letters are copied: any object with the archive's ``put``."""

    async def put(self, key: str, data: bytes) -> None: ...


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    """One file of ``dead/``, as read back by :meth:`DeadLetterStore.read_all`."""

    path: Path
    # DeadLetterReason value, and the error or check that caused it.
    reason: str
    detail: str
    # Wall-clock time of the move, Unix seconds.
    dead_at: float
    # The entry's fields. They are None, 0 or empty when the entry file was
    # unreadable, and ``raw`` then contains its bytes.
    key: str | None
    destination: str | None
    frame: bytes | None
    created_at: float | None
    attempts: int
    last_error: str | None
    raw: bytes | None

    @property
    def id(self) -> str:
        return self.path.name.removesuffix(".dead")


def archive_key(letter: DeadLetter) -> str:
    """Return the archive key of ``letter``: time-ordered and hour-partitioned."""
    moment = datetime.datetime.fromtimestamp(letter.dead_at, datetime.timezone.utc)
    stamp = moment.strftime("%Y%m%dT%H%M%S") + f".{moment.microsecond // 1000:03d}Z"
    # Destination names are sink names, [a-z0-9-], or "archive".
    destination = letter.destination or "unknown"
    name = f"{stamp}_{destination}_{letter.reason}_{letter.id}.json"
    return f"{DEAD_LETTERS_PREFIX}{moment:%Y/%m/%d/%H}/{name}"


def archive_record(letter: DeadLetter) -> bytes:
    """Return the JSON that the archive keeps for ``letter``."""

    def b64(data: bytes | None) -> str | None:
        return None if data is None else base64.b64encode(data).decode("ascii")

    record = {
        "schema": DEAD_LETTER_SCHEMA,
        "reason": letter.reason,
        "detail": letter.detail,
        "dead_at": letter.dead_at,
        "dead_time": format_time(letter.dead_at),
        "destination": letter.destination,
        "key": letter.key,
        "created_at": letter.created_at,
        "attempts": letter.attempts,
        "last_error": letter.last_error,
        "record": b64(letter.frame),
        "raw": b64(letter.raw),
    }
    text = json.dumps(record, ensure_ascii=False, sort_keys=True, indent=1)
    return text.encode("utf-8") + b"\n"


def _letter_from_record(path: Path, record: Any) -> DeadLetter:
    if not isinstance(record, dict):
        raise TypeError(f"dead letter is a {type(record).__name__}, expected a map")
    return DeadLetter(
        path=path,
        reason=str(record["reason"]),
        detail=str(record["detail"]),
        dead_at=float(record["dead_at"]),
        key=record.get("key"),
        destination=record.get("destination"),
        frame=record.get("frame"),
        created_at=record.get("created_at"),
        attempts=int(record.get("attempts", 0)),
        last_error=record.get("last_error"),
        raw=record.get("raw"),
    )


class DeadLetterStore:
    """The ``dead/`` folder: writes dead letters and copies them to an archive.

    Args:
        folder: the folder; created if missing.
        now: wall clock in Unix seconds, for ``dead_at``.
    """

    def __init__(self, folder: Path, *, now: Callable[[], float]) -> None:
        self._folder = folder
        self._now = now
        # Ids (file names without ".dead") of the dead letters on disk.
        self.ids: set[str] = set()
        # DeadLetterReason value of each dead letter on disk, by id.
        self._reasons: dict[str, str] = {}
        # Ids whose archive copy has not been written yet, oldest first.
        self._unarchived: collections.deque[str] = collections.deque()
        # Set when _unarchived gains an id; replaced by the archiver.
        self._wakeup = trio.Event()
        folder.mkdir(parents=True, exist_ok=True)
        self._load()

    def _load(self) -> None:
        names = sorted(os.listdir(self._folder))
        archived = {
            n.removesuffix(".archived") for n in names if n.endswith(".archived")
        }
        for name in names:
            if name.startswith("."):
                (self._folder / name).unlink(missing_ok=True)
                continue
            if not name.endswith(".dead"):
                continue
            letter_id = name.removesuffix(".dead")
            self.ids.add(letter_id)
            try:
                raw = (self._folder / name).read_bytes()
                self._reasons[letter_id] = str(msgpack.unpackb(raw)["reason"])
            except (OSError, LookupError, ValueError, TypeError):
                self._reasons[letter_id] = "unreadable"
            if letter_id not in archived:
                self._unarchived.append(letter_id)

    def counts(self) -> dict[str, int]:
        """Return the number of dead letters on disk, by reason."""
        return dict(collections.Counter(self._reasons.values()))

    def write(self, entry: Entry, reason: DeadLetterReason, detail: str) -> None:
        """Write the dead letter of ``entry`` durably.

        Raises:
            OSError: the file could not be written; nothing changed.
        """
        record = entry.to_record()
        record.update(reason=reason.value, detail=detail, dead_at=self._now())
        self._write(entry.id, record)

    def write_unreadable(self, path: Path, detail: str) -> None:
        """Write a dead letter that keeps the bytes of the unreadable file ``path``.

        Raises:
            OSError: the file could not be read or the dead letter written.
        """
        record = {
            "reason": DeadLetterReason.CORRUPT_ENTRY.value,
            "detail": detail,
            "dead_at": self._now(),
            "file": path.name,
            "raw": path.read_bytes(),
        }
        self._write(f"corrupt-{path.name}-{secrets.token_hex(4)}", record)

    def _write(self, letter_id: str, record: dict[str, Any]) -> None:
        write_synced(self._folder / f"{letter_id}.dead", pack(record))
        fsync_folder(self._folder)
        self.ids.add(letter_id)
        self._reasons[letter_id] = record["reason"]
        self._unarchived.append(letter_id)
        self._wakeup.set()

    def read_all(self) -> list[DeadLetter]:
        """Read the dead letters on disk, oldest first.

        Files that cannot be read are skipped with a warning.
        """
        letters = []
        for name in sorted(os.listdir(self._folder)):
            if name.startswith(".") or not name.endswith(".dead"):
                continue
            letter = self._read(self._folder / name)
            if letter is not None:
                letters.append(letter)
        letters.sort(key=lambda letter: letter.dead_at)
        return letters

    def _read(self, path: Path) -> DeadLetter | None:
        try:
            record = msgpack.unpackb(path.read_bytes(), raw=False)
            return _letter_from_record(path, record)
        except (OSError, LookupError, ValueError, TypeError) as exc:
            # msgpack's errors are ValueErrors, and a missing field a KeyError.
            logger.warning("cannot read dead letter %s: %s", path, exc)
            return None

    async def run_archiver(
        self, archive: DeadLetterArchive, policy: RetryPolicy, rng: random.Random
    ) -> None:
        """Copy each dead letter to ``archive``, retrying until it is stored."""
        failures = 0
        while True:
            if not self._unarchived:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
                continue
            letter_id = self._unarchived[0]
            letter = self._read(self._folder / f"{letter_id}.dead")
            if letter is None:
                self._unarchived.popleft()
                continue
            key = archive_key(letter)
            try:
                with trio.fail_after(policy.attempt_timeout):
                    await archive.put(key, archive_record(letter))
            except Exception as exc:
                failures += 1
                delay = retry_delay(policy, failures, None, rng)
                logger.warning(
                    "cannot archive dead letter, retrying in %.1fs: %s key=%s",
                    delay,
                    describe_error(exc),
                    key,
                )
                await trio.sleep(delay)
                continue
            failures = 0
            self._unarchived.popleft()
            # No fsync: after a crash the copy is written again, with the same bytes.
            (self._folder / f"{letter_id}.archived").touch()
            logger.info("dead letter archived key=%s", key)
