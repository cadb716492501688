"""The outbox's routing features: grouping windows, fallbacks, dead letters in
the archive, long receiver downtime, and the dispatcher's repeats.

Like tests/test_outbox.py, these run on trio's MockClock.
"""

from __future__ import annotations

import base64
import json
import random

import trio

from mesh.alarm import Alarm, Severity, SignedAlarm, Status, open_alarm, seal_alarm
from sinks.dispatch import Dispatcher
from sinks.errors import SinkPermanentError, SinkRetryableError
from sinks.outbox import Envelope, RetryPolicy
from sinks.routing import parse_routing
from conftest import BASE_TIME
from test_outbox import RecordingObserver, ScriptedDestination, run_for


class GroupDestination(ScriptedDestination):
    """Records each message: the idempotency key and the incidents it carries."""

    max_group = 10

    def __init__(self, name: str = "chat", **options) -> None:
        super().__init__(name, **options)
        self.messages: list[tuple[float, str, list[str]]] = []

    async def deliver(self, signed: SignedAlarm, idempotency_key: str) -> str:
        return await self.deliver_group([signed], idempotency_key)

    async def deliver_group(self, group, idempotency_key: str) -> str:
        self.messages.append(
            (trio.current_time(), idempotency_key, [s.alarm.incident for s in group])
        )
        return await super().deliver(group[0], idempotency_key)


class DownUntil(ScriptedDestination):
    """Refuses every attempt with 503 until virtual time ``until``."""

    def __init__(self, name: str, until: float) -> None:
        super().__init__(name)
        self.until = until

    async def deliver(self, signed: SignedAlarm, idempotency_key: str) -> str:
        if trio.current_time() < self.until:
            self.attempts.append((trio.current_time(), idempotency_key))
            raise SinkRetryableError("503 service unavailable")
        self.attempts.append((trio.current_time(), idempotency_key))
        self.delivered.append(idempotency_key)
        return "200 ok"


async def test_group_window_sends_alarms_of_one_route_in_one_message(
    make_outbox, make_frame, autojump_clock
):
    chat = GroupDestination()
    outbox = make_outbox([chat])

    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run)
        for n in range(3):
            outbox.enqueue_many(
                [
                    Envelope(
                        key=f"k{n}",
                        destination="chat",
                        frame=make_frame(n),
                        group="r",
                        group_window=30,
                    )
                ]
            )
            await trio.sleep(5)
        # Outside the window of the first: the next message.
        await trio.sleep(30)
        outbox.enqueue_many(
            [
                Envelope(
                    key="k9",
                    destination="chat",
                    frame=make_frame(9),
                    group="r",
                    group_window=30,
                )
            ]
        )
        await trio.sleep(100)
        nursery.cancel_scope.cancel()

    assert [(at, incidents) for at, _, incidents in chat.messages] == [
        (30.0, ["member-down/busan@0", "member-down/busan@1", "member-down/busan@2"]),
        (75.0, ["member-down/busan@9"]),
    ]
    assert chat.messages[0][1].startswith("group-")
    assert chat.messages[1][1] == "k9"
    assert outbox.statistics().delivered == 4


async def test_fallback_gets_alarms_once_primary_failed_long_enough(
    make_outbox, make_frame, autojump_clock
):
    primary = DownUntil("pay-telegram", until=1000)
    fallback = ScriptedDestination("ops-slack")
    observer = RecordingObserver()
    outbox = make_outbox([primary, fallback], observer=observer)

    def envelope(n: int) -> Envelope:
        return Envelope(
            key=f"i{n}/firing/pay-telegram",
            destination="pay-telegram",
            frame=make_frame(n),
            fallbacks=("ops-slack",),
            fallback_key=f"i{n}/firing/fallback",
            fallback_after=60,
        )

    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run)
        outbox.enqueue_many([envelope(1), envelope(2)])
        await trio.sleep(59)
        assert fallback.attempts == []
        await trio.sleep(2)
        # Handed over at 60 s, while the primary sleeps in its backoff.
        assert [key for _, key in fallback.attempts] == [
            "i1/firing/fallback",
            "i2/firing/fallback",
        ]
        assert fallback.attempts[0][0] == 60.0
        # A new alarm for the failing primary goes to the fallback at once.
        outbox.enqueue_many([envelope(3)])
        await trio.sleep(0.001)
        assert fallback.delivered[-1] == "i3/firing/fallback"
        await trio.sleep(2000)
        nursery.cancel_scope.cancel()

    # The primary still gets every alarm, in order, once it is back.
    assert primary.delivered == [f"i{n}/firing/pay-telegram" for n in (1, 2, 3)]
    assert fallback.delivered == [f"i{n}/firing/fallback" for n in (1, 2, 3)]
    assert outbox.statistics().handed_over == 3


async def test_permanent_error_hands_alarm_to_fallback_at_once(
    make_outbox, make_frame, autojump_clock
):
    primary = ScriptedDestination(
        "pay-telegram", failures={"k1": [SinkPermanentError("403")]}
    )
    fallback = ScriptedDestination("ops-slack")
    outbox = make_outbox([primary, fallback])
    outbox.enqueue_many(
        [
            Envelope(
                key="k1",
                destination="pay-telegram",
                frame=make_frame(1),
                fallbacks=("ops-slack",),
                fallback_after=3600,
            )
        ]
    )

    await run_for(outbox, 5)

    assert fallback.delivered == ["k1"]
    assert [letter.reason for letter in outbox.dead_letters()] == ["permanent_error"]


async def test_receiver_down_for_hours_gets_every_alarm_in_order(
    make_outbox, make_frame, autojump_clock
):
    # Down for 6 hours of virtual time, while alarms keep coming.
    chat = DownUntil("chat", until=6 * 3600)
    policy = RetryPolicy(initial_delay=1, max_delay=300, max_age=24 * 3600)
    outbox = make_outbox([chat], policy=policy, rng=random.Random(3))

    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run)
        for n in range(60):
            outbox.enqueue(f"k{n:02d}", "chat", make_frame(n))
            await trio.sleep(300)
        await trio.sleep(3 * 3600)
        nursery.cancel_scope.cancel()

    assert chat.delivered == [f"k{n:02d}" for n in range(60)]
    # Recovery is noticed within max_delay of the receiver coming back.
    first_success = min(at for at, _ in chat.attempts if at >= chat.until)
    assert first_success <= chat.until + policy.max_delay
    assert outbox.dead_letters() == []
    assert outbox.statistics().pending == {"chat": 0}


class MemoryArchive:
    """An archive in a dict. LocalArchive writes in worker threads, which the
    MockClock does not wait for."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    async def put(self, key: str, data: bytes) -> None:
        # The key rules of the archive: no empty or dot segments.
        assert all(s and not s.startswith(".") for s in key.split("/"))
        self.objects[key] = data


async def test_expired_dead_letter_is_archived_and_counted(
    tmp_path, make_outbox, make_frame, autojump_clock, keyring
):
    archive = MemoryArchive()
    chat = DownUntil("chat", until=10**9)
    policy = RetryPolicy(initial_delay=1, max_delay=10, max_age=120)
    outbox = make_outbox([chat], policy=policy, dead_letter_archive=archive)
    outbox.enqueue("member-down/busan@1/firing/chat", "chat", make_frame(1))

    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run)
        await trio.sleep(200)
        nursery.cancel_scope.cancel()

    statistics = outbox.statistics()
    assert statistics.dead_letters == {"expired": 1}
    [key] = archive.objects
    assert key.startswith("dead-letters/2026/12/04/16/20261204T16")
    assert key.endswith(f"_chat_expired_{outbox.dead_letters()[0].id}.json")
    record = json.loads(archive.objects[key])
    assert record["reason"] == "expired"
    assert record["key"] == "member-down/busan@1/firing/chat"
    assert "503 service unavailable" in record["last_error"]
    # The signed alarm travels with it, and still verifies.
    assert open_alarm(base64.b64decode(record["record"]), keyring).alarm.incident == (
        "member-down/busan@1"
    )

    # A restart does not upload it again: the marker says it is archived.
    again = make_outbox(
        [DownUntil("chat", until=0)], policy=policy, dead_letter_archive=archive
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(again.run)
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert list(archive.objects) == [key]


def alarm(key, incident: str, status: Status, subject: str, severity=Severity.CRITICAL):
    return seal_alarm(
        key,
        Alarm(
            incident=incident,
            status=status,
            severity=severity,
            subject=subject,
            cluster="busan",
            reporter="seoul",
            observers=(),
            started_at=BASE_TIME,
            sent_at=BASE_TIME,
            summary="s",
        ),
    )


ROUTES = {
    "default": {"receivers": ["ops"]},
    "pay": {
        "receivers": ["pay"],
        "repeat_interval": "1h",
        "fallback": ["ops"],
        "fallback_after": 60,
    },
}
PROJECTS = {"pay": {"domains": ["*.pay.example.com"], "route": "pay"}}


async def test_dispatcher_routes_and_keys_per_incident_transition_receiver(
    make_outbox, signing_key, autojump_clock
):
    ops, pay, archive = (
        ScriptedDestination("ops"),
        ScriptedDestination("pay"),
        ScriptedDestination("archive"),
    )
    outbox = make_outbox([ops, pay, archive])
    dispatcher = Dispatcher(parse_routing(ROUTES, PROJECTS, ["ops", "pay"]), outbox)

    dispatcher.submit(
        alarm(signing_key, "a@1", Status.FIRING, "https://x.pay.example.com/")
    )
    dispatcher.submit(alarm(signing_key, "b@1", Status.FIRING, "member/busan"))
    await run_for(outbox, 5)

    assert pay.delivered == ["a@1/firing/pay"]
    assert ops.delivered == ["b@1/firing/ops"]
    assert archive.delivered == ["a@1/firing/archive", "b@1/firing/archive"]


async def test_dispatcher_repeats_until_resolved(
    make_outbox, signing_key, autojump_clock
):
    ops, pay, archive = (
        ScriptedDestination("ops"),
        ScriptedDestination("pay"),
        ScriptedDestination("archive"),
    )
    outbox = make_outbox([ops, pay, archive])
    dispatcher = Dispatcher(parse_routing(ROUTES, PROJECTS, ["ops", "pay"]), outbox)
    subject = "https://x.pay.example.com/"

    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run)
        await nursery.start(dispatcher.run)
        dispatcher.submit(alarm(signing_key, "a@1", Status.FIRING, subject))
        await trio.sleep(2.5 * 3600)
        dispatcher.submit(alarm(signing_key, "a@1", Status.RESOLVED, subject))
        await trio.sleep(5 * 3600)
        nursery.cancel_scope.cancel()

    assert [(at, key) for at, key in pay.attempts] == [
        (0.0, "a@1/firing/pay"),
        (3600.0, "a@1/firing/repeat-1/pay"),
        (7200.0, "a@1/firing/repeat-2/pay"),
        (9000.0, "a@1/resolved/pay"),
    ]
    assert archive.delivered == ["a@1/firing/archive", "a@1/resolved/archive"]


async def test_dispatcher_drops_repeat_of_incident_closed_elsewhere(
    make_outbox, signing_key, autojump_clock
):
    pay = ScriptedDestination("pay")
    outbox = make_outbox(
        [ScriptedDestination("ops"), pay, ScriptedDestination("archive")]
    )
    dispatcher = Dispatcher(
        parse_routing(ROUTES, PROJECTS, ["ops", "pay"]), outbox, is_open=lambda i: False
    )

    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run)
        await nursery.start(dispatcher.run)
        dispatcher.submit(
            alarm(signing_key, "a@1", Status.FIRING, "https://x.pay.example.com/")
        )
        await trio.sleep(3 * 3600)
        nursery.cancel_scope.cancel()

    assert pay.delivered == ["a@1/firing/pay"]


async def test_dispatcher_severity_filter_archives_only(
    make_outbox, signing_key, autojump_clock
):
    routes = {"default": {"receivers": ["ops"], "severities": ["critical"]}}
    ops, archive = ScriptedDestination("ops"), ScriptedDestination("archive")
    outbox = make_outbox([ops, archive])
    dispatcher = Dispatcher(parse_routing(routes, None, ["ops"]), outbox)

    decision = dispatcher.submit(
        alarm(signing_key, "a@1", Status.FIRING, "x", Severity.INFO)
    )
    await run_for(outbox, 5)

    assert decision.receivers == ()
    assert ops.attempts == []
    assert archive.delivered == ["a@1/firing/archive"]
