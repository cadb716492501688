"""The durable outbox: alarms are written to disk before their first delivery attempt.

Every entry is delivered at least once to its destination (a receiver such as a
Slack channel, or the archive) or moved to the dead letters, across crashes and
restarts. The folder layout::

    <directory>/pending/<seq>-<id>.entry   waiting for delivery
    <directory>/delivered/<id>             marker of a delivered key, pruned later
    <directory>/dead/<id>.dead             dead letter: the entry and the reason

Each file is one msgpack map (see :mod:`sinks._outbox_files`). ``<seq>`` is a
20-digit counter that fixes the delivery order, and ``<id>`` is a hash of the
destination name and the idempotency key. An idempotency key is therefore scoped
to its destination: the same key can be queued once for each destination.

Durability: ``enqueue`` returns only after the entry file and its folder entry are
on disk (temporary file, fsync, rename, fsync of the folder). After a delivery the
outbox writes the delivered marker durably and then removes the entry file. A
crash between the two leaves both, and the next start drops the entry instead of
delivering it again. A crash during an attempt delivers the entry again after the
restart, and the receiver can use the idempotency key to drop the duplicate: each
destination has at most one attempt in flight, so a crash repeats at most one
message per destination.

Delivery: each destination has its own task and queue, so a slow or failing
receiver holds up only itself. A destination gets its entries in enqueue order,
and its head entry is retried until it is delivered or dead, because a resolved
alarm that overtakes its firing alarm would mislead the people reading them.
Retry delays follow :mod:`sinks.retry`.

Grouping: entries of one destination that share a group (a route) and arrive
within the group window of the first are sent as one message, to receivers that
can show several alarms at once. The first entry waits out the window; the
batch is fixed when it is formed and retried as a whole.

Fallbacks: an entry may name fallback destinations. Once its destination has
failed for ``fallback_after`` seconds without a success, or at once when the
entry becomes a dead letter, every such entry of that destination is copied to
its fallbacks under its ``fallback_key``. The primary keeps retrying, so it still
gets every alarm in order when it recovers.

File I/O runs on the trio thread, not in worker threads. ``enqueue`` is
synchronous so that its callers know the alarm is safe when it returns, and the
bookkeeping after an attempt is a few small writes. A worker thread would also let
trio's MockClock jump past deadlines while the I/O runs.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import trio

from mesh.alarm import SignedAlarm

from ._outbox_files import (
    PENDING_NAME,
    Entry,
    entry_id,
    fsync_files,
    fsync_folder,
    pack,
    parse_entry,
    temporary_path,
    write_synced,
)
from .deadletters import (
    DeadLetter,
    DeadLetterArchive,
    DeadLetterReason,
    DeadLetterStore,
)
from .errors import SinkPermanentError, SinkRetryableError
from .retry import DAYS, HOURS, RetryPolicy, describe_error, retry_delay

__all__ = [
    "Destination",
    "Envelope",
    "RetryPolicy",
    "OutboxObserver",
    "OutboxStatistics",
    "DeadLetterReason",
    "DeadLetter",
    "Outbox",
]

logger = logging.getLogger(__name__)

# How often a running outbox removes expired delivered markers.
PRUNE_INTERVAL = 1 * HOURS


class Destination(Protocol):
    """A receiver that the outbox delivers to: one sink, or the archive.

    A destination that can show several alarms in one message also has
    ``max_group`` (an int above 1) and ``deliver_group(group, key)``, which
    takes a list of alarms and otherwise behaves as ``deliver``.
    """

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
class Envelope:
    """One delivery to enqueue, with the routing options of its entry."""

    # Idempotency key, unique per destination.
    key: str
    destination: str
    frame: bytes
    # Entries of one destination with the same non-empty group, enqueued within
    # group_window seconds of the first, go out in one message.
    group: str = ""
    group_window: float = 0.0
    # Destinations that get a copy under fallback_key (default: key) once
    # ``destination`` has failed for fallback_after seconds.
    fallbacks: tuple[str, ...] = ()
    fallback_key: str = ""
    fallback_after: float = 0.0


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

    def answered(self, destination: str, key: str, response: str) -> None:
        """Record the receiver's answer to a delivered entry."""

    def handed_over(self, destination: str, fallback: str, count: int) -> None:
        """Record ``count`` entries of ``destination`` copied to ``fallback``."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class OutboxStatistics:
    """Counts for debugging and metrics, from :meth:`Outbox.statistics`."""

    # Entries waiting per destination, including the one being attempted. Every
    # configured destination is present.
    pending: Mapping[str, int]
    # Wall-clock age in seconds of the oldest pending entry, 0.0 when none.
    oldest_pending_age: float
    # Since the outbox was created: entries delivered, failed attempts followed
    # by a retry, entries moved to the dead letters, and copies made for
    # fallback destinations.
    delivered: int
    retried: int
    dead_lettered: int
    handed_over: int = 0
    # Dead letters on disk, by DeadLetterReason value, whenever they were made.
    dead_letters: Mapping[str, int] = dataclasses.field(default_factory=dict)
    # Seconds since the first failure of each destination that has not had a
    # success since; absent for destinations that are not failing.
    failing_for: Mapping[str, float] = dataclasses.field(default_factory=dict)


class _DestinationQueue:
    """The pending entries of one destination and the state of its task."""

    def __init__(self, name: str, destination: Destination) -> None:
        # Destination name, as given to enqueue, and the receiver.
        self.name = name
        self.destination = destination
        # Alarms per message: above 1 only for destinations with deliver_group.
        max_group = getattr(destination, "max_group", 1)
        self.max_group = max_group if hasattr(destination, "deliver_group") else 1
        # Entries in enqueue order. The head is the one being attempted, and only
        # this destination's task removes entries.
        self.entries: collections.deque[Entry] = collections.deque()
        # Set by enqueue to wake the idle task; the task replaces it before waiting.
        self.wakeup = trio.Event()
        # Text of the last failure logged at WARNING, so that repeats of the same
        # failure go to DEBUG; reset by a delivery.
        self.logged_error: str | None = None
        # Wall-clock time of the first failure since the last success, Unix
        # seconds, or None while the destination is healthy.
        self.failed_since: float | None = None


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
        dead_letter_archive: where :meth:`run` copies each dead letter, or None.

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
        dead_letter_archive: DeadLetterArchive | None = None,
    ) -> None:
        directory = Path(directory)
        # Subfolders for entries waiting for delivery and delivered markers.
        self._pending_dir = directory / "pending"
        self._delivered_dir = directory / "delivered"
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
        # Archive that dead letters are copied to, or None.
        self._dead_letter_archive = dead_letter_archive
        # Destination name to its queue; the set of names is fixed.
        self._queues = {
            name: _DestinationQueue(name, destination)
            for name, destination in destinations.items()
        }
        # Ids of the entries in the queues.
        self._pending_ids: set[str] = set()
        # Ids of the pending entries already copied to their fallbacks.
        self._handed_over_ids: set[str] = set()
        # Id of each delivered marker on disk to its delivery time, Unix seconds.
        self._delivered_at: dict[str, float] = {}
        # Sequence number of the next entry; above every pending one.
        self._next_seq = 0
        # Counters reported by statistics().
        self._delivered_count = 0
        self._retried_count = 0
        self._dead_count = 0
        self._handed_over_count = 0
        # True while run() is active; a second concurrent run() is a mistake.
        self._running = False

        for folder in (self._pending_dir, self._delivered_dir):
            folder.mkdir(parents=True, exist_ok=True)
        # The dead/ folder, its index and its copies to the archive.
        self._dead = DeadLetterStore(directory / "dead", now=now)
        fsync_folder(directory)
        self._load_delivered()
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

    def _load_pending(self) -> None:
        for name in sorted(os.listdir(self._pending_dir)):
            path = self._pending_dir / name
            if name.startswith("."):
                # The enqueue that wrote it had not returned, so no caller relies on it.
                path.unlink(missing_ok=True)
                continue
            match = PENDING_NAME.fullmatch(name)
            try:
                if match is None:
                    raise ValueError(f"file name {name!r} is not <seq>-<id>.entry")
                entry = parse_entry(int(match[1]), path.read_bytes())
                if entry.id != match[2]:
                    raise ValueError(f"file name {name!r} does not match its entry")
            except ValueError as exc:
                self._dead_letter_file(path, str(exc))
                continue
            self._next_seq = max(self._next_seq, entry.seq + 1)
            self._restore(entry, path)
        # A destination that was failing before the restart still is, as far as
        # its fallbacks are concerned: its head entry remembers since when.
        for queue in self._queues.values():
            if queue.entries:
                queue.failed_since = queue.entries[0].failed_since

    def _restore(self, entry: Entry, path: Path) -> None:
        entry_id = entry.id
        if entry_id in self._delivered_at or entry_id in self._dead.ids:
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

    def enqueue_many(
        self, items: Iterable[Envelope | tuple[str, str, bytes]]
    ) -> list[bool]:
        """Write deliveries durably and queue them, with one folder fsync for all.

        Each item is an :class:`Envelope` or a tuple ``(idempotency_key,
        destination, frame)``. The entry files are on disk when this returns,
        before any attempt starts.

        Returns:
            For each item, True if it was queued, or False if its key was already
            pending, delivered within the retention or dead for that destination,
            or appeared earlier in ``items``. Nothing is written for False.

        Raises:
            ValueError: a destination or fallback is not configured, or a key is
                empty. Nothing is written then.
            TypeError: a frame is not bytes.
            OSError: the entries could not be written. None of them is queued.
        """
        envelopes = [
            item
            if isinstance(item, Envelope)
            else Envelope(key=item[0], destination=item[1], frame=item[2])
            for item in items
        ]
        for envelope in envelopes:
            self._check(envelope)

        # Select the new entries.
        created_at = self._now()
        accepted: list[bool] = []
        entries: list[Entry] = []
        batch_ids: set[str] = set()
        for envelope in envelopes:
            new_id = entry_id(envelope.destination, envelope.key)
            if self._is_known(new_id) or new_id in batch_ids:
                accepted.append(False)
                continue
            batch_ids.add(new_id)
            entries.append(
                Entry(
                    seq=self._next_seq + len(entries),
                    key=envelope.key,
                    destination=envelope.destination,
                    frame=envelope.frame,
                    created_at=created_at,
                    group=envelope.group,
                    group_window=envelope.group_window,
                    fallbacks=envelope.fallbacks,
                    fallback_key=envelope.fallback_key,
                    fallback_after=envelope.fallback_after,
                )
            )
            accepted.append(True)
        if not entries:
            return accepted

        self._write_entries(entries)

        # Queue them only now that they are durable.
        self._next_seq += len(entries)
        touched = {}
        for entry in entries:
            queue = self._queues[entry.destination]
            queue.entries.append(entry)
            queue.wakeup.set()
            touched[queue.name] = queue
        self._pending_ids.update(batch_ids)
        # A destination that has been failing for long hands new entries to
        # their fallbacks at once, instead of at its next attempt.
        for queue in touched.values():
            self._hand_over(queue)
        return accepted

    def _check(self, envelope: Envelope) -> None:
        if envelope.destination not in self._queues:
            raise ValueError(f"unknown destination {envelope.destination!r}")
        for fallback in envelope.fallbacks:
            if fallback not in self._queues or fallback == envelope.destination:
                raise ValueError(
                    f"invalid fallback {fallback!r} of {envelope.destination!r}, "
                    "expected another configured destination"
                )
        if not isinstance(envelope.key, str) or not envelope.key:
            raise ValueError(
                f"invalid idempotency key {envelope.key!r}, expected a non-empty string"
            )
        if not isinstance(envelope.frame, bytes):
            raise TypeError(f"frame must be bytes, got {type(envelope.frame).__name__}")

    def _is_known(self, new_id: str) -> bool:
        return (
            new_id in self._pending_ids
            or new_id in self._delivered_at
            or new_id in self._dead.ids
        )

    def _write_entries(self, entries: list[Entry]) -> None:
        paths = [self._pending_dir / entry.file_name for entry in entries]
        tmps = [temporary_path(path) for path in paths]
        renamed: list[Path] = []
        try:
            # All files are written before any is fsynced, so that the fsyncs
            # can run at the same time.
            for entry, tmp in zip(entries, tmps):
                tmp.write_bytes(pack(entry.to_record()))
            fsync_files(tmps)
            for tmp, path in zip(tmps, paths):
                os.replace(tmp, path)
                renamed.append(path)
            fsync_folder(self._pending_dir)
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
                if self._dead_letter_archive is not None:
                    nursery.start_soon(
                        self._dead.run_archiver,
                        self._dead_letter_archive,
                        self._policy,
                        self._rng,
                    )
                task_status.started()
        finally:
            self._running = False

    async def _run_destination(self, queue: _DestinationQueue) -> None:
        while True:
            if not queue.entries:
                queue.wakeup = trio.Event()
                await queue.wakeup.wait()
                continue
            batch = await self._take_batch(queue)
            await self._deliver(queue, batch)
            for entry in batch:
                assert queue.entries[0] is entry
                queue.entries.popleft()
                self._pending_ids.discard(entry.id)
                self._handed_over_ids.discard(entry.id)
            # A receiver that responds without a checkpoint must not starve the
            # other destinations while a long queue drains.
            await trio.lowlevel.checkpoint()

    async def _take_batch(self, queue: _DestinationQueue) -> list[Entry]:
        """Return the entries of the next message, waiting out a group window."""
        head = queue.entries[0]
        if queue.max_group <= 1 or not head.group or head.group_window <= 0:
            return [head]
        window_end = head.created_at + head.group_window
        wait = window_end - self._now()
        if wait > 0:
            await trio.sleep(wait)
        batch = []
        for entry in queue.entries:
            if entry.group != head.group or entry.created_at > window_end:
                break
            batch.append(entry)
            if len(batch) == queue.max_group:
                break
        return batch

    async def _deliver(self, queue: _DestinationQueue, batch: list[Entry]) -> None:
        """Attempt ``batch`` until it is delivered or moved to the dead letters."""
        policy = self._policy
        decoded = self._decode_batch(queue, batch)
        if not decoded:
            return
        entries = [entry for entry, _ in decoded]
        head = entries[0]

        failures = 0
        while True:
            # Give up on entries that waited too long, for example across a
            # long shutdown.
            if self._now() - head.created_at > policy.max_age:
                self._expire(queue, entries)
                return

            # Attempt them under a deadline.
            for entry in entries:
                entry.attempts += 1
            retry_after = None
            try:
                with trio.fail_after(policy.attempt_timeout):
                    response = await self._attempt(queue, decoded)
            except SinkPermanentError as exc:
                self._note_failure(queue)
                reason = DeadLetterReason.PERMANENT_ERROR
                for entry in entries:
                    self._dead_letter(entry, reason, describe_error(exc))
                self._hand_over(queue, dead=entries)
                return
            except trio.TooSlowError:
                error = f"attempt timed out after {policy.attempt_timeout:g}s"
            except SinkRetryableError as exc:
                error = describe_error(exc)
                retry_after = exc.retry_after
            except Exception as exc:
                # Any other failure of a receiver may be transient.
                error = describe_error(exc)
            else:
                self._mark_delivered(queue, entries, response)
                return

            # Choose the delay, and give up if the retry would come too late.
            failures += 1
            delay = retry_delay(policy, failures, retry_after, self._rng)
            self._note_failure(queue, entries, error)
            if self._now() + delay - head.created_at > policy.max_age:
                self._expire(queue, entries)
                return

            self._record_retry(queue, entries, error, delay)
            await self._sleep_handing_over(queue, delay)

    def _decode_batch(
        self, queue: _DestinationQueue, batch: list[Entry]
    ) -> list[tuple[Entry, SignedAlarm]]:
        decoded = []
        for entry in batch:
            try:
                decoded.append((entry, self._decode(entry.frame)))
            except Exception as exc:
                detail = f"frame cannot be decoded: {describe_error(exc)}"
                self._dead_letter(entry, DeadLetterReason.UNDECODABLE, detail)
        return decoded

    async def _attempt(
        self, queue: _DestinationQueue, decoded: list[tuple[Entry, SignedAlarm]]
    ) -> str:
        destination = queue.destination
        if len(decoded) == 1:
            entry, signed = decoded[0]
            return await destination.deliver(signed, entry.key)
        # The key of a message of several entries is fixed by its entries, so a
        # retry of the same batch repeats it.
        keys = "\n".join(entry.key for entry, _ in decoded)
        key = "group-" + hashlib.sha256(keys.encode()).hexdigest()[:32]
        group = [signed for _, signed in decoded]
        return await destination.deliver_group(group, key)  # type: ignore[attr-defined]

    def _note_failure(
        self,
        queue: _DestinationQueue,
        entries: Sequence[Entry] = (),
        error: str | None = None,
    ) -> None:
        now = self._now()
        if queue.failed_since is None:
            queue.failed_since = now
        for entry in entries:
            entry.last_error = error
            if entry.failed_since is None:
                entry.failed_since = now

    async def _sleep_handing_over(self, queue: _DestinationQueue, delay: float) -> None:
        """Sleep ``delay`` seconds, handing entries over when their time comes."""
        deadline = trio.current_time() + delay
        while True:
            due = self._next_hand_over(queue)
            if due is None or trio.current_time() + due >= deadline:
                break
            await trio.sleep(due)
            self._hand_over(queue)
        await trio.sleep_until(deadline)

    def _record_retry(
        self, queue: _DestinationQueue, entries: list[Entry], error: str, delay: float
    ) -> None:
        self._retried_count += 1
        for entry in entries:
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
            _keys_text(entries),
            entries[0].attempts,
        )
        self._observer.retrying(queue.name, error, delay)

    def _save(self, entry: Entry) -> None:
        # No folder fsync: after a crash, the old and the new file are both
        # valid entries.
        path = self._pending_dir / entry.file_name
        write_synced(path, pack(entry.to_record()))

    def _expire(self, queue: _DestinationQueue, entries: list[Entry]) -> None:
        for entry in entries:
            detail = f"not delivered within max_age {self._policy.max_age:g}s"
            if entry.last_error is not None:
                detail += f", last error: {entry.last_error}"
            self._dead_letter(entry, DeadLetterReason.EXPIRED, detail)
        self._hand_over(queue, dead=entries)

    def _mark_delivered(
        self, queue: _DestinationQueue, entries: list[Entry], response: str
    ) -> None:
        delivered_at = self._now()

        # The markers must be durable before the entries go, so that a crash
        # between the two cannot deliver an entry again.
        try:
            for entry in entries:
                marker = self._delivered_dir / entry.id
                record = {
                    "key": entry.key,
                    "destination": entry.destination,
                    "delivered_at": delivered_at,
                }
                write_synced(marker, pack(record))
                os.utime(marker, (delivered_at, delivered_at))
                self._delivered_at[entry.id] = delivered_at
            fsync_folder(self._delivered_dir)
        except OSError as exc:
            logger.warning(
                "cannot write delivered marker, the key may be accepted again: "
                "%s sink=%s key=%s",
                exc,
                queue.name,
                _keys_text(entries),
            )
        for entry in entries:
            self._remove_pending(entry)

        self._delivered_count += len(entries)
        queue.logged_error = None
        queue.failed_since = None
        attempts = entries[0].attempts
        level = logging.DEBUG if attempts == 1 else logging.INFO
        logger.log(
            level,
            "delivered: %s sink=%s key=%s attempt=%d",
            response,
            queue.name,
            _keys_text(entries),
            attempts,
        )
        for entry in entries:
            age = delivered_at - entry.created_at
            self._observer.delivered(queue.name, entry.attempts, age)
            _notify(self._observer, "answered", queue.name, entry.key, response)

    def _remove_pending(self, entry: Entry) -> None:
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

    # ------------------------------------------------------------------ fallbacks

    def _next_hand_over(self, queue: _DestinationQueue) -> float | None:
        """Return the seconds until an entry of ``queue`` is due for its fallbacks."""
        if queue.failed_since is None:
            return None
        failing_for = self._now() - queue.failed_since
        waits = [
            max(0.0, entry.fallback_after - failing_for)
            for entry in queue.entries
            if entry.fallbacks and entry.id not in self._handed_over_ids
        ]
        return min(waits, default=None)

    def _hand_over(
        self, queue: _DestinationQueue, *, dead: Sequence[Entry] = ()
    ) -> None:
        """Copy the entries of a failing destination to their fallbacks.

        Entries in ``dead`` go over whatever their fallback_after: their
        destination will never deliver them.
        """
        if queue.failed_since is None and not dead:
            return
        failing_for = 0.0
        if queue.failed_since is not None:
            failing_for = self._now() - queue.failed_since
        dead_ids = {entry.id for entry in dead}
        # By id, because the dead entries are still in the queue.
        candidates = {entry.id: entry for entry in [*dead, *queue.entries]}
        due = [
            entry
            for entry in candidates.values()
            if entry.fallbacks
            and entry.id not in self._handed_over_ids
            and (entry.id in dead_ids or failing_for >= entry.fallback_after)
        ]
        if not due:
            return

        envelopes = [
            Envelope(
                key=entry.fallback_key or entry.key,
                destination=fallback,
                frame=entry.frame,
                group=entry.group,
                group_window=entry.group_window,
            )
            for entry in due
            for fallback in entry.fallbacks
        ]
        try:
            self.enqueue_many(envelopes)
        except OSError as exc:
            # The primary keeps its entries; the next failure tries again.
            logger.error(
                "cannot queue fallback deliveries: %s sink=%s", exc, queue.name
            )
            return
        self._handed_over_ids.update(entry.id for entry in due)
        self._handed_over_count += len(due)
        counts = collections.Counter(e.destination for e in envelopes)
        for fallback, count in counts.items():
            logger.warning(
                "receiver failing for %.0fs, %d alarms handed to fallback "
                "sink=%s fallback=%s",
                failing_for,
                count,
                queue.name,
                fallback,
            )
            _notify(self._observer, "handed_over", queue.name, fallback, count)

    # ------------------------------------------------------------------ dead letters

    def _dead_letter(self, entry: Entry, reason: DeadLetterReason, detail: str) -> None:
        try:
            self._dead.write(entry, reason, detail)
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
        try:
            self._dead.write_unreadable(path, detail)
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
        self._observer.dead_lettered("", DeadLetterReason.CORRUPT_ENTRY.value)

    def dead_letters(self) -> list[DeadLetter]:
        """Read the dead letters on disk, oldest first.

        Files that cannot be read are skipped with a warning.
        """
        return self._dead.read_all()

    # ------------------------------------------------------------------ upkeep

    async def _prune_periodically(self) -> None:
        while True:
            await trio.sleep(PRUNE_INTERVAL)
            self._prune_delivered()

    def _prune_delivered(self) -> None:
        cutoff = self._now() - self._delivered_retention
        for delivered_id, delivered_at in list(self._delivered_at.items()):
            if delivered_at >= cutoff:
                continue
            try:
                (self._delivered_dir / delivered_id).unlink(missing_ok=True)
            except OSError as exc:
                logger.warning(
                    "cannot remove delivered marker %s: %s", delivered_id, exc
                )
                continue
            del self._delivered_at[delivered_id]

    def statistics(self) -> OutboxStatistics:
        """Return the pending counts and the counters since the outbox was created."""
        now = self._now()
        queues = self._queues.values()
        created = [entry.created_at for queue in queues for entry in queue.entries]
        oldest_age = now - min(created) if created else 0.0
        return OutboxStatistics(
            pending={name: len(q.entries) for name, q in self._queues.items()},
            oldest_pending_age=oldest_age,
            delivered=self._delivered_count,
            retried=self._retried_count,
            dead_lettered=self._dead_count,
            handed_over=self._handed_over_count,
            dead_letters=self._dead.counts(),
            failing_for={
                q.name: now - q.failed_since
                for q in queues
                if q.failed_since is not None
            },
        )


def _notify(observer: object, hook: str, *args: object) -> None:
    # Hooks added after the first three are optional, so that an observer
    # written against the first version keeps working.
    method = getattr(observer, hook, None)
    if method is not None:
        method(*args)


def _keys_text(entries: Sequence[Entry]) -> str:
    # One key as it is; a batch as its keys joined, so that grep finds each.
    return ",".join(entry.key for entry in entries)
