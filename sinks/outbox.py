"""The durable outbox: alarms are written to disk before their first delivery attempt.

Every entry is delivered at least once to its destination (a receiver such as a
Slack channel, or the archive) or moved to the dead letters, across crashes and
restarts. The folder layout::

    <directory>/pending/<seq>-<id>.entry   waiting for delivery
    <directory>/delivered/<id>             marker of a delivered key, pruned later
    <directory>/dead/<id>.dead             dead letter: the entry and the reason

Each file is one msgpack map. ``<seq>`` is a 20-digit counter that fixes the
delivery order, and ``<id>`` is a hash of the destination name and the
idempotency key. An idempotency key is therefore scoped to its destination: the
same key can be queued once for each destination.

Durability: ``enqueue`` returns only after the entry file and its folder entry are
on disk (temporary file, fsync, rename, fsync of the folder). After a delivery the
outbox writes the delivered marker durably and then removes the entry file. A
crash between the two leaves both, and the next start drops the entry instead of
delivering it again. A crash during an attempt delivers the entry again after the
restart, and the receiver can use the idempotency key to drop the duplicate.

Delivery: each destination has its own task and queue, so a slow or failing
receiver holds up only itself. A destination gets its entries in enqueue order,
and its head entry is retried until it is delivered or dead, because a resolved
alarm that overtakes its firing alarm would mislead the people reading them. The
delay after the n-th failure of an entry is drawn uniformly from
``[0, min(max_delay, initial_delay * multiplier ** (n - 1))]`` ("full jitter"),
and is never shorter than the ``retry_after`` a receiver asked for.

File I/O runs on the trio thread, not in worker threads. ``enqueue`` is
synchronous so that its callers know the alarm is safe when it returns, and the
bookkeeping after an attempt is a few small writes. A worker thread would also let
trio's MockClock jump past deadlines while the I/O runs.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import enum
import hashlib
import logging
import math
import os
import random
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import msgpack
import trio

from mesh.alarm import SignedAlarm

from .errors import SinkError, SinkPermanentError, SinkRetryableError

__all__ = [
    "Destination",
    "RetryPolicy",
    "OutboxObserver",
    "OutboxStatistics",
    "DeadLetterReason",
    "DeadLetter",
    "Outbox",
]

logger = logging.getLogger(__name__)

SECONDS = 1.0
MINUTES = 60 * SECONDS
HOURS = 60 * MINUTES
DAYS = 24 * HOURS

# How often a running outbox removes expired delivered markers.
PRUNE_INTERVAL = 1 * HOURS

# Maximum threads that fsync the entry files of one enqueue_many call.
FSYNC_THREADS = 8

_PENDING_NAME = re.compile(r"(\d{20})-([0-9a-f]{32})\.entry")
_ENTRY_FIELDS = ("key", "destination", "frame", "created_at", "attempts", "last_error")


class Destination(Protocol):
    """A receiver that the outbox delivers to: one sink, or the archive."""

    # Name used in log lines.
    name: str

    async def deliver(self, signed: SignedAlarm, idempotency_key: str) -> str:
        """Make one delivery attempt and return a short description of the response.

        Args:
            signed: the alarm and the signed frame it was sealed into.
            idempotency_key: the same for every attempt at this entry, so that the
                receiver can drop duplicates.

        Raises:
            SinkRetryableError: the attempt failed and a later one may succeed;
                ``retry_after`` is the minimum wait in seconds, if the receiver
                gave one.
            SinkPermanentError: the receiver rejected the alarm for good.
            Exception: any other exception counts as retryable.
        """
        ...


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """When the outbox retries a failed delivery, and when it gives up."""

    # Upper bound of the first retry delay, in seconds. Lower retries a brief
    # outage sooner; higher sends less traffic to a receiver that is struggling.
    initial_delay: float = 1 * SECONDS
    # Upper bound of any retry delay, in seconds, unless the receiver requests a
    # longer one. Higher spares a receiver that is down; lower notices recovery
    # sooner.
    max_delay: float = 5 * MINUTES
    # Factor by which the delay bound grows after each failure of an entry.
    multiplier: float = 2.0
    # Age in seconds after which an undelivered entry becomes a dead letter. An
    # alarm a day late rarely helps anyone, and the entries behind it wait. An
    # entry whose next retry would come after this age is dead-lettered at once.
    max_age: float = 24 * HOURS
    # Deadline of one attempt, in seconds. A receiver that hangs longer fails the
    # attempt, which is then retried.
    attempt_timeout: float = 30 * SECONDS

    def __post_init__(self) -> None:
        for field in ("initial_delay", "max_delay", "max_age", "attempt_timeout"):
            value = getattr(self, field)
            if not (_is_number(value) and value > 0):
                raise ValueError(f"invalid {field} {value!r}, expected seconds > 0")
        if self.max_delay < self.initial_delay:
            raise ValueError(
                f"invalid max_delay {self.max_delay!r}, expected at least "
                f"initial_delay {self.initial_delay!r}"
            )
        multiplier = self.multiplier
        if not (_is_number(multiplier) and multiplier >= 1):
            raise ValueError(f"invalid multiplier {multiplier!r}, expected at least 1")

    def delay_bound(self, failures: int) -> float:
        """Return the maximum delay in seconds after ``failures`` failures."""
        try:
            bound = self.initial_delay * self.multiplier ** (failures - 1)
        except OverflowError:
            return self.max_delay
        return min(bound, self.max_delay)


class OutboxObserver:
    """Hooks that the runtime overrides to count deliveries in its metrics.

    Every hook does nothing by default, so a subclass overrides only what it needs.
    Hooks run on the outbox's task and must not block.
    """

    def delivered(
        self, destination: str, attempts: int, seconds_since_enqueue: float
    ) -> None:
        """Record a delivery after ``attempts`` attempts."""

    def retrying(self, destination: str, error: str, delay: float) -> None:
        """Record a failed attempt that is retried after ``delay`` seconds."""

    def dead_lettered(self, destination: str, reason: str) -> None:
        """Record an entry moved to the dead letters.

        ``reason`` is a :class:`DeadLetterReason` value. ``destination`` is empty
        when the entry file was unreadable.
        """


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


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class OutboxStatistics:
    """Counts for debugging and metrics, from :meth:`Outbox.statistics`."""

    # Entries waiting per destination, including the one being attempted. Every
    # configured destination is present.
    pending: Mapping[str, int]
    # Wall-clock age in seconds of the oldest pending entry, 0.0 when none.
    oldest_pending_age: float
    # Since the outbox was created: entries delivered, failed attempts followed
    # by a retry, and entries moved to the dead letters.
    delivered: int
    retried: int
    dead_lettered: int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    """One file of ``dead/``, as read back by :meth:`Outbox.dead_letters`."""

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


@dataclasses.dataclass(slots=True, kw_only=True)
class _Entry:
    # Position in the enqueue order of all destinations.
    seq: int
    key: str
    destination: str
    frame: bytes
    # Wall-clock enqueue time, Unix seconds.
    created_at: float
    # Attempts made so far, counted across restarts.
    attempts: int = 0
    # Text of the latest failure, or None before the first.
    last_error: str | None = None

    @property
    def id(self) -> str:
        return _entry_id(self.destination, self.key)

    @property
    def file_name(self) -> str:
        return f"{self.seq:020d}-{self.id}.entry"

    def to_record(self) -> dict[str, Any]:
        return {field: getattr(self, field) for field in _ENTRY_FIELDS}


class _DestinationQueue:
    """The pending entries of one destination and the state of its task."""

    def __init__(self, name: str, destination: Destination) -> None:
        # Destination name, as given to enqueue, and the receiver.
        self.name = name
        self.destination = destination
        # Entries in enqueue order. The head is the one being attempted, and only
        # this destination's task removes entries.
        self.entries: collections.deque[_Entry] = collections.deque()
        # Set by enqueue to wake the idle task; the task replaces it before waiting.
        self.wakeup = trio.Event()
        # Text of the last failure logged at WARNING, so that repeats of the same
        # failure go to DEBUG; reset by a delivery.
        self.logged_error: str | None = None


def _is_number(value: object) -> bool:
    # bool is an int subclass, but True is no duration.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value)


def _entry_id(destination: str, key: str) -> str:
    # msgpack of the pair keeps ("a", "bc") and ("ab", "c") apart.
    packed = msgpack.packb([destination, key], use_bin_type=True)
    return hashlib.sha256(packed).hexdigest()[:32]


def _describe(exc: BaseException) -> str:
    # Sink errors carry messages written for operators; others need their type.
    if isinstance(exc, SinkError):
        return str(exc) or type(exc).__name__
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_files(paths: list[Path]) -> None:
    """Fsync the files, several at once when there are several.

    Concurrent fsyncs let the file system commit several files in one journal
    transaction. With them, tests/bench_outbox.py measured enqueue_many of 100
    entries at about 1.4 times the rate of single enqueues, on ext4 on a 2-core
    VM; with one fsync after another it was barely faster than single enqueues.
    """
    if len(paths) == 1:
        _fsync_file(paths[0])
        return
    workers = min(FSYNC_THREADS, len(paths))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        # list() waits for every fsync and raises the first error.
        list(pool.map(_fsync_file, paths))


def _temporary_path(path: Path) -> Path:
    # The leading dot keeps the name apart from entry names, so that loading
    # can recognise and remove temporary files that a crash left behind.
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def _write_synced(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, and rename it.

    The rename is atomic, so readers see the old content or the new, never part.
    The caller fsyncs the folder when the new name itself must survive a crash.
    """
    tmp = _temporary_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _parse_entry(seq: int, raw: bytes) -> _Entry:
    """Decode an entry file.

    Raises:
        ValueError: the bytes are not msgpack, or a field is missing or of the
            wrong type.
    """
    try:
        record = msgpack.unpackb(raw, raw=False)
    except (ValueError, TypeError) as exc:
        # msgpack raises ValueError subclasses, and TypeError for a map key
        # that Python cannot hash.
        raise ValueError(f"entry is not msgpack: {_describe(exc)}") from None
    if not isinstance(record, dict):
        raise ValueError(f"entry is a {type(record).__name__}, expected a map")
    missing = [field for field in _ENTRY_FIELDS if field not in record]
    if missing:
        raise ValueError(f"entry lacks the fields {missing!r}")
    entry = _Entry(seq=seq, **{field: record[field] for field in _ENTRY_FIELDS})
    valid = (
        isinstance(entry.key, str)
        and isinstance(entry.destination, str)
        and isinstance(entry.frame, bytes)
        and isinstance(entry.created_at, (int, float))
        and isinstance(entry.attempts, int)
        and isinstance(entry.last_error, (str, type(None)))
    )
    if not valid:
        raise ValueError("entry has a field of the wrong type")
    return entry


class Outbox:
    """A durable queue of alarm deliveries, one ordered queue per destination.

    The constructor reads the folder: it creates the subfolders, indexes
    delivered markers and dead letters, and loads the pending entries left by an
    earlier run. Unreadable entries and entries for destinations that are not
    configured any more become dead letters.

    Args:
        directory: the outbox folder; created if missing.
        destinations: destination name to receiver. The names are those given
            to :meth:`enqueue`.
        decode: turns an entry's frame back into the alarm, for example
            ``lambda frame: open_alarm(frame, keyring)``. A frame it rejects with
            any exception becomes a dead letter.
        policy: retry delays, attempt timeout and maximum age.
        now: wall clock in Unix seconds, for entry ages and timestamps.
        rng: source of the retry jitter; pass a seeded one for reproducible delays.
        observer: hooks for metrics.
        delivered_retention: seconds for which a delivered key is remembered,
            and rejected by :meth:`enqueue`.

    Raises:
        OSError: the folder cannot be created or read.
    """

    def __init__(
        self,
        directory: Path,
        destinations: Mapping[str, Destination],
        *,
        decode: Callable[[bytes], SignedAlarm],
        policy: RetryPolicy = RetryPolicy(),
        now: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        observer: OutboxObserver | None = None,
        delivered_retention: float = 7 * DAYS,
    ) -> None:
        directory = Path(directory)
        # Subfolders for entries waiting for delivery, delivered markers and
        # dead letters.
        self._pending_dir = directory / "pending"
        self._delivered_dir = directory / "delivered"
        self._dead_dir = directory / "dead"
        # Frame to alarm, called once per entry and run before its first attempt.
        self._decode = decode
        self._policy = policy
        # Wall clock, Unix seconds; trio's clock drives the retry delays.
        self._now = now
        # Source of the retry jitter.
        self._rng = rng if rng is not None else random.Random()
        # Metrics hooks, called from the destination tasks.
        self._observer = observer if observer is not None else OutboxObserver()
        # Seconds for which delivered markers are kept.
        self._delivered_retention = delivered_retention
        # Destination name to its queue; the set of names is fixed.
        self._queues = {
            name: _DestinationQueue(name, destination)
            for name, destination in destinations.items()
        }
        # Ids of the entries in the queues.
        self._pending_ids: set[str] = set()
        # Ids of the dead letters on disk.
        self._dead_ids: set[str] = set()
        # Id of each delivered marker on disk to its delivery time, Unix seconds.
        self._delivered_at: dict[str, float] = {}
        # Sequence number of the next entry; above every pending one.
        self._next_seq = 0
        # Counters reported by statistics().
        self._delivered_count = 0
        self._retried_count = 0
        self._dead_count = 0
        # True while run() is active; a second concurrent run() is a mistake.
        self._running = False

        for folder in (self._pending_dir, self._delivered_dir, self._dead_dir):
            folder.mkdir(parents=True, exist_ok=True)
        _fsync_folder(directory)
        self._load_delivered()
        self._load_dead()
        self._load_pending()

    # ------------------------------------------------------------------ loading

    def _load_delivered(self) -> None:
        for name in os.listdir(self._delivered_dir):
            path = self._delivered_dir / name
            if name.startswith("."):
                # A temporary file of a marker write that a crash interrupted.
                path.unlink(missing_ok=True)
                continue
            self._delivered_at[name] = path.stat().st_mtime
        self._prune_delivered()

    def _load_dead(self) -> None:
        for name in os.listdir(self._dead_dir):
            if name.startswith("."):
                (self._dead_dir / name).unlink(missing_ok=True)
            elif name.endswith(".dead"):
                self._dead_ids.add(name.removesuffix(".dead"))

    def _load_pending(self) -> None:
        for name in sorted(os.listdir(self._pending_dir)):
            path = self._pending_dir / name
            if name.startswith("."):
                # The enqueue that wrote it had not returned, so no caller relies on it.
                path.unlink(missing_ok=True)
                continue
            match = _PENDING_NAME.fullmatch(name)
            try:
                if match is None:
                    raise ValueError(f"file name {name!r} is not <seq>-<id>.entry")
                entry = _parse_entry(int(match[1]), path.read_bytes())
                if entry.id != match[2]:
                    raise ValueError(f"file name {name!r} does not match its entry")
            except ValueError as exc:
                self._dead_letter_file(path, str(exc))
                continue
            self._next_seq = max(self._next_seq, entry.seq + 1)
            self._restore(entry, path)

    def _restore(self, entry: _Entry, path: Path) -> None:
        entry_id = entry.id
        if entry_id in self._delivered_at or entry_id in self._dead_ids:
            # A crash came between writing the marker or dead letter and
            # removing the entry, or a copy of the entry was left behind.
            path.unlink(missing_ok=True)
            return
        if entry_id in self._pending_ids:
            # enqueue never writes two files for one id, so this is a copy;
            # the first file, in sequence order, is kept.
            path.unlink(missing_ok=True)
            return
        queue = self._queues.get(entry.destination)
        if queue is None:
            self._dead_letter(
                entry,
                DeadLetterReason.UNKNOWN_DESTINATION,
                f"destination {entry.destination!r} is not configured",
            )
            return
        queue.entries.append(entry)
        self._pending_ids.add(entry_id)

    # ------------------------------------------------------------------ enqueue

    def enqueue(self, idempotency_key: str, destination: str, frame: bytes) -> bool:
        """Write one delivery durably and queue it; see :meth:`enqueue_many`."""
        return self.enqueue_many([(idempotency_key, destination, frame)])[0]

    def enqueue_many(self, items: Iterable[tuple[str, str, bytes]]) -> list[bool]:
        """Write deliveries durably and queue them, with one folder fsync for all.

        Each item is ``(idempotency_key, destination, frame)``. The entry files
        are on disk when this returns, before any attempt starts.

        Returns:
            For each item, True if it was queued, or False if its key was already
            pending, delivered within the retention or dead for that destination,
            or appeared earlier in ``items``. Nothing is written for False.

        Raises:
            ValueError: a destination is not configured or a key is empty.
                Nothing is written then.
            TypeError: a frame is not bytes.
            OSError: the entries could not be written. None of them is queued.
        """
        items = list(items)
        for key, destination, frame in items:
            if destination not in self._queues:
                raise ValueError(f"unknown destination {destination!r}")
            if not isinstance(key, str) or not key:
                raise ValueError(
                    f"invalid idempotency key {key!r}, expected a non-empty string"
                )
            if not isinstance(frame, bytes):
                raise TypeError(f"frame must be bytes, got {type(frame).__name__}")

        # Select the new entries.
        created_at = self._now()
        accepted: list[bool] = []
        entries: list[_Entry] = []
        batch_ids: set[str] = set()
        for key, destination, frame in items:
            entry_id = _entry_id(destination, key)
            if self._is_known(entry_id) or entry_id in batch_ids:
                accepted.append(False)
                continue
            batch_ids.add(entry_id)
            entry = _Entry(
                seq=self._next_seq + len(entries),
                key=key,
                destination=destination,
                frame=frame,
                created_at=created_at,
            )
            entries.append(entry)
            accepted.append(True)
        if not entries:
            return accepted

        self._write_entries(entries)

        # Queue them only now that they are durable.
        self._next_seq += len(entries)
        for entry in entries:
            queue = self._queues[entry.destination]
            queue.entries.append(entry)
            queue.wakeup.set()
        self._pending_ids.update(batch_ids)
        return accepted

    def _is_known(self, entry_id: str) -> bool:
        return (
            entry_id in self._pending_ids
            or entry_id in self._delivered_at
            or entry_id in self._dead_ids
        )

    def _write_entries(self, entries: list[_Entry]) -> None:
        paths = [self._pending_dir / entry.file_name for entry in entries]
        tmps = [_temporary_path(path) for path in paths]
        renamed: list[Path] = []
        try:
            # All files are written before any is fsynced, so that the fsyncs
            # can run at the same time.
            for entry, tmp in zip(entries, tmps):
                tmp.write_bytes(msgpack.packb(entry.to_record(), use_bin_type=True))
            _fsync_files(tmps)
            for tmp, path in zip(tmps, paths):
                os.replace(tmp, path)
                renamed.append(path)
            _fsync_folder(self._pending_dir)
        except BaseException:
            # The caller learns that nothing was queued, so no file may stay
            # behind to be delivered after a restart.
            for path in tmps + renamed:
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
            raise

    # ------------------------------------------------------------------ delivery

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Deliver the pending entries and those enqueued later, until cancelled.

        Each destination gets its own task. ``task_status.started()`` is called
        once the tasks are started.

        Raises:
            RuntimeError: the outbox is already running.
        """
        if self._running:
            raise RuntimeError("outbox is already running")
        self._running = True
        try:
            async with trio.open_nursery() as nursery:
                for queue in self._queues.values():
                    nursery.start_soon(self._run_destination, queue)
                nursery.start_soon(self._prune_periodically)
                task_status.started()
        finally:
            self._running = False

    async def _run_destination(self, queue: _DestinationQueue) -> None:
        while True:
            if not queue.entries:
                queue.wakeup = trio.Event()
                await queue.wakeup.wait()
                continue
            entry = queue.entries[0]
            await self._deliver(queue, entry)
            queue.entries.popleft()
            self._pending_ids.discard(entry.id)
            # A receiver that responds without a checkpoint must not starve the
            # other destinations while a long queue drains.
            await trio.lowlevel.checkpoint()

    async def _deliver(self, queue: _DestinationQueue, entry: _Entry) -> None:
        """Attempt ``entry`` until it is delivered or moved to the dead letters."""
        policy = self._policy
        try:
            signed = self._decode(entry.frame)
        except Exception as exc:
            detail = f"frame cannot be decoded: {_describe(exc)}"
            self._dead_letter(entry, DeadLetterReason.UNDECODABLE, detail)
            return

        failures = 0
        while True:
            # Give up on an entry that waited too long, for example across a
            # long shutdown.
            if self._now() - entry.created_at > policy.max_age:
                self._expire(entry)
                return

            # Attempt it under a deadline.
            entry.attempts += 1
            retry_after = None
            try:
                with trio.fail_after(policy.attempt_timeout):
                    response = await queue.destination.deliver(signed, entry.key)
            except SinkPermanentError as exc:
                reason = DeadLetterReason.PERMANENT_ERROR
                self._dead_letter(entry, reason, _describe(exc))
                return
            except trio.TooSlowError:
                error = f"attempt timed out after {policy.attempt_timeout:g}s"
            except SinkRetryableError as exc:
                error = _describe(exc)
                retry_after = exc.retry_after
            except Exception as exc:
                # Any other failure of a receiver may be transient.
                error = _describe(exc)
            else:
                self._mark_delivered(queue, entry, response)
                return

            # Choose the delay, and give up if the retry would come too late.
            failures += 1
            delay = self._retry_delay(failures, retry_after)
            entry.last_error = error
            if self._now() + delay - entry.created_at > policy.max_age:
                self._expire(entry)
                return

            self._record_retry(queue, entry, error, delay)
            await trio.sleep(delay)

    def _retry_delay(self, failures: int, retry_after: float | None) -> float:
        delay = self._rng.uniform(0.0, self._policy.delay_bound(failures))
        # An infinite or negative hint from a buggy receiver is ignored.
        if retry_after is not None and math.isfinite(retry_after) and retry_after > 0:
            delay = max(delay, retry_after)
        return delay

    def _record_retry(
        self, queue: _DestinationQueue, entry: _Entry, error: str, delay: float
    ) -> None:
        self._retried_count += 1
        try:
            self._save(entry)
        except OSError as exc:
            # Only the attempt count and last error on disk are stale.
            logger.warning(
                "cannot update outbox entry: %s sink=%s key=%s",
                exc,
                queue.name,
                entry.key,
            )
        level = logging.WARNING if error != queue.logged_error else logging.DEBUG
        queue.logged_error = error
        logger.log(
            level,
            "delivery failed, retrying in %.1fs: %s sink=%s key=%s attempt=%d",
            delay,
            error,
            queue.name,
            entry.key,
            entry.attempts,
        )
        self._observer.retrying(queue.name, error, delay)

    def _save(self, entry: _Entry) -> None:
        # No folder fsync: after a crash, the old and the new file are both
        # valid entries.
        path = self._pending_dir / entry.file_name
        _write_synced(path, msgpack.packb(entry.to_record(), use_bin_type=True))

    def _expire(self, entry: _Entry) -> None:
        detail = f"not delivered within max_age {self._policy.max_age:g}s"
        if entry.last_error is not None:
            detail += f", last error: {entry.last_error}"
        self._dead_letter(entry, DeadLetterReason.EXPIRED, detail)

    def _mark_delivered(
        self, queue: _DestinationQueue, entry: _Entry, response: str
    ) -> None:
        delivered_at = self._now()
        entry_id = entry.id

        # The marker must be durable before the entry goes, so that a crash
        # between the two cannot deliver the entry again.
        marker = self._delivered_dir / entry_id
        record = {
            "key": entry.key,
            "destination": entry.destination,
            "delivered_at": delivered_at,
        }
        try:
            _write_synced(marker, msgpack.packb(record, use_bin_type=True))
            os.utime(marker, (delivered_at, delivered_at))
            _fsync_folder(self._delivered_dir)
            self._delivered_at[entry_id] = delivered_at
        except OSError as exc:
            logger.warning(
                "cannot write delivered marker, the key may be accepted again: "
                "%s sink=%s key=%s",
                exc,
                queue.name,
                entry.key,
            )
        self._remove_pending(entry)

        self._delivered_count += 1
        queue.logged_error = None
        level = logging.DEBUG if entry.attempts == 1 else logging.INFO
        logger.log(
            level,
            "delivered: %s sink=%s key=%s attempt=%d",
            response,
            queue.name,
            entry.key,
            entry.attempts,
        )
        age = delivered_at - entry.created_at
        self._observer.delivered(queue.name, entry.attempts, age)

    def _remove_pending(self, entry: _Entry) -> None:
        path = self._pending_dir / entry.file_name
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            # The marker or dead letter makes the next start drop the file.
            logger.warning(
                "cannot remove outbox entry %s: %s sink=%s key=%s",
                path,
                exc,
                entry.destination,
                entry.key,
            )

    # ------------------------------------------------------------------ dead letters

    def _dead_letter(
        self, entry: _Entry, reason: DeadLetterReason, detail: str
    ) -> None:
        record = entry.to_record()
        record.update(reason=reason.value, detail=detail, dead_at=self._now())
        path = self._dead_dir / f"{entry.id}.dead"
        try:
            _write_synced(path, msgpack.packb(record, use_bin_type=True))
            _fsync_folder(self._dead_dir)
        except OSError as exc:
            # The entry file stays in pending/, so the next start tries again.
            logger.error(
                "cannot write dead letter (%s: %s): %s sink=%s key=%s",
                reason.value,
                detail,
                exc,
                entry.destination,
                entry.key,
            )
            return
        self._dead_ids.add(entry.id)
        self._remove_pending(entry)
        self._dead_count += 1
        logger.error(
            "alarm moved to dead letters (%s): %s sink=%s key=%s attempts=%d",
            reason.value,
            detail,
            entry.destination,
            entry.key,
            entry.attempts,
        )
        self._observer.dead_lettered(entry.destination, reason.value)

    def _dead_letter_file(self, path: Path, detail: str) -> None:
        """Move an unreadable entry file to the dead letters, keeping its bytes."""
        reason = DeadLetterReason.CORRUPT_ENTRY
        target = self._dead_dir / f"corrupt-{path.name}-{secrets.token_hex(4)}.dead"
        try:
            raw = path.read_bytes()
            record = {
                "reason": reason.value,
                "detail": detail,
                "dead_at": self._now(),
                "file": path.name,
                "raw": raw,
            }
            _write_synced(target, msgpack.packb(record, use_bin_type=True))
            _fsync_folder(self._dead_dir)
            path.unlink()
        except OSError as exc:
            logger.error(
                "cannot move unreadable outbox entry %s to dead letters: %s", path, exc
            )
            return
        self._dead_count += 1
        logger.error(
            "unreadable outbox entry %s moved to dead letters: %s", path.name, detail
        )
        self._observer.dead_lettered("", reason.value)

    def dead_letters(self) -> list[DeadLetter]:
        """Read the dead letters on disk, oldest first.

        Files that cannot be read are skipped with a warning.
        """
        letters = []
        for name in sorted(os.listdir(self._dead_dir)):
            if name.startswith(".") or not name.endswith(".dead"):
                continue
            path = self._dead_dir / name
            try:
                record = msgpack.unpackb(path.read_bytes(), raw=False)
                letters.append(_dead_letter_from_record(path, record))
            except (OSError, LookupError, ValueError, TypeError) as exc:
                # msgpack's errors are ValueErrors, and a missing field a KeyError.
                logger.warning("cannot read dead letter %s: %s", path, exc)
        letters.sort(key=lambda letter: letter.dead_at)
        return letters

    # ------------------------------------------------------------------ upkeep

    async def _prune_periodically(self) -> None:
        while True:
            await trio.sleep(PRUNE_INTERVAL)
            self._prune_delivered()

    def _prune_delivered(self) -> None:
        cutoff = self._now() - self._delivered_retention
        for entry_id, delivered_at in list(self._delivered_at.items()):
            if delivered_at >= cutoff:
                continue
            try:
                (self._delivered_dir / entry_id).unlink(missing_ok=True)
            except OSError as exc:
                logger.warning("cannot remove delivered marker %s: %s", entry_id, exc)
                continue
            del self._delivered_at[entry_id]

    def statistics(self) -> OutboxStatistics:
        """Return the pending counts and the counters since the outbox was created."""
        queues = self._queues.values()
        created = [entry.created_at for queue in queues for entry in queue.entries]
        oldest_age = self._now() - min(created) if created else 0.0
        return OutboxStatistics(
            pending={name: len(q.entries) for name, q in self._queues.items()},
            oldest_pending_age=oldest_age,
            delivered=self._delivered_count,
            retried=self._retried_count,
            dead_lettered=self._dead_count,
        )


def _dead_letter_from_record(path: Path, record: Any) -> DeadLetter:
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
