"""Tests of the durable outbox: durability, order, retries, dead letters, restarts.

Retry timing runs on trio's MockClock (the ``autojump_clock`` fixture), and the
outbox's wall clock follows it, so every time asserted here is virtual.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import msgpack
import pytest
import trio

from conftest import BASE_TIME, virtual_now
from mesh.alarm import SignedAlarm
from sinks.errors import SinkPermanentError, SinkRetryableError
from sinks.outbox import (
    DeadLetterReason,
    Outbox,
    OutboxObserver,
    RetryPolicy,
)


class ScriptedDestination:
    """Fails each key with its scripted exceptions, then accepts it.

    The string ``"hang"`` in a script makes that attempt wait forever.
    """

    def __init__(
        self,
        name: str = "chat",
        failures: dict[str, list[BaseException | str]] | None = None,
        *,
        answer_delay: float = 0.0,
    ) -> None:
        self.name = name
        self.failures = {key: list(script) for key, script in (failures or {}).items()}
        self.answer_delay = answer_delay
        # (virtual time, idempotency key) of every attempt.
        self.attempts: list[tuple[float, str]] = []
        self.delivered: list[str] = []

    async def deliver(self, signed: SignedAlarm, idempotency_key: str) -> str:
        self.attempts.append((trio.current_time(), idempotency_key))
        await trio.sleep(self.answer_delay)
        script = self.failures.get(idempotency_key, [])
        if script:
            failure = script.pop(0)
            if failure == "hang":
                await trio.sleep_forever()
            assert isinstance(failure, BaseException)
            raise failure
        self.delivered.append(idempotency_key)
        return "200 ok"

    def attempt_times(self, key: str) -> list[float]:
        return [at for at, attempted in self.attempts if attempted == key]


class RecordingObserver(OutboxObserver):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def delivered(
        self, destination: str, attempts: int, seconds_since_enqueue: float
    ) -> None:
        self.events.append(("delivered", destination, attempts, seconds_since_enqueue))

    def retrying(self, destination: str, error: str, delay: float) -> None:
        self.events.append(("retrying", destination, error, delay))

    def dead_lettered(self, destination: str, reason: str) -> None:
        self.events.append(("dead_lettered", destination, reason))


async def run_for(outbox: Outbox, seconds: float) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run)
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()


def pending_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "outbox" / "pending").iterdir())


# ---------------------------------------------------------------------- enqueue


async def test_enqueue_writes_entry_before_first_attempt(
    tmp_path, make_outbox, autojump_clock, make_frame
):
    chat = ScriptedDestination()
    outbox = make_outbox([chat])
    frame = make_frame(1)

    assert outbox.enqueue("incident-1/firing", "chat", frame) is True

    files = pending_files(tmp_path)
    assert len(files) == 1
    record = msgpack.unpackb(files[0].read_bytes(), raw=False)
    assert record == {
        "key": "incident-1/firing",
        "destination": "chat",
        "frame": frame,
        "created_at": BASE_TIME,
        "attempts": 0,
        "last_error": None,
    }
    assert chat.attempts == []


async def test_enqueue_many_writes_all_in_order(
    tmp_path, make_outbox, autojump_clock, make_frame
):
    outbox = make_outbox([ScriptedDestination()])
    items = [(f"k{n}", "chat", make_frame(n)) for n in range(5)]

    assert outbox.enqueue_many(items) == [True] * 5

    keys = [
        msgpack.unpackb(path.read_bytes(), raw=False)["key"]
        for path in pending_files(tmp_path)
    ]
    assert keys == ["k0", "k1", "k2", "k3", "k4"]


async def test_enqueue_unknown_destination_raises(
    tmp_path, make_outbox, autojump_clock, make_frame
):
    outbox = make_outbox([ScriptedDestination()])

    with pytest.raises(ValueError, match="unknown destination 'pager'"):
        outbox.enqueue_many(
            [("k1", "chat", make_frame(1)), ("k2", "pager", make_frame(2))]
        )

    assert pending_files(tmp_path) == []


async def test_enqueue_empty_key_raises(make_outbox, autojump_clock, make_frame):
    outbox = make_outbox([ScriptedDestination()])

    with pytest.raises(ValueError, match="invalid idempotency key ''"):
        outbox.enqueue("", "chat", make_frame(1))


async def test_duplicate_key_rejected_while_pending_delivered_or_dead(
    tmp_path, make_outbox, make_frame, autojump_clock
):
    rejected = SinkPermanentError("400 bad request")
    chat = ScriptedDestination(failures={"bad": [rejected]})
    archive = ScriptedDestination("archive")
    outbox = make_outbox([chat, archive])

    assert outbox.enqueue("k1", "chat", make_frame(1)) is True
    assert outbox.enqueue("k1", "chat", make_frame(1)) is False
    # The key is scoped per destination.
    assert outbox.enqueue("k1", "archive", make_frame(1)) is True
    assert outbox.enqueue_many(
        [("bad", "chat", make_frame(2)), ("bad", "chat", make_frame(2))]
    ) == [True, False]
    assert len(pending_files(tmp_path)) == 3

    await run_for(outbox, 10)

    assert chat.delivered == ["k1"]
    assert outbox.enqueue("k1", "chat", make_frame(1)) is False
    assert outbox.enqueue("bad", "chat", make_frame(2)) is False
    assert pending_files(tmp_path) == []


# ---------------------------------------------------------------------- delivery


async def test_failing_destination_delivers_each_once_in_order(
    tmp_path, make_outbox, make_frame, autojump_clock
):
    error = SinkRetryableError("503 service unavailable")
    chat = ScriptedDestination(failures={"k1": [error, error, error]})
    observer = RecordingObserver()
    outbox = make_outbox([chat], rng=random.Random(7), observer=observer)
    twin = random.Random(7)
    for n in (1, 2, 3):
        outbox.enqueue(f"k{n}", "chat", make_frame(n))

    await run_for(outbox, 1000)

    assert chat.delivered == ["k1", "k2", "k3"]
    assert [key for _, key in chat.attempts] == ["k1"] * 4 + ["k2", "k3"]
    # Full jitter: each delay is uniform in [0, 1 * 2 ** (failures - 1)].
    delays = [twin.uniform(0.0, 1.0), twin.uniform(0.0, 2.0), twin.uniform(0.0, 4.0)]
    expected = [0.0, delays[0], delays[0] + delays[1], sum(delays)]
    assert chat.attempt_times("k1") == pytest.approx(expected, abs=1e-9)
    assert chat.attempt_times("k2") == pytest.approx([sum(delays)], abs=1e-9)
    retries = [event for event in observer.events if event[0] == "retrying"]
    assert [event[3] for event in retries] == pytest.approx(delays, abs=1e-9)
    delivered = [event for event in observer.events if event[0] == "delivered"]
    assert [event[2] for event in delivered] == [4, 1, 1]

    statistics = outbox.statistics()
    assert statistics.delivered == 3
    assert statistics.retried == 3
    assert statistics.dead_lettered == 0
    assert statistics.pending == {"chat": 0}
    assert pending_files(tmp_path) == []
    assert len(list((tmp_path / "outbox" / "delivered").iterdir())) == 3


async def test_retry_after_sets_minimum_delay(make_outbox, make_frame, autojump_clock):
    chat = ScriptedDestination(
        failures={
            "k1": [
                SinkRetryableError("429 too many requests", retry_after=42.0),
                # Shorter than the backoff, which then wins.
                SinkRetryableError("429 too many requests", retry_after=0.5),
            ]
        }
    )
    outbox = make_outbox([chat])
    outbox.enqueue("k1", "chat", make_frame(1))

    await run_for(outbox, 1000)

    assert chat.attempt_times("k1") == [0.0, 42.0, 44.0]
    assert chat.delivered == ["k1"]


async def test_permanent_error_moves_entry_to_dead_letters(
    tmp_path, make_outbox, make_frame, autojump_clock, caplog
):
    chat = ScriptedDestination(failures={"k1": [SinkPermanentError("400 bad request")]})
    observer = RecordingObserver()
    outbox = make_outbox([chat], observer=observer)
    outbox.enqueue("k1", "chat", make_frame(1))
    outbox.enqueue("k2", "chat", make_frame(2))

    await run_for(outbox, 10)

    assert chat.attempt_times("k1") == [0.0]
    assert chat.delivered == ["k2"]
    [letter] = outbox.dead_letters()
    assert letter.key == "k1"
    assert letter.destination == "chat"
    assert letter.reason == "permanent_error"
    assert letter.detail == "400 bad request"
    assert letter.frame == make_frame(1)
    assert letter.attempts == 1
    assert ("dead_lettered", "chat", "permanent_error") in observer.events
    assert outbox.statistics().dead_lettered == 1
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "key=k1" in errors[0].getMessage()
    assert pending_files(tmp_path) == []


async def test_max_age_moves_entry_to_dead_letters(
    make_outbox, make_frame, autojump_clock
):
    failures = [RuntimeError("connection refused")] * 100
    chat = ScriptedDestination(failures={"k1": failures})
    policy = RetryPolicy(initial_delay=1, max_delay=10, max_age=60)
    outbox = make_outbox([chat], policy=policy)
    outbox.enqueue("k1", "chat", make_frame(1))
    outbox.enqueue("k2", "chat", make_frame(2))

    await run_for(outbox, 1000)

    # Delays 1, 2, 4, 8, 10, 10, ...; a retry at 65 s would pass max_age.
    expected = [0.0, 1.0, 3.0, 7.0, 15.0, 25.0, 35.0, 45.0, 55.0]
    assert chat.attempt_times("k1") == expected
    assert chat.attempt_times("k2") == [55.0]
    [letter] = outbox.dead_letters()
    assert letter.key == "k1"
    assert letter.reason == DeadLetterReason.EXPIRED.value
    assert "RuntimeError: connection refused" in letter.detail
    assert letter.attempts == 9


async def test_entry_older_than_max_age_expires_without_attempt(
    make_outbox, make_frame, autojump_clock
):
    policy = RetryPolicy(max_age=60)
    first = make_outbox([ScriptedDestination()], policy=policy)
    first.enqueue("k1", "chat", make_frame(1))

    chat = ScriptedDestination()
    restarted = make_outbox([chat], policy=policy, now=lambda: virtual_now() + 61)
    await run_for(restarted, 10)

    assert chat.attempts == []
    [letter] = restarted.dead_letters()
    assert letter.reason == "expired"


async def test_undecodable_frame_moves_entry_to_dead_letters(
    make_outbox, make_frame, autojump_clock
):
    chat = ScriptedDestination()
    outbox = make_outbox([chat])
    outbox.enqueue("k1", "chat", b"not a signed frame")

    await run_for(outbox, 10)

    assert chat.attempts == []
    [letter] = outbox.dead_letters()
    assert letter.reason == "undecodable"
    assert "frame cannot be decoded" in letter.detail


async def test_slow_destination_does_not_block_another(
    make_outbox, make_frame, autojump_clock
):
    slow = ScriptedDestination("slow", failures={"k1": ["hang", "hang"]})
    fast = ScriptedDestination("fast", answer_delay=0.25)
    observer = RecordingObserver()
    policy = RetryPolicy(attempt_timeout=30)
    outbox = make_outbox([slow, fast], policy=policy, observer=observer)
    outbox.enqueue("k1", "slow", make_frame(1))
    outbox.enqueue("k1", "fast", make_frame(1))
    outbox.enqueue("k2", "fast", make_frame(2))

    await run_for(outbox, 1000)

    assert fast.attempts == [(0.0, "k1"), (0.25, "k2")]
    assert fast.delivered == ["k1", "k2"]
    # Each hung attempt ends at the 30 s deadline; the backoff adds 1 s, then 2 s.
    assert slow.attempt_times("k1") == [0.0, 31.0, 63.0]
    assert slow.delivered == ["k1"]
    retry = ("retrying", "slow", "attempt timed out after 30s", 1.0)
    assert retry in observer.events


async def test_enqueue_wakes_idle_destination(make_outbox, make_frame, autojump_clock):
    chat = ScriptedDestination()
    outbox = make_outbox([chat])

    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run)
        await trio.sleep(5)
        outbox.enqueue("k1", "chat", make_frame(1))
        await trio.sleep(5)
        nursery.cancel_scope.cancel()

    assert chat.attempts == [(5.0, "k1")]


async def test_run_twice_at_once_raises(make_outbox, autojump_clock):
    outbox = make_outbox([ScriptedDestination()])

    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run)
        with pytest.raises(RuntimeError, match="already running"):
            await outbox.run()
        nursery.cancel_scope.cancel()


async def test_retry_logged_once_per_error_text(
    make_outbox, make_frame, autojump_clock, caplog
):
    unavailable = SinkRetryableError("503 service unavailable")
    chat = ScriptedDestination(
        failures={"k1": [unavailable, unavailable, unavailable, TimeoutError("read")]}
    )
    outbox = make_outbox([chat])
    outbox.enqueue("k1", "chat", make_frame(1))
    outbox.enqueue("k2", "chat", make_frame(2))
    caplog.set_level(logging.DEBUG, logger="sinks.outbox")

    await run_for(outbox, 1000)

    records = [r for r in caplog.records if r.name == "sinks.outbox"]
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "503 service unavailable" in warnings[0]
    assert "TimeoutError: read" in warnings[1]
    infos = [r.getMessage() for r in records if r.levelno == logging.INFO]
    assert len(infos) == 1
    assert "key=k1 attempt=5" in infos[0]
    debug_deliveries = [
        r.getMessage()
        for r in records
        if r.levelno == logging.DEBUG and r.getMessage().startswith("delivered")
    ]
    assert len(debug_deliveries) == 1
    assert "key=k2 attempt=1" in debug_deliveries[0]


async def test_statistics_counts_pending_and_oldest_age(
    make_outbox, make_frame, autojump_clock
):
    outbox = make_outbox([ScriptedDestination(), ScriptedDestination("archive")])
    outbox.enqueue("k1", "chat", make_frame(1))
    await trio.sleep(10)
    outbox.enqueue("k2", "chat", make_frame(2))

    statistics = outbox.statistics()

    assert statistics.pending == {"chat": 2, "archive": 0}
    assert statistics.oldest_pending_age == 10.0
    assert statistics.delivered == 0


def test_retry_policy_rejects_invalid_values():
    with pytest.raises(ValueError, match="invalid initial_delay -1"):
        RetryPolicy(initial_delay=-1)
    with pytest.raises(ValueError, match="invalid max_delay 0.5"):
        RetryPolicy(initial_delay=1, max_delay=0.5)
    with pytest.raises(ValueError, match="invalid multiplier 0.5"):
        RetryPolicy(multiplier=0.5)
    with pytest.raises(ValueError, match="invalid attempt_timeout inf"):
        RetryPolicy(attempt_timeout=float("inf"))


def test_retry_policy_delay_bound_grows_to_max():
    policy = RetryPolicy(initial_delay=1, max_delay=300, multiplier=2)

    bounds = [policy.delay_bound(failures) for failures in (1, 2, 3, 9, 10, 5000)]

    assert bounds == [1, 2, 4, 256, 300, 300]


# ---------------------------------------------------------------------- restarts


async def test_restart_delivers_entries_left_by_previous_run(
    tmp_path, make_outbox, make_frame, autojump_clock
):
    down = RuntimeError("connection refused")
    broken = ScriptedDestination(failures={"k1": [down] * 100})
    first = make_outbox([broken])
    first.enqueue("k1", "chat", make_frame(1))
    first.enqueue("k2", "chat", make_frame(2))
    await run_for(first, 5)
    attempts_before = len(broken.attempts)
    assert attempts_before >= 2
    assert len(pending_files(tmp_path)) == 2

    chat = ScriptedDestination()
    observer = RecordingObserver()
    second = make_outbox([chat], observer=observer)
    assert second.statistics().pending == {"chat": 2}
    await run_for(second, 5)

    assert chat.delivered == ["k1", "k2"]
    # The attempt count was kept on disk across the restart.
    assert observer.events[0][:3] == ("delivered", "chat", attempts_before + 1)
    assert pending_files(tmp_path) == []


async def test_restart_after_crash_before_removal_skips_delivered_entry(
    tmp_path, make_outbox, make_frame, autojump_clock
):
    chat = ScriptedDestination()
    outbox = make_outbox([chat])
    outbox.enqueue("k1", "chat", make_frame(1))
    [entry_file] = pending_files(tmp_path)
    saved = entry_file.read_bytes()
    await run_for(outbox, 5)
    assert chat.delivered == ["k1"]
    # A crash after the marker was written but before the entry was removed.
    entry_file.write_bytes(saved)

    again = ScriptedDestination()
    restarted = make_outbox([again])
    await run_for(restarted, 5)

    assert again.attempts == []
    assert pending_files(tmp_path) == []
    assert restarted.enqueue("k1", "chat", make_frame(1)) is False


async def test_corrupt_entry_files_move_to_dead_letters(
    tmp_path, make_outbox, make_frame, autojump_clock
):
    make_outbox([ScriptedDestination()]).enqueue("k1", "chat", make_frame(1))
    pending = tmp_path / "outbox" / "pending"
    (pending / f"{0:020d}-{'0' * 32}.entry").write_bytes(b"\xc1 not msgpack")
    (pending / f"{1:020d}-{'1' * 32}.entry").write_bytes(msgpack.packb({"key": "x"}))
    (pending / "notes.txt").write_bytes(b"left by someone")
    observer = RecordingObserver()

    chat = ScriptedDestination()
    outbox = make_outbox([chat], observer=observer)
    await run_for(outbox, 5)

    assert chat.delivered == ["k1"]
    letters = outbox.dead_letters()
    assert [letter.reason for letter in letters] == ["corrupt_entry"] * 3
    assert sorted(letter.raw for letter in letters) == [
        b"left by someone",
        b"\x81\xa3key\xa1x",
        b"\xc1 not msgpack",
    ]
    assert observer.events.count(("dead_lettered", "", "corrupt_entry")) == 3
    assert pending_files(tmp_path) == []


async def test_entry_for_removed_destination_moves_to_dead_letters(
    tmp_path, make_outbox, make_frame, autojump_clock
):
    make_outbox([ScriptedDestination("pager")]).enqueue("k1", "pager", make_frame(1))

    outbox = make_outbox([ScriptedDestination()])

    [letter] = outbox.dead_letters()
    assert letter.reason == "unknown_destination"
    assert letter.destination == "pager"
    assert pending_files(tmp_path) == []


async def test_delivered_markers_pruned_after_retention(
    tmp_path, make_outbox, make_frame, autojump_clock
):
    outbox = make_outbox([ScriptedDestination()], delivered_retention=100)
    outbox.enqueue("k1", "chat", make_frame(1))
    await run_for(outbox, 5)
    delivered_dir = tmp_path / "outbox" / "delivered"
    assert len(list(delivered_dir.iterdir())) == 1

    later = make_outbox(
        [ScriptedDestination()],
        delivered_retention=100,
        now=lambda: virtual_now() + 200,
    )

    assert list(delivered_dir.iterdir()) == []
    assert later.enqueue("k1", "chat", make_frame(1)) is True
