"""``alarminati send-test``: one test alarm through the real delivery pipeline.

The test alarm is sealed with the agent's key, written to an outbox in a
temporary folder under the data folder, and delivered by the outbox to the one
sink, with the same rendering, retries and rate-limit handling as a real alarm.
The result is the receiver's answer, or the reason the alarm became a dead
letter. The agent's own outbox is not touched, so a running agent is not
disturbed.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import trio

from mesh.alarm import Alarm, Severity, Status, open_alarm, seal_alarm
from mesh.keys import Keyring, SigningKey
from mesh.tls import open_http_client

from .config import SinkConfig, open_sink
from .dispatch import SinkDestination
from .outbox import Outbox, OutboxObserver
from .retry import RetryPolicy

__all__ = ["SendTestResult", "send_test", "make_test_alarm"]


@dataclasses.dataclass(frozen=True, slots=True)
class SendTestResult:
    delivered: bool
    # The receiver's answer, such as "200 ok: message_id=7", or the dead
    # letter's reason and detail.
    answer: str
    attempts: int


def make_test_alarm(*, reporter: str, cluster: str, now: float) -> Alarm:
    """Return the alarm that ``send-test`` sends."""
    return Alarm(
        incident=f"send-test/{reporter}@{int(now)}",
        status=Status.FIRING,
        severity=Severity.INFO,
        subject="send-test",
        cluster=cluster,
        reporter=reporter,
        observers=(),
        started_at=now,
        sent_at=now,
        summary=f"Test alarm from alarminati send-test on {reporter}: "
        "if you read this, the channel works.",
    )


class _Watcher(OutboxObserver):
    def __init__(self, on_retry: Callable[[str, float], None]) -> None:
        self.on_retry = on_retry
        self.result: SendTestResult | None = None
        self.done = trio.Event()
        self.attempts = 0

    def retrying(self, destination: str, error: str, delay: float) -> None:
        self.attempts += 1
        self.on_retry(error, delay)

    def delivered(self, destination: str, attempts: int, seconds: float) -> None:
        self.attempts = attempts

    def answered(self, destination: str, key: str, response: str) -> None:
        self.result = SendTestResult(True, response, self.attempts)
        self.done.set()

    def dead_lettered(self, destination: str, reason: str) -> None:
        self.attempts += 1
        self.result = SendTestResult(False, reason, self.attempts)
        self.done.set()


async def send_test(
    config: SinkConfig,
    *,
    signing_key: SigningKey,
    signer: str,
    cluster: str,
    data_dir: Path,
    max_age: float = 120.0,
    on_retry: Callable[[str, float], None] = lambda error, delay: None,
    now: Callable[[], float] = time.time,
) -> SendTestResult:
    """Send one test alarm to the sink of ``config`` and return the outcome.

    Args:
        max_age: seconds after which the outbox gives up, as it would with a
            real alarm after its configured maximum age.
        on_retry: called with the error and the delay of each failed attempt.
    """
    signed = seal_alarm(
        signing_key, make_test_alarm(reporter=signer, cluster=cluster, now=now())
    )
    keyring = Keyring({signer: signing_key.verify_key})
    sink = open_sink(config, signing_key=signing_key, signer=signer)
    watcher = _Watcher(on_retry)
    policy = RetryPolicy(max_age=max_age, max_delay=min(60.0, max_age))
    data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="send-test-", dir=data_dir) as folder:
        async with open_http_client() as client:
            outbox = Outbox(
                Path(folder),
                {sink.name: SinkDestination(sink, client)},
                decode=lambda frame: open_alarm(frame, keyring),
                policy=policy,
                now=now,
                observer=watcher,
            )
            key = f"{signed.alarm.incident}/firing/{sink.name}"
            outbox.enqueue(key, sink.name, signed.frame)
            async with trio.open_nursery() as nursery:
                await nursery.start(outbox.run)
                await watcher.done.wait()
                nursery.cancel_scope.cancel()
        result = watcher.result
        assert result is not None
        if result.delivered:
            return result
        [letter] = outbox.dead_letters()
        return SendTestResult(
            False, f"{letter.reason}: {letter.detail}", letter.attempts
        )
