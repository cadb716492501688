"""A child process that runs the outbox, for the kill -9 test.

    python tests/outbox_child.py DIR KEY_FILE URL COUNT

It seals COUNT alarms (the same ones on every start), enqueues them in small
batches while the outbox delivers to a webhook at URL, and exits 0 once every
alarm is delivered or dead. Keys already delivered are refused by enqueue, so a
restarted child picks up where the killed one stopped.
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import trio

from mesh.alarm import Alarm, Severity, Status, open_alarm, seal_alarm
from mesh.keys import Keyring, load_signing_key
from sinks import Secret, WebhookConfig, WebhookSink
from sinks.dispatch import SinkDestination
from sinks.outbox import Outbox, RetryPolicy

BATCH = 10
POLICY = RetryPolicy(initial_delay=0.05, max_delay=0.5, max_age=300, attempt_timeout=5)


async def main(folder: Path, key_file: Path, url: str, count: int) -> None:
    key = load_signing_key(key_file)
    keyring = Keyring({"seoul": key.verify_key})
    frames = [
        seal_alarm(
            key,
            Alarm(
                incident=f"alarm-{n:04d}",
                status=Status.FIRING,
                severity=Severity.CRITICAL,
                subject=f"https://s{n}.example.com/",
                cluster="busan",
                reporter="seoul",
                observers=(),
                started_at=1_796_400_000.0,
                sent_at=1_796_400_000.0 + n,
                summary=f"alarm {n}",
            ),
        ).frame
        for n in range(count)
    ]
    async with httpx.AsyncClient() as client:
        sink = WebhookSink(
            WebhookConfig(name="hook", url=Secret(url)), signing_key=key, signer="seoul"
        )
        outbox = Outbox(
            folder,
            {"hook": SinkDestination(sink, client)},
            decode=lambda frame: open_alarm(frame, keyring),
            policy=POLICY,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run)
            for start in range(0, count, BATCH):
                items = [
                    (f"alarm-{n:04d}/firing/hook", "hook", frames[n])
                    for n in range(start, min(count, start + BATCH))
                ]
                outbox.enqueue_many(items)
                print(f"enqueued up to {start + len(items)}", flush=True)
                await trio.sleep(0.01)
            while outbox.statistics().pending["hook"]:
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    print("done", flush=True)


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
