"""From a signed alarm to outbox entries: routing, fallbacks and repeats.

The runtime hands every alarm it reports to :meth:`Dispatcher.submit`, which
asks the :class:`~sinks.routing.Router` for the route and writes one outbox
entry per receiver of the route, plus one for the archive, in one durable
write. Each entry's idempotency key is ``<incident>/<status>/<receiver>``, one
per (incident, transition, receiver); the copy a fallback receiver gets is
keyed ``<incident>/<status>/fallback``, so a fallback of two failing receivers
still gets the alarm once.

Repeats: a firing alarm on a route with a repeat interval is sent again to the
route's receivers every interval, as long as the incident fires. The schedule
lives in memory, like the incidents it follows: after a restart the mesh's
state, and so the repeats, start afresh. A repeat is the same signed alarm
under the key ``<incident>/firing/repeat-<n>/<receiver>``; the archive keeps
the original only.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import trio

from mesh.alarm import SignedAlarm, Status

from .base import Sink
from .outbox import Envelope, Outbox
from .routing import RouteDecision, Router

# Only for annotations: the receivers load httpx when they are configured.
if TYPE_CHECKING:
    import httpx

__all__ = ["Dispatcher", "SinkDestination", "ARCHIVE"]

logger = logging.getLogger(__name__)

# Destination name of the archive in the outbox.
ARCHIVE = "archive"


@dataclasses.dataclass(slots=True)
class _Repeat:
    signed: SignedAlarm
    decision: RouteDecision
    # trio time of the next re-send.
    due: float
    # Re-sends so far.
    count: int = 0


class Dispatcher:
    """Routes alarms into the outbox and re-sends those that keep firing.

    Args:
        router: chooses each alarm's route.
        outbox: where entries are written; its destinations are the sinks of
            every route and, when ``archive`` is true, ``"archive"``.
        archive: whether every alarm also goes to the ``"archive"`` destination.
        is_open: tells whether an incident still fires; a repeat is dropped
            once it returns False, even if this agent never saw the resolution.
    """

    def __init__(
        self,
        router: Router,
        outbox: Outbox,
        *,
        archive: bool = True,
        is_open: Callable[[str], bool] = lambda incident: True,
    ) -> None:
        self.router = router
        self._outbox = outbox
        self._archive = archive
        self._is_open = is_open
        # Firing incidents with a repeat interval, by incident id; changed by
        # submit() and by run().
        self._repeats: dict[str, _Repeat] = {}
        # Set when a repeat is scheduled, to wake run(); replaced by run().
        self._wakeup = trio.Event()

    def decide(self, signed: SignedAlarm) -> RouteDecision:
        """Return the route ``signed`` takes, without sending it."""
        alarm = signed.alarm
        return self.router.decide(
            subject=alarm.subject, cluster=alarm.cluster, severity=alarm.severity
        )

    def submit(self, signed: SignedAlarm) -> RouteDecision:
        """Write the outbox entries of ``signed`` durably and return its route.

        Raises:
            OSError: the entries could not be written; none is queued.
        """
        alarm = signed.alarm
        decision = self.decide(signed)
        base = f"{alarm.incident}/{alarm.status.value}"
        envelopes = self._envelopes(signed, decision, base)
        if self._archive:
            envelopes.append(
                Envelope(
                    key=f"{base}/{ARCHIVE}", destination=ARCHIVE, frame=signed.frame
                )
            )
        self._outbox.enqueue_many(envelopes)

        if alarm.status is Status.RESOLVED:
            self._repeats.pop(alarm.incident, None)
        elif decision.route.repeat_interval > 0 and decision.receivers:
            due = trio.current_time() + decision.route.repeat_interval
            self._repeats[alarm.incident] = _Repeat(signed, decision, due)
            self._wakeup.set()
        return decision

    def _envelopes(
        self, signed: SignedAlarm, decision: RouteDecision, base: str
    ) -> list[Envelope]:
        route = decision.route
        return [
            Envelope(
                key=f"{base}/{receiver}",
                destination=receiver,
                frame=signed.frame,
                group=route.name,
                group_window=route.group_window,
                fallbacks=route.fallbacks,
                fallback_key=f"{base}/fallback",
                fallback_after=route.fallback_after,
            )
            for receiver in decision.receivers
        ]

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Re-send firing alarms at their routes' repeat intervals, until cancelled."""
        task_status.started()
        while True:
            self._wakeup = trio.Event()
            next_due = min((r.due for r in self._repeats.values()), default=None)
            if next_due is None:
                await self._wakeup.wait()
                continue
            with trio.move_on_at(next_due):
                await self._wakeup.wait()
            self._send_due(trio.current_time())

    def _send_due(self, now: float) -> None:
        for incident, repeat in list(self._repeats.items()):
            if repeat.due > now:
                continue
            if not self._is_open(incident):
                del self._repeats[incident]
                continue
            repeat.count += 1
            repeat.due = now + repeat.decision.route.repeat_interval
            alarm = repeat.signed.alarm
            base = f"{alarm.incident}/{alarm.status.value}/repeat-{repeat.count}"
            try:
                self._outbox.enqueue_many(
                    self._envelopes(repeat.signed, repeat.decision, base)
                )
            except OSError as exc:
                logger.error("cannot queue repeat: %s incident=%s", exc, incident)
                continue
            logger.info(
                "repeating firing alarm incident=%s repeat=%d route=%s",
                incident,
                repeat.count,
                repeat.decision.route.name,
            )


class SinkDestination:
    """A sink as an outbox destination, sharing the agent's HTTP client.

    Sinks that can put several alarms in one message (``send_group``) keep
    their ``max_group``; the others take one alarm per message.
    """

    def __init__(self, sink: Sink, client: httpx.AsyncClient) -> None:
        self.name = sink.name
        self._sink = sink
        self._client = client
        # Alarms per message, as the sink allows; 1 without send_group.
        self.max_group = (
            getattr(sink, "max_group", 1) if hasattr(sink, "send_group") else 1
        )

    async def deliver(self, signed: SignedAlarm, idempotency_key: str) -> str:
        return await self._sink.send(
            signed, client=self._client, idempotency_key=idempotency_key
        )

    async def deliver_group(
        self, group: Sequence[SignedAlarm], idempotency_key: str
    ) -> str:
        return await self._sink.send_group(  # type: ignore[attr-defined]
            group, client=self._client, idempotency_key=idempotency_key
        )
