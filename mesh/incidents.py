"""Incidents raised from membership changes, and who reports each of them.

When a member that was active is declared dead, every surviving member opens the
same incident, ``member-down/<name>@<incarnation>``, and ranks the active members
with :func:`~mesh.election.rank_members`. The member ranked k reports after k
hand-off delays unless a signed ``reported`` record for that incident and status
has reached it by then: rank 0 reports at once, rank 1 steps in only when rank 0
stayed silent (it may have died too), and so on. The same ranking, computed
again over the members active at that time, picks the reporter of ``resolved``
when the member comes back or leaves.

A resolved alarm is sent only for an incident whose firing alarm was reported,
so a member that flaps back within the hand-off delay pages nobody.

Only transitions this agent observes open incidents: a member first learned of
as already dead (from a push-pull with an older member) opens none, so a new
agent never pages for an outage that was reported before it joined.
"""

from __future__ import annotations

import dataclasses
import enum

from .election import rank_members
from .membership import State
from .messages import Reported
from .swim import MemberEvent

__all__ = ["Decision", "Incident", "Report", "IncidentLog", "Incidents"]

FIRING = "firing"
RESOLVED = "resolved"


class Decision(enum.Enum):
    """What a member decided about one (incident, status) when its turn came."""

    REPORT_NOW = "report_now"
    WAIT_HANDOFF = "wait_handoff"
    ALREADY_REPORTED = "already_reported"
    FIRING_NOT_REPORTED = "firing_not_reported"


@dataclasses.dataclass(slots=True)
class Incident:
    id: str
    # Name of the member that went down.
    subject: str
    # Members active when the incident opened, the subject excluded.
    observers: tuple[str, ...]
    # Monotonic times the incident opened and ended.
    started: float
    ended: float | None = None
    # Pending sends: status to (monotonic time this member's turn comes, rank).
    due: dict[str, tuple[float, int]] = dataclasses.field(default_factory=dict)
    # Whether the subject left gracefully after being declared dead.
    left: bool = False

    @property
    def status(self) -> str:
        return FIRING if self.ended is None else RESOLVED


@dataclasses.dataclass(frozen=True, slots=True)
class Report:
    """An alarm this member must send now."""

    incident: str
    status: str
    subject: str
    observers: tuple[str, ...]
    started: float
    ended: float | None
    # This member's rank for the incident; above 0 means it took over.
    rank: int
    left: bool


@dataclasses.dataclass(frozen=True, slots=True)
class IncidentLog:
    """One decision, for the runtime's logs and metrics."""

    incident: str
    status: str
    decision: Decision
    rank: int
    # Seconds until this member's turn, for WAIT_HANDOFF.
    delay: float = 0.0


def member_incident_id(name: str, incarnation: int) -> str:
    return f"member-down/{name}@{incarnation}"


class Incidents:
    """The incidents this member knows and the records of who reported them."""

    def __init__(self, *, name: str, handoff_delay: float, retention: float) -> None:
        self.name = name
        # Seconds each rank waits after the one above it.
        self.handoff_delay = handoff_delay
        # Seconds a resolved incident and its records are kept, so that late
        # records and push-pulls do not reopen it.
        self.retention = retention
        self._incidents: dict[str, Incident] = {}
        # Records by (incident, status); may arrive before the incident opens.
        self._records: dict[tuple[str, str], Reported] = {}
        # Monotonic time each record arrived, for expiry.
        self._record_times: dict[tuple[str, str], float] = {}
        self._log: list[IncidentLog] = []

    def drain_log(self) -> list[IncidentLog]:
        log, self._log = self._log, []
        return log

    def open_incidents(self) -> list[Incident]:
        return [i for i in self._incidents.values() if i.ended is None]

    def get(self, incident: str) -> Incident | None:
        return self._incidents.get(incident)

    def is_reported(self, incident: str, status: str) -> bool:
        return (incident, status) in self._records

    def records(self) -> tuple[Reported, ...]:
        return tuple(self._records.values())

    def next_deadline(self) -> float:
        times = [t for i in self._incidents.values() for t, _ in i.due.values()]
        return min(times, default=float("inf"))

    # ------------------------------------------------------------------

    def on_member_event(self, event: MemberEvent, active: list[str], now: float) -> None:
        """Open or resolve incidents for a membership change."""
        was_active = event.old is not None and event.old.is_active
        if event.new is State.DEAD and was_active:
            self._open(member_incident_id(event.name, event.incarnation), event, active, now)
        elif event.old is State.DEAD and event.new in (State.ALIVE, State.LEFT):
            for incident in self.open_incidents():
                if incident.subject == event.name:
                    incident.left = event.new is State.LEFT
                    self._resolve(incident, active, now)

    def _open(self, incident_id: str, event: MemberEvent, active: list[str], now: float) -> None:
        if incident_id in self._incidents:
            return
        observers = tuple(n for n in active if n != event.name)
        incident = Incident(incident_id, event.name, observers, started=now)
        self._incidents[incident_id] = incident
        self._schedule(incident, FIRING, observers, now)

    def _resolve(self, incident: Incident, active: list[str], now: float) -> None:
        incident.ended = now
        # A firing alarm not sent yet is now pointless.
        incident.due.pop(FIRING, None)
        eligible = [n for n in active if n != incident.subject]
        self._schedule(incident, RESOLVED, eligible, now)

    def _schedule(self, incident: Incident, status: str, eligible, now: float) -> None:
        ranking = rank_members(incident.id, eligible)
        if self.name not in ranking:
            return
        rank = ranking.index(self.name)
        delay = rank * self.handoff_delay
        incident.due[status] = (now + delay, rank)
        if rank:
            self._log.append(
                IncidentLog(incident.id, status, Decision.WAIT_HANDOFF, rank, delay)
            )

    def on_record(self, record: Reported, now: float) -> bool:
        """Store a verified record; return whether it was new."""
        key = (record.incident, record.status)
        if key in self._records:
            return False
        self._records[key] = record
        self._record_times[key] = now
        return True

    def due_reports(self, now: float) -> list[Report]:
        """Return the alarms whose turn has come and that nobody has reported."""
        reports = []
        for incident in list(self._incidents.values()):
            for status, (due, rank) in list(incident.due.items()):
                if due > now:
                    continue
                del incident.due[status]
                decision = self._decide(incident, status)
                self._log.append(IncidentLog(incident.id, status, decision, rank))
                if decision is Decision.REPORT_NOW:
                    reports.append(
                        Report(
                            incident.id,
                            status,
                            incident.subject,
                            incident.observers,
                            incident.started,
                            incident.ended,
                            rank,
                            incident.left,
                        )
                    )
        return reports

    def _decide(self, incident: Incident, status: str) -> Decision:
        if self.is_reported(incident.id, status):
            return Decision.ALREADY_REPORTED
        if status == RESOLVED and not self.is_reported(incident.id, FIRING):
            return Decision.FIRING_NOT_REPORTED
        return Decision.REPORT_NOW

    def expire(self, now: float) -> None:
        """Forget resolved incidents and records older than the retention."""
        horizon = now - self.retention
        for incident_id, incident in list(self._incidents.items()):
            if incident.ended is not None and incident.ended < horizon and not incident.due:
                del self._incidents[incident_id]
        for key, seen in list(self._record_times.items()):
            if seen < horizon and key[0] not in self._incidents:
                del self._records[key]
                del self._record_times[key]
