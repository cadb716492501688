"""Benchmark of the outbox: durable enqueue throughput, added latency, drain rate.

Run it directly (``just bench-outbox``); pytest does not collect it::

    python bench/bench_outbox.py [--alarms 2000] [--batch 100] [--runs 5] [--dir PATH]

* Enqueue: each run enqueues the same signed alarms into a fresh outbox folder,
  one per call and then ``--batch`` per call, and the script prints the median
  over the runs in alarms per second. Every enqueue fsyncs each entry file, and
  each call fsyncs the pending folder once.
* Added latency: alarms are enqueued one at a time into a running outbox, each
  after the previous one was delivered, and the time from the enqueue call to
  the start of the delivery attempt is what the outbox adds before a receiver
  sees the alarm (the durable write and the wake-up of the destination task).
* Drain: the rate at which one destination works through a full queue with a
  receiver that answers at once, which the delivered marker's fsync bounds.

The numbers depend mostly on the disk and file system under ``--dir``. Report
them with the machine and file system they were measured on.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import trio

from mesh.alarm import Alarm, Severity, SignedAlarm, Status, open_alarm, seal_alarm
from mesh.keys import Keyring, SigningKey
from sinks.outbox import Outbox


class NullDestination:
    name = "chat"

    async def deliver(self, signed: SignedAlarm, idempotency_key: str) -> str:
        return "ok"


def make_frames(count: int) -> tuple[Keyring, list[bytes]]:
    key = SigningKey.generate()
    frames = []
    for number in range(count):
        alarm = Alarm(
            incident=f"check-failed/api@{number}",
            status=Status.FIRING,
            severity=Severity.CRITICAL,
            subject="check/api",
            cluster="busan",
            reporter="seoul",
            observers=("seoul", "tokyo", "busan"),
            started_at=1_796_400_000.0 + number,
            sent_at=1_796_400_000.0 + number,
            summary="GET https://api.example.com/healthz returned 503 three times",
        )
        frames.append(seal_alarm(key, alarm).frame)
    return Keyring({"seoul": key.verify_key}), frames


def measure(parent: Path, keyring: Keyring, frames: list[bytes], batch: int) -> float:
    """Enqueue every frame into a new outbox and return alarms per second."""
    folder = Path(tempfile.mkdtemp(prefix="outbox-", dir=parent))
    try:
        outbox = Outbox(
            folder,
            {"chat": NullDestination()},
            decode=lambda frame: open_alarm(frame, keyring),
        )
        items = [(f"key-{n}", "chat", frame) for n, frame in enumerate(frames)]
        start = time.perf_counter()
        if batch <= 1:
            for key, destination, frame in items:
                outbox.enqueue(key, destination, frame)
        else:
            for offset in range(0, len(items), batch):
                outbox.enqueue_many(items[offset : offset + batch])
        elapsed = time.perf_counter() - start
        assert outbox.statistics().pending["chat"] == len(frames)
        return len(frames) / elapsed
    finally:
        shutil.rmtree(folder)


class TimingDestination:
    """Answers at once and records when each attempt started."""

    name = "chat"

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.delivered = trio.Event()

    async def deliver(self, signed: SignedAlarm, idempotency_key: str) -> str:
        self.started[idempotency_key] = time.perf_counter()
        self.delivered.set()
        return "ok"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def measure_latency(
    parent: Path, keyring: Keyring, frames: list[bytes]
) -> list[float]:
    """Return the seconds from enqueue to attempt start of each alarm."""
    folder = Path(tempfile.mkdtemp(prefix="outbox-", dir=parent))
    try:
        destination = TimingDestination()
        outbox = Outbox(
            folder, {"chat": destination}, decode=lambda f: open_alarm(f, keyring)
        )
        latencies = []
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run)
            for n, frame in enumerate(frames):
                destination.delivered = trio.Event()
                start = time.perf_counter()
                outbox.enqueue(f"key-{n}", "chat", frame)
                await destination.delivered.wait()
                latencies.append(destination.started[f"key-{n}"] - start)
            nursery.cancel_scope.cancel()
        return latencies
    finally:
        shutil.rmtree(folder)


async def measure_drain(parent: Path, keyring: Keyring, frames: list[bytes]) -> float:
    """Return deliveries per second of one destination emptying a full queue."""
    folder = Path(tempfile.mkdtemp(prefix="outbox-", dir=parent))
    try:
        outbox = Outbox(
            folder, {"chat": NullDestination()}, decode=lambda f: open_alarm(f, keyring)
        )
        outbox.enqueue_many((f"key-{n}", "chat", f) for n, f in enumerate(frames))
        async with trio.open_nursery() as nursery:
            start = time.perf_counter()
            await nursery.start(outbox.run)
            while outbox.statistics().pending["chat"]:
                await trio.sleep(0.001)
            elapsed = time.perf_counter() - start
            nursery.cancel_scope.cancel()
        return len(frames) / elapsed
    finally:
        shutil.rmtree(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alarms", type=int, default=2000, help="alarms per run")
    parser.add_argument(
        "--batch", type=int, default=100, help="alarms per enqueue_many call"
    )
    parser.add_argument("--runs", type=int, default=5, help="runs per mode")
    parser.add_argument(
        "--dir", type=Path, default=None, help="parent folder of the outboxes"
    )
    args = parser.parse_args()

    parent = args.dir or Path(tempfile.gettempdir())
    keyring, frames = make_frames(args.alarms)
    print(f"{args.alarms} alarms per run, {args.runs} runs, outboxes under {parent}")
    for label, batch in (("enqueue", 1), (f"enqueue_many({args.batch})", args.batch)):
        rates = [measure(parent, keyring, frames, batch) for _ in range(args.runs)]
        print(f"{label:>20}: median {statistics.median(rates):9.0f} alarms/s")

    sample = frames[: min(500, len(frames))]
    latencies = trio.run(measure_latency, parent, keyring, sample)
    print(
        f"{'added latency':>20}: p50 {percentile(latencies, 0.5) * 1000:.2f} ms, "
        f"p99 {percentile(latencies, 0.99) * 1000:.2f} ms over {len(sample)} alarms"
    )
    drains = [
        trio.run(measure_drain, parent, keyring, frames) for _ in range(args.runs)
    ]
    print(f"{'drain':>20}: median {statistics.median(drains):9.0f} deliveries/s")


if __name__ == "__main__":
    main()
