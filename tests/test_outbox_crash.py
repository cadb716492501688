"""kill -9 of a real process in the middle of deliveries loses no alarm.

A child process (tests/outbox_child.py) runs the outbox against a webhook
receiver on loopback and is killed with SIGKILL at random moments, during
enqueues and during deliveries, then restarted. In the end every alarm has
arrived or is a dead letter, and none has arrived more than twice per kill.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from mesh.keys import generate_key_files
from receivers import WebhookReceiver, serve_receiver

pytestmark = pytest.mark.slow

CHILD = Path(__file__).with_name("outbox_child.py")
ALARMS = 200
KILLS = 6


class SlowFlakyReceiver(WebhookReceiver):
    """Takes a few milliseconds per request and refuses every 9th with 503."""

    async def handle(self, request):
        await trio.sleep(0.005)
        if len(self.requests) % 9 == 0:
            return 503, [], b"try again"
        return await super().handle(request)


def start_child(tmp_path: Path, url: str) -> subprocess.Popen:
    command = [
        sys.executable,
        str(CHILD),
        str(tmp_path / "outbox"),
        str(tmp_path / "key"),
        url,
        str(ALARMS),
    ]
    log = open(tmp_path / "child.log", "ab")
    try:
        return subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ)
        )
    finally:
        log.close()


async def test_kill_9_during_deliveries_loses_nothing(tmp_path):
    generate_key_files(tmp_path / "key")
    receiver = SlowFlakyReceiver()
    rng = random.Random(5)
    async with serve_receiver(receiver) as base_url:
        url = f"{base_url}/alarms"
        kills = 0
        while kills < KILLS:
            child = start_child(tmp_path, url)
            await trio.sleep(rng.uniform(0.4, 1.2))
            if child.poll() is not None:
                break  # it finished before this kill
            child.send_signal(signal.SIGKILL)
            await trio.to_thread.run_sync(child.wait)
            kills += 1

        child = start_child(tmp_path, url)
        code = await trio.to_thread.run_sync(lambda: child.wait(120))
        assert code == 0, (tmp_path / "child.log").read_text()

    arrived = collections.Counter(
        r.headers["idempotency-key"] for r in receiver.requests if r.status == 200
    )
    dead = list((tmp_path / "outbox" / "dead").glob("*.dead"))
    expected = {f"alarm-{n:04d}/firing/hook" for n in range(ALARMS)}

    assert kills >= 3, "the child finished too fast for the kills to land mid-delivery"
    # None lost: every alarm arrived or is a dead letter (none is expected here).
    assert dead == []
    assert set(arrived) == expected
    # At most one message in flight per destination when a kill lands.
    duplicates = sum(count - 1 for count in arrived.values())
    assert max(arrived.values()) <= 2
    assert duplicates <= kills
    assert list((tmp_path / "outbox" / "pending").iterdir()) == []
