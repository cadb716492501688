"""One member's protocol state: SWIM membership plus incidents and reporting.

:class:`Node` is what a runtime drives. It wires membership changes into the
incident table, checks the signatures of ``reported`` records before trusting
them, and turns the decision to report into a signed record that it gossips.
Like the parts it composes, it does no I/O and reads no clock: signing and
verification are functions handed in, and every call takes the time.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterable

from .election import rank_members
from .incidents import IncidentLog, Incidents, Report
from .messages import Gossip, Message, Reported, Sync
from .swim import MemberEvent, Outbound, ProbeResult, Swim, SwimConfig

__all__ = ["Node", "NodeEvents"]

# Members beyond the reporter that receive its record directly, not only by
# gossip: the next ranks are the ones that would otherwise report again.
DIRECT_RECORD_FANOUT = 8


@dataclasses.dataclass(slots=True)
class NodeEvents:
    """What happened since the runtime last asked, for logs and metrics."""

    members: list[MemberEvent]
    incidents: list[IncidentLog]
    probes: list[ProbeResult]
    # Senders of reported records whose signature did not verify.
    bad_records: list[str]


class Node:
    def __init__(
        self,
        *,
        name: str,
        address: str,
        swim_config: SwimConfig,
        handoff_delay: float,
        sign: Callable[[bytes], bytes],
        verify: Callable[[str, bytes, bytes], bool],
        now: float,
        seeds: Iterable[str] = (),
        rng: random.Random | None = None,
        incident_retention: float = 3600.0,
    ) -> None:
        self.name = name
        self.swim = Swim(
            name=name, address=address, config=swim_config, now=now, rng=rng, seeds=seeds
        )
        self.incidents = Incidents(
            name=name, handoff_delay=handoff_delay, retention=incident_retention
        )
        self._sign = sign
        self._verify = verify
        # Reports whose turn came, waiting for the runtime to send them.
        self._reports: list[Report] = []
        self._member_events: list[MemberEvent] = []
        self._bad_records: list[str] = []

    # ------------------------------------------------------------------

    def join(self, now: float) -> list[Outbound]:
        return self.swim.join(now, self.incidents.records())

    def leave(self, now: float) -> list[Outbound]:
        return self.swim.leave(now)

    def handle(self, sender: str, message: Message, now: float) -> list[Outbound]:
        out = self.swim.handle(sender, message, now)
        self._after(now)
        # A sync reply carries our records too, so that a member that joins or
        # rejoins knows what was already reported.
        return [self._with_records(o) for o in out]

    def tick(self, now: float) -> list[Outbound]:
        out = self.swim.tick(now)
        self.incidents.expire(now)
        self._after(now)
        return [self._with_records(o) for o in out]

    def next_deadline(self) -> float:
        return min(self.swim.next_deadline(), self.incidents.next_deadline())

    def drain_reports(self) -> list[Report]:
        reports, self._reports = self._reports, []
        return reports

    def drain_events(self) -> NodeEvents:
        members, self._member_events = self._member_events, []
        bad, self._bad_records = self._bad_records, []
        return NodeEvents(
            members, self.incidents.drain_log(), self.swim.drain_probe_results(), bad
        )

    def confirm_report(self, report: Report, reported_at: float) -> list[Outbound]:
        """Record that this member sent ``report`` and tell the next ranks.

        Call it once the alarm is durably queued for delivery. The signed record
        is gossiped to everyone and also sent directly to the members most
        likely to report next, so the hand-off need not wait for gossip.
        """
        unsigned = Reported(report.incident, report.status, self.name, reported_at)
        signature = self._sign(unsigned.signed_bytes())
        record = dataclasses.replace(unsigned, signature=signature)
        self.incidents.on_record(record, 0.0)
        self.swim.broadcast(record)
        others = [n for n in self.swim.active_members() if n != self.name]
        targets = rank_members(report.incident, others)[:DIRECT_RECORD_FANOUT]
        return [
            Outbound(self.swim.members[n].address, n, Gossip((record,))) for n in targets
        ]

    # ------------------------------------------------------------------

    def _after(self, now: float) -> None:
        for record in self.swim.drain_records():
            if not self._verify(record.reporter, record.signed_bytes(), record.signature):
                self._bad_records.append(record.reporter)
                continue
            if self.incidents.on_record(record, now):
                self.swim.broadcast(record)

        events = self.swim.drain_events()
        active = self.swim.active_members()
        for event in events:
            self.incidents.on_member_event(event, active, now)
        self._member_events.extend(events)
        self._reports.extend(self.incidents.due_reports(now))

    def _with_records(self, outbound: Outbound) -> Outbound:
        message = outbound.message
        if not isinstance(message, Sync) or message.records:
            return outbound
        records = self.incidents.records()
        if not records:
            return outbound
        message = dataclasses.replace(message, records=records)
        return dataclasses.replace(outbound, message=message)
