"""One member's protocol state: SWIM membership, checks, incidents and reporting.

:class:`Node` is what a runtime drives. It wires membership changes and check
results into the incident table, checks the signatures of ``reported``
records before trusting them, and turns the decision to report into a signed
record that it gossips. Like the parts it composes, it does no I/O and reads
no clock: signing and verification are functions handed in, and every call
takes the time.
"""

from __future__ import annotations

import bisect
import dataclasses
import random
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from .election import rank_members
from .flapping import Damper, Edge
from .incidents import IncidentLog, Incidents, Kind, Report
from .membership import State
from .messages import Gossip, Message, Reported, Sync
from .observations import Observed, ObservationTable
from .swim import MemberEvent, Outbound, ProbeResult, Swim, SwimConfig

__all__ = ["Node", "NodeEvents", "CheckSpec"]

# Members beyond the reporter that receive its record directly, not only by
# gossip: the next ranks are the ones that would otherwise report again.
DIRECT_RECORD_FANOUT = 8
# The direct records are sent again after this share of a hand-off delay. A
# lost record means a second page, and a second send, well before the next
# rank's turn, makes losing both unlikely (the square of the loss rate).
RECORD_RESEND_SHARE = 0.25


class CheckSpec(Protocol):
    """The fields of a configured check that the core reads."""

    name: str
    # Seconds between two runs of the check.
    interval: float
    shared: bool
    quorum: float | int
    fail_for: float
    resolve_for: float
    min_alarm_interval: float


@dataclasses.dataclass(slots=True)
class NodeEvents:
    """Events since the runtime last drained them, for logs and metrics."""

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
        group_wait: float = 0.0,
        group_share: float = 1.0,
        checks: Iterable[CheckSpec] = (),
    ) -> None:
        self.name = name
        self.swim = Swim(
            name=name, address=address, config=swim_config, now=now, rng=rng, seeds=seeds
        )
        self.incidents = Incidents(
            name=name,
            handoff_delay=handoff_delay,
            retention=incident_retention,
            group_wait=group_wait,
            group_share=group_share,
        )
        self._sign = sign
        self._verify = verify
        # Checks this member runs, by name, and the flap damper of each.
        self._checks: Mapping[str, CheckSpec] = {c.name: c for c in checks}
        self._dampers = {
            c.name: Damper(c.fail_for, c.resolve_for, c.min_alarm_interval)
            for c in self._checks.values()
        }
        # Last one-line result of each check, for alarm summaries.
        self._check_summaries: dict[str, str] = {}
        # Every member's damped verdict on the shared checks.
        self.observations = ObservationTable()
        # Wall-clock minus monotonic time, from the last check result; turns
        # the wall-clock times of shared verdicts into this member's clock.
        self._wall_offset: float | None = None
        # Reports whose turn came, waiting for the runtime to send them.
        self._reports: list[Report] = []
        # Direct record sends to repeat: (monotonic time, outbound messages).
        self._record_resends: list[tuple[float, list[Outbound]]] = []
        self._member_events: list[MemberEvent] = []
        self._bad_records: list[str] = []

    # ------------------------------------------------------------------
    # Driving
    # ------------------------------------------------------------------

    def join(self, now: float) -> list[Outbound]:
        return [self._with_state(o) for o in self.swim.join(now, self.incidents.records())]

    def leave(self, now: float) -> list[Outbound]:
        return self.swim.leave(now)

    def handle(self, sender: str, message: Message, now: float) -> list[Outbound]:
        out = self.swim.handle(sender, message, now)
        self._after(now)
        return [self._with_state(o) for o in out]

    def tick(self, now: float) -> list[Outbound]:
        out = self.swim.tick(now)
        self.incidents.expire(now)
        self._after(now)
        out = [self._with_state(o) for o in out]
        while self._record_resends and self._record_resends[0][0] <= now:
            out += self._record_resends.pop(0)[1]
        return out

    def next_deadline(self) -> float:
        resend = self._record_resends[0][0] if self._record_resends else float("inf")
        return min(self.swim.next_deadline(), self.incidents.next_deadline(), resend)

    def delivery_failed(self, outbound: Outbound, now: float) -> list[Outbound]:
        """Tell the core that ``outbound`` was refused or answered with an error."""
        out = self.swim.delivery_failed(outbound, now)
        self._after(now)
        return [self._with_state(o) for o in out]

    def drain_reports(self) -> list[Report]:
        reports, self._reports = self._reports, []
        return reports

    def drain_events(self) -> NodeEvents:
        members, self._member_events = self._member_events, []
        bad, self._bad_records = self._bad_records, []
        return NodeEvents(
            members, self.incidents.drain_log(), self.swim.drain_probe_results(), bad
        )

    # ------------------------------------------------------------------
    # Reporting
    # ------------------------------------------------------------------

    def confirm_report(self, report: Report, reported_at: float, now: float) -> list[Outbound]:
        """Record that this member sent ``report`` and tell the next ranks.

        Call it once the alarm is durably queued for delivery; ``reported_at``
        is the wall clock for the record, ``now`` the monotonic time. The
        signed record is gossiped to everyone and also sent directly to the
        members most likely to report next, twice (see RECORD_RESEND_SHARE),
        so the hand-off need not wait for gossip. A grouped report yields one
        record per incident it stands for.
        """
        records = []
        for incident in (report.incident, *report.members):
            unsigned = Reported(incident, report.status, self.name, reported_at)
            signature = self._sign(unsigned.signed_bytes())
            record = dataclasses.replace(unsigned, signature=signature)
            self.incidents.on_record(record, 0.0)
            self.swim.broadcast(record)
            records.append(record)

        # Dead members are included: this member's view may be wrong about
        # one, and a member that thinks it is first must hear of the record.
        others = [
            m.name
            for m in self.swim.members.values()
            if m.name != self.name and m.state is not State.LEFT
        ]
        targets = rank_members(report.incident, others)[:DIRECT_RECORD_FANOUT]
        direct = [
            Outbound(self.swim.members[n].address, n, Gossip(tuple(records)))
            for n in targets
        ]
        resend_at = now + RECORD_RESEND_SHARE * self.incidents.handoff_delay
        bisect.insort(self._record_resends, (resend_at, direct), key=lambda entry: entry[0])
        return direct

    def restore_records(self, records: Iterable[Reported], now: float) -> None:
        """Load records persisted before a restart, so nothing is reported twice."""
        for record in records:
            if self._verify(record.reporter, record.signed_bytes(), record.signature):
                self.incidents.on_record(record, now)

    # ------------------------------------------------------------------
    # Checks
    # ------------------------------------------------------------------

    def observe_check(self, name: str, ok: bool, summary: str, now: float, wall: float) -> None:
        """Feed one result of a configured check.

        Args:
            name: the check's configured name.
            ok: whether it passed.
            summary: one line on what was seen, used in alarm summaries.
            now: monotonic time.
            wall: wall-clock time, Unix seconds, stamped on shared verdicts.

        Raises:
            KeyError: ``name`` is not a configured check.
        """
        spec = self._checks[name]
        self._wall_offset = wall - now
        edge = self._dampers[name].observe(ok, now)
        if not ok or edge is not None or name not in self._check_summaries:
            self._check_summaries[name] = summary

        if spec.shared:
            self._publish_verdict(spec, edge, wall)
            self._judge_shared(spec, now)
        elif edge is Edge.STARTED_FAILING:
            prefix = f"check/{self.name}/{name}@"
            incident_id = self._unresolved_reported(prefix) or f"{prefix}{wall:.0f}"
            self.incidents.open(incident_id, Kind.CHECK, name, [self.name], now, detail=summary)
        elif edge is Edge.STOPPED_FAILING:
            incident = self.incidents.find_open(Kind.CHECK, name)
            if incident is not None:
                self.incidents.resolve(incident, [self.name], now, detail=summary)
        self._reports.extend(self.incidents.due_reports(now))

    def _publish_verdict(self, spec: CheckSpec, edge: Edge | None, wall: float) -> None:
        # A member counts as running a shared check from its first result on,
        # so the first verdict is published even while it passes.
        known = self.observations.get(spec.name, self.name)
        if known is not None and edge is None:
            return
        failing = self._dampers[spec.name].is_failing
        observed = self.observations.publish(spec.name, self.name, failing, wall)
        self.swim.broadcast(observed)

    def _monotonic(self, wall: float | None, now: float) -> float:
        if wall is None or self._wall_offset is None:
            return now
        return wall - self._wall_offset

    def _judge_shared(self, spec: CheckSpec, now: float) -> None:
        """Open or resolve the quorum incident and egress incidents of a check.

        Members reach a verdict at slightly different moments, as verdicts
        arrive by gossip. Their turns therefore count from moments in the
        verdicts themselves (when the quorum formed or broke, when a member
        started failing), which are the same for every member, and not from
        when each member noticed.
        """
        active = self.swim.active_members()
        verdict = self.observations.verdict(spec.name, active, spec.quorum)
        summary = self._check_summaries.get(spec.name, "")

        # Reporters are ranked over every member that runs the check, because
        # that set is stable. The failing set grows while verdicts arrive, so
        # two members ranking it could both come out first.
        runners = sorted(verdict.failing + verdict.passing)

        # The quorum incident. It waits two check intervals like the egress
        # incident below, because right after start the members that have
        # published are few, and one failing member can look like a quorum.
        incident = self.incidents.find_open(Kind.SHARED_CHECK, spec.name)
        if verdict.reached and incident is None:
            detail = f"{len(verdict.failing)} of {len(runners)} members see it failing"
            if summary:
                detail += f"; {summary}"
            prefix = f"check/{spec.name}@"
            incident_id = self._unresolved_reported(prefix) or (
                f"{prefix}{verdict.started:.0f}"
            )
            self.incidents.open(
                incident_id,
                Kind.SHARED_CHECK,
                spec.name,
                runners,
                now,
                observers=verdict.failing,
                detail=detail,
                hold=2 * spec.interval,
                start=self._monotonic(verdict.started, now),
            )
        elif verdict.reached and incident is not None:
            # Verdicts that arrived since may move the moment the quorum
            # formed, and with it the id every member will agree on.
            prefix = f"check/{spec.name}@"
            canonical = f"{prefix}{verdict.started:.0f}"
            if self._unresolved_reported(prefix) is None:
                start = self._monotonic(verdict.started, now) + 2 * spec.interval
                self.incidents.rekey(incident, canonical, runners, start)
        elif not verdict.reached and incident is not None:
            start = self._monotonic(verdict.ended, now)
            self.incidents.resolve(incident, runners, now, start=start)

        # Egress: a member failing a check that a quorum sees healthy cannot
        # reach its targets; the members that can reach them report it. The
        # members run the check at different moments, so the first failing
        # verdict of a real outage looks like egress until the others arrive:
        # the incident waits two check intervals, and resolves unreported if
        # the quorum fails meanwhile.
        healthy_quorum = len(verdict.passing) >= verdict.required and not verdict.reached
        for member in verdict.failing:
            subject = f"{member}/{spec.name}"
            if healthy_quorum and self.incidents.find_open(Kind.EGRESS, subject) is None:
                since = self.observations.get(spec.name, member).since
                incident_id = f"egress/{member}/{spec.name}@{since:.0f}"
                detail = (
                    f"{member} fails check {spec.name} while "
                    f"{len(verdict.passing)} members see it healthy"
                )
                self.incidents.open(
                    incident_id,
                    Kind.EGRESS,
                    subject,
                    [r for r in runners if r != member],
                    now,
                    observers=verdict.passing,
                    detail=detail,
                    hold=2 * spec.interval,
                    # The condition is true from when the member failed or a
                    # healthy quorum formed, whichever came last.
                    start=self._monotonic(max(since, verdict.ended or since), now),
                )
        for incident in self.incidents.open_incidents():
            if incident.kind is not Kind.EGRESS:
                continue
            member, _, check = incident.subject.partition("/")
            if check == spec.name and (member not in verdict.failing or not healthy_quorum):
                observed = self.observations.get(spec.name, member)
                recovered = observed.since if observed and not observed.failing else None
                start = self._monotonic(recovered, now)
                eligible = [r for r in runners if r != member] or active
                self.incidents.resolve(incident, eligible, now, start=start)

    def _unresolved_reported(self, prefix: str) -> str | None:
        """Return a reported, unresolved incident id starting with ``prefix``.

        After a restart a check starts again from passing, and fails again
        while the outage goes on. Taking over the incident that was reported
        before the restart keeps the same outage from paging twice.
        """
        firing = {r.incident for r in self.incidents.records() if r.status == "firing"}
        resolved = {r.incident for r in self.incidents.records() if r.status == "resolved"}
        candidates = sorted(i for i in firing - resolved if i.startswith(prefix))
        return candidates[-1] if candidates else None

    # ------------------------------------------------------------------
    # Internals
    # ------------------------------------------------------------------

    def _after(self, now: float) -> None:
        shared_changed = False
        for item in self.swim.drain_records():
            if isinstance(item, Observed):
                if item.member != self.name and self.observations.merge(item):
                    self.swim.broadcast(item)
                    shared_changed = True
                continue
            if not self._verify(item.reporter, item.signed_bytes(), item.signature):
                self._bad_records.append(item.reporter)
                continue
            if self.incidents.on_record(item, now):
                self.swim.broadcast(item)

        for name, incarnation, since in self.swim.drain_dated_back():
            self.incidents.date_back(name, incarnation, since)

        events = self.swim.drain_events()
        if events:
            # Sorting the members costs O(N log N): only pay it on a change.
            active = self.swim.active_members()
            known = self.swim.known_members()
            for event in events:
                self.incidents.on_member_event(event, active, now, known)
            self._member_events.extend(events)

        # Membership changes move quorums too: a dead runner no longer counts.
        if shared_changed or events:
            for spec in self._checks.values():
                if spec.shared:
                    self._judge_shared(spec, now)
        # due_reports walks every incident; skip it while none is due.
        if self.incidents.next_deadline() <= now:
            self._reports.extend(self.incidents.due_reports(now))

    def _with_state(self, outbound: Outbound) -> Outbound:
        """Add records and shared verdicts to a push-pull sync.

        A member that joins or rejoins then has the records of what was
        already reported and every member's verdicts.
        """
        message = outbound.message
        if not isinstance(message, Sync):
            return outbound
        records = message.records or self.incidents.records()
        piggyback = message.piggyback + tuple(self.observations.all())
        message = dataclasses.replace(message, records=records, piggyback=piggyback)
        return dataclasses.replace(outbound, message=message)
