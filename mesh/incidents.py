"""Incidents, and who reports each of them.

Every member that sees the same facts opens the same incident under the same
id: ``member-down/<name>@<incarnation>`` when an active member is declared
dead, ``check/<check>@<start>`` when a quorum fails a shared check, and so on.
It ranks the eligible members with :func:`~mesh.election.rank_members`. The
member ranked k reports after k hand-off delays unless a signed ``reported``
record for that incident and status has reached it by then: rank 0 reports at
once, rank 1 steps in only when rank 0 stayed silent (it may have died too).
The same ranking, computed again over the members eligible then, picks the
reporter of ``resolved``.

A resolved alarm is sent only for an incident whose firing alarm was
reported, so a failure that ends within the hand-off delay pages nobody.

Member-down incidents wait ``group_wait`` before their first rank's turn, and
wait again as long as another member went down less than ``group_wait``
earlier (up to ``GROUP_MAX_WAITS`` times), because a partition's members are
declared dead over a few probe periods, not at once. If the members that went
down in such a chain are more than ``group_share`` of the mesh (most likely a
partition, or the observer's own network), they are reported as one grouped
alarm instead of a storm: one per side of a partition.

Only transitions this agent observes open member-down incidents: a member
first learned of as already dead (from a push-pull with an older member) opens
none, so a new agent never pages for an outage reported before it joined.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable

from .election import rank_members
from .membership import State
from .messages import Reported
from .swim import MemberEvent

__all__ = ["Decision", "Kind", "Incident", "Report", "IncidentLog", "Incidents"]

FIRING = "firing"
RESOLVED = "resolved"

# A member-down incident waits for others to group with it at most this many
# group_wait periods, so that a steady trickle of failures cannot hold it back.
GROUP_MAX_WAITS = 4


class Decision(enum.Enum):
    """A member's decision about one (incident, status) when its turn came."""

    REPORT_NOW = "report_now"
    WAIT_HANDOFF = "wait_handoff"
    ALREADY_REPORTED = "already_reported"
    FIRING_NOT_REPORTED = "firing_not_reported"
    GROUPED = "grouped"


class Kind(enum.Enum):
    MEMBER_DOWN = "member_down"
    # A local check of this agent's own cluster failed.
    CHECK = "check"
    # A quorum of the members running a shared check see it failing.
    SHARED_CHECK = "shared_check"
    # One member fails a shared check that a quorum sees healthy.
    EGRESS = "egress"
    # Several members went down inside one grouping window.
    GROUP = "group"


@dataclasses.dataclass(slots=True)
class Incident:
    id: str
    kind: Kind
    # The failed member or check, by name.
    subject: str
    # Members whose observations the incident rests on.
    observers: tuple[str, ...]
    # Monotonic times the incident opened and ended.
    started: float
    ended: float | None = None
    # Pending sends: status to (monotonic time this member's turn comes, rank).
    due: dict[str, tuple[float, int]] = dataclasses.field(default_factory=dict)
    # Monotonic time each status's turns count from (rank 0's turn).
    starts: dict[str, float] = dataclasses.field(default_factory=dict)
    # One line on what was seen, for the alarm's summary.
    detail: str = ""
    # Whether a member-down subject left gracefully after being declared dead.
    left: bool = False
    # Whether this member's lone report was postponed for a group; see
    # Incidents._yield_to_group.
    yielded: bool = False
    # For a group: the member-down incidents it stands for.
    members: tuple[str, ...] = ()
    # Statuses whose turn was spread out after this member's rank dropped.
    spread: set[str] = dataclasses.field(default_factory=set)

    @property
    def status(self) -> str:
        return FIRING if self.ended is None else RESOLVED


@dataclasses.dataclass(frozen=True, slots=True)
class Report:
    """An alarm this member must send now."""

    incident: str
    kind: Kind
    status: str
    subject: str
    observers: tuple[str, ...]
    started: float
    ended: float | None
    # This member's rank for the incident; above 0 means it took over.
    rank: int
    detail: str = ""
    left: bool = False
    # For a group: the incidents it stands for, each reported with it.
    members: tuple[str, ...] = ()


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


# Incident ids of grouped member-down alarms: members-down/<a>,<b>,...@<incarnation>.
GROUP_PREFIX = "members-down/"


def group_subjects(group_id: str) -> list[str]:
    """Return the member names a group's incident id lists."""
    names = group_id.removeprefix(GROUP_PREFIX).rpartition("@")[0]
    return names.split(",")


def group_observers(parts: Iterable[Incident], subjects: Iterable[str]) -> tuple[str, ...]:
    """Return the observers of a group's member incidents, its subjects excluded."""
    observers = {o for part in parts for o in part.observers}
    return tuple(sorted(observers - set(subjects)))


class Incidents:
    """The incidents this member knows and the records of who reported them."""

    def __init__(
        self,
        *,
        name: str,
        handoff_delay: float,
        retention: float,
        group_wait: float = 0.0,
        group_share: float = 1.0,
    ) -> None:
        self.name = name
        # Seconds each rank waits after the one above it.
        self.handoff_delay = handoff_delay
        # Seconds a resolved incident and its records are kept, so that late
        # records and push-pulls do not reopen it.
        self.retention = retention
        # Seconds a member-down incident waits for others to group with.
        self.group_wait = group_wait
        # Share of the mesh that must go down inside group_wait to group.
        self.group_share = group_share
        self._incidents: dict[str, Incident] = {}
        # Records by (incident, status); may arrive before the incident opens.
        self._records: dict[tuple[str, str], Reported] = {}
        # Monotonic time each record arrived, for expiry.
        self._record_times: dict[tuple[str, str], float] = {}
        # Active members at the last membership change, for group sizing.
        self._mesh_size = 1
        # Active members at the last membership change, this member included.
        self._active: list[str] = [name]
        # Members known and not left (dead ones included), this member included.
        self._known: list[str] = [name]
        self._log: list[IncidentLog] = []

    def drain_log(self) -> list[IncidentLog]:
        log, self._log = self._log, []
        return log

    def open_incidents(self) -> list[Incident]:
        return [i for i in self._incidents.values() if i.ended is None]

    def get(self, incident: str) -> Incident | None:
        return self._incidents.get(incident)

    def find_open(self, kind: Kind, subject: str) -> Incident | None:
        for incident in self._incidents.values():
            open_ = incident.ended is None
            if open_ and incident.kind is kind and incident.subject == subject:
                return incident
        return None

    def is_reported(self, incident: str, status: str) -> bool:
        return (incident, status) in self._records

    def records(self) -> tuple[Reported, ...]:
        return tuple(self._records.values())

    def next_deadline(self) -> float:
        times = [t for i in self._incidents.values() for t, _ in i.due.values()]
        return min(times, default=float("inf"))

    # ------------------------------------------------------------------
    # Opening and resolving
    # ------------------------------------------------------------------

    def open(
        self,
        incident_id: str,
        kind: Kind,
        subject: str,
        eligible: Iterable[str],
        now: float,
        *,
        observers: Iterable[str] | None = None,
        detail: str = "",
        hold: float = 0.0,
        start: float | None = None,
    ) -> Incident | None:
        """Open an incident unless it is known; schedule this member's turn.

        Args:
            eligible: members that may report it; the ranking runs over them.
            observers: members the incident rests on; defaults to ``eligible``.
            hold: extra seconds before the first rank's turn.
            start: monotonic time the turns count from, when every member can
                derive the same moment from shared facts; defaults to ``now``.
        """
        if incident_id in self._incidents:
            return None
        eligible = sorted(set(eligible))
        observers = tuple(sorted(set(observers))) if observers is not None else tuple(eligible)
        incident = Incident(incident_id, kind, subject, observers, now, detail=detail)
        self._incidents[incident_id] = incident
        self._schedule(incident, FIRING, eligible, (now if start is None else start) + hold)
        return incident

    def rekey(
        self, incident: Incident, incident_id: str, eligible: Iterable[str], start: float
    ) -> None:
        """Give an unreported incident the id that more facts now point to.

        Members derive a shared check's id from the verdicts they have. One
        that reached a quorum before every verdict arrived may have taken a
        different moment than the others, so until anyone reports the
        incident, its id follows the verdicts and its turns count from
        ``start`` again.
        """
        if incident.id == incident_id or incident_id in self._incidents:
            return
        if self.is_reported(incident.id, FIRING) or incident.ended is not None:
            return
        del self._incidents[incident.id]
        incident.id = incident_id
        self._incidents[incident_id] = incident
        incident.due.pop(FIRING, None)
        self._schedule(incident, FIRING, sorted(set(eligible)), start)

    def resolve(
        self,
        incident: Incident,
        eligible: Iterable[str],
        now: float,
        detail: str = "",
        start: float | None = None,
    ) -> None:
        """End ``incident`` and schedule this member's turn to report it."""
        if incident.ended is not None:
            return
        incident.ended = now
        if detail:
            incident.detail = detail
        # A firing alarm not sent yet is now pointless.
        incident.due.pop(FIRING, None)
        self._schedule(incident, RESOLVED, eligible, now if start is None else start)

    def _schedule(self, incident: Incident, status: str, eligible, start: float) -> None:
        ranking = rank_members(incident.id, eligible)
        if self.name not in ranking:
            return
        rank = ranking.index(self.name)
        incident.due[status] = (start + rank * self.handoff_delay, rank)
        incident.starts[status] = start
        if rank:
            delay = start + rank * self.handoff_delay - (incident.ended or incident.started)
            self._log.append(
                IncidentLog(incident.id, status, Decision.WAIT_HANDOFF, rank, delay)
            )

    def on_member_event(
        self,
        event: MemberEvent,
        active: list[str],
        now: float,
        known: list[str] | None = None,
    ) -> None:
        """Open or resolve member-down incidents for a membership change.

        Args:
            active: alive and suspect members, this member included.
            known: members not left, dead ones included; defaults to ``active``.
        """
        self._mesh_size = len(active)
        self._active = list(active)
        self._known = list(active if known is None else known)
        was_active = event.old is not None and event.old.is_active
        if event.new is State.DEAD and was_active:
            eligible = [n for n in active if n != event.name]
            incident_id = member_incident_id(event.name, event.incarnation)
            # Turns count from the death's moment as the mesh dates it, not
            # from when this member heard of it, so members agree on them.
            since = now if event.since is None else min(event.since, now)
            incident = self.open(
                incident_id,
                Kind.MEMBER_DOWN,
                event.name,
                eligible,
                now,
                hold=self.group_wait,
                start=since,
            )
            if incident is not None:
                incident.started = since
        elif event.old is State.DEAD and event.new is not State.DEAD:
            # Back at a higher incarnation: alive, left, or already suspected
            # again by a member that probed it before the news arrived.
            incident = self.find_open(Kind.MEMBER_DOWN, event.name)
            if incident is not None:
                eligible = [n for n in active if n != event.name]
                incident.left = event.new is State.LEFT
                group = self._reported_group_of(incident)
                if group is not None:
                    self._resolve_group_member(group, incident, now)
                    return
                # Every member ranks the same active set, even the members of
                # a healed partition's other side, which never had this
                # incident open: when one of them ranks first, the next rank
                # reports after its hand-off delay. Ranking only the observers
                # would be faster there, but observer sets differ slightly
                # between members, and two first ranks would both report.
                # The turns start after group_wait, while the members coming
                # back settle in every member's view.
                self.resolve(incident, eligible, now, start=now + self.group_wait)

    def date_back(self, name: str, incarnation: int, since: float) -> None:
        """Move a member-down incident earlier: another member held the death longer."""
        incident = self._incidents.get(member_incident_id(name, incarnation))
        if incident is None or incident.ended is not None or since >= incident.started:
            return
        shift = incident.started - since
        incident.started = since
        if FIRING in incident.starts:
            incident.starts[FIRING] -= shift
        if FIRING in incident.due:
            due, rank = incident.due[FIRING]
            incident.due[FIRING] = (due - shift, rank)

    def on_record(self, record: Reported, now: float) -> bool:
        """Store a verified record; return whether it was new."""
        key = (record.incident, record.status)
        if key in self._records:
            return False
        self._records[key] = record
        self._record_times[key] = now
        if record.status == FIRING and record.incident.startswith(GROUP_PREFIX):
            self._learn_group(record.incident, now)
        return True

    # ------------------------------------------------------------------
    # Resolving groups
    # ------------------------------------------------------------------

    def _learn_group(self, group_id: str, now: float) -> None:
        """Keep a group another member reported, to resolve it as one alarm."""
        if group_id in self._incidents:
            return
        subjects = group_subjects(group_id)
        parts = [
            i for i in self._incidents.values()
            if i.kind is Kind.MEMBER_DOWN and i.subject in subjects
        ]
        started = min((i.started for i in parts), default=now)
        self._incidents[group_id] = Incident(
            group_id, Kind.GROUP, ",".join(subjects), group_observers(parts, subjects), started
        )

    def _reported_group_of(self, incident: Incident) -> Incident | None:
        """Return the reported group that ``incident``'s subject was paged in.

        That is an open group naming the subject, or a resolved one that
        stood for this very incident.
        """
        for group in self._incidents.values():
            if (
                group.kind is Kind.GROUP
                and (group.ended is None or incident.id in group.members)
                and incident.subject in group.subject.split(",")
                and self.is_reported(group.id, FIRING)
                and self.is_reported(incident.id, FIRING)
            ):
                return group
        return None

    def _resolve_group_member(self, group: Incident, incident: Incident, now: float) -> None:
        """End a grouped member's incident; resolve the group once all are back.

        The page was one alarm for the whole group, so its resolution is one
        alarm too, sent when no member of the group is still down. Its reporter
        signs a resolved record for each member's incident as well, so members
        that never learned of the group do not resolve them one by one.
        """
        if incident.ended is None:
            incident.ended = now
        incident.due.pop(FIRING, None)
        if incident.id not in group.members:
            group.members = (*group.members, incident.id)
        subjects = group.subject.split(",")
        if any(self.find_open(Kind.MEMBER_DOWN, name) is not None for name in subjects):
            return
        # A member that learned of the group from its record may not have had
        # every part open; the parts' firing records name them all.
        prefixes = tuple(f"member-down/{name}@" for name in subjects)
        parts = {
            incident_id
            for incident_id, status in self._records
            if status == FIRING
            and incident_id.startswith(prefixes)
            and not self.is_reported(incident_id, RESOLVED)
        }
        group.members = tuple(sorted(parts | set(group.members)))
        eligible = [n for n in self._active if n not in subjects]
        detail = f"{len(subjects)} members are back: {', '.join(subjects)}"
        self.resolve(group, eligible, now, detail=detail, start=now + self.group_wait)

    # ------------------------------------------------------------------
    # Turns
    # ------------------------------------------------------------------

    def due_reports(self, now: float) -> list[Report]:
        """Return the alarms whose turn has come and that nobody has reported."""
        reports = []
        for incident in list(self._incidents.values()):
            for status, (due, rank) in list(incident.due.items()):
                if due > now or status not in incident.due:
                    continue
                del incident.due[status]
                if incident.kind in (Kind.MEMBER_DOWN, Kind.GROUP):
                    current = self._current_rank(incident)
                    if current is None:
                        continue
                    scheduled_rank = rank
                    rank, offset = current
                    due = incident.starts[status] + rank * self.handoff_delay + offset
                    if due > now:
                        incident.due[status] = (due, rank)
                        continue
                    if rank < scheduled_rank and status not in incident.spread:
                        # Members ranked ahead died since this turn was set, so
                        # every member whose rank dropped is due now at once.
                        # Half their tie-break offsets spreads them, and keeps
                        # them clear of the next rank's turn.
                        incident.spread.add(status)
                        incident.due[status] = (now + offset / 2, rank)
                        continue
                if incident.kind is Kind.MEMBER_DOWN and status == RESOLVED:
                    # The group's record may have arrived after the member came
                    # back: then the group resolves it, not a lone alarm.
                    group = self._reported_group_of(incident)
                    if group is not None:
                        self._resolve_group_member(group, incident, now)
                        continue
                decision = self._decide(incident, status)
                if decision is Decision.REPORT_NOW and self._groupable(incident, status):
                    if self._wait_for_group(incident, rank, now):
                        continue
                    if self._groups(incident):
                        group = self._group_turn(incident, rank, now)
                        if group is not None:
                            reports.append(group)
                        continue
                    if self._yield_to_group(incident, rank, now):
                        continue
                self._log.append(IncidentLog(incident.id, status, decision, rank))
                if decision is Decision.REPORT_NOW:
                    reports.append(self._report(incident, status, rank))
        return reports

    def _current_rank(self, incident: Incident) -> tuple[int, float] | None:
        """Rank this member for a member-down incident over the members active now.

        Returns the rank and a tie-break offset in seconds, or None when this
        member is not eligible.

        Views of who is active differ between members while members fail or
        come back (a partition healing is the extreme case). The rank taken
        when the incident opened may rest on a view that others did not share;
        the view when the turn comes has had time to converge. During a
        partition it has not: two members that each count a different member
        as dead can both come out at rank 2. The offset breaks that tie by
        each member's position in the ranking of every known member, dead ones
        included, which views agree on. It is zero when no member ranked
        ahead is dead, and less than one hand-off delay otherwise, so ranks
        keep their order.
        """
        return self._rank(incident.id, set(incident.subject.split(",")))

    def _rank(self, key: str, excluded: set[str]) -> tuple[int, float] | None:
        """Rank this member for ``key`` over the active members not ``excluded``."""
        eligible = [n for n in self._active if n not in excluded]
        ranking = rank_members(key, eligible)
        if self.name not in ranking:
            return None
        rank = ranking.index(self.name)
        known = [n for n in self._known if n not in excluded]
        if self.name not in known:
            return rank, 0.0
        position = rank_members(key, known).index(self.name)
        offset = (position - rank) / len(known) * self.handoff_delay
        return rank, max(0.0, offset)

    def _decide(self, incident: Incident, status: str) -> Decision:
        if self.is_reported(incident.id, status):
            return Decision.ALREADY_REPORTED
        if status == RESOLVED and not self.is_reported(incident.id, FIRING):
            return Decision.FIRING_NOT_REPORTED
        return Decision.REPORT_NOW

    def _report(self, incident: Incident, status: str, rank: int) -> Report:
        return Report(
            incident.id,
            incident.kind,
            status,
            incident.subject,
            incident.observers,
            incident.started,
            incident.ended,
            rank,
            incident.detail,
            incident.left,
            members=incident.members,
        )

    def _group_candidates(self, incident: Incident) -> list[Incident]:
        """Return the unreported member-down incidents chained to ``incident``.

        Incidents chain when each started at most group_wait after another.
        """
        pending = sorted(
            (
                other
                for other in self._incidents.values()
                if other.kind is Kind.MEMBER_DOWN
                and other.ended is None
                and not self.is_reported(other.id, FIRING)
            ),
            key=lambda other: other.started,
        )
        chain: list[Incident] = []
        for other in pending:
            if chain and other.started - chain[-1].started > self.group_wait:
                if incident in chain:
                    break
                chain = []
            chain.append(other)
        return chain if incident in chain else [incident]

    def _groupable(self, incident: Incident, status: str) -> bool:
        grouping = self.group_wait > 0
        return grouping and incident.kind is Kind.MEMBER_DOWN and status == FIRING

    def _group_start(self, incident: Incident) -> float:
        """Return when the group of ``incident`` is complete enough to decide."""
        latest = max(other.started for other in self._group_candidates(incident))
        limit = incident.started + GROUP_MAX_WAITS * self.group_wait
        return min(latest + self.group_wait, limit)

    def _wait_for_group(self, incident: Incident, rank: int, now: float) -> bool:
        """Postpone this turn while members keep going down; return whether it did.

        Once the group is complete, an incident that does not group waits for
        its own rank's turn, counted from then.
        """
        start = self._group_start(incident)
        if now < start:
            incident.due[FIRING] = (start, rank)
            return True
        if self._groups(incident):
            return False
        due = start + rank * self.handoff_delay
        if now < due:
            incident.due[FIRING] = (due, rank)
            return True
        return False

    def _yield_to_group(self, incident: Incident, rank: int, now: float) -> bool:
        """Postpone a lone report once while other members' deaths are unreported.

        Members learn of deaths at slightly different times, so another member
        may chain this incident into a group while this member has it alone.
        Both turns can come at once, and the subject is paged twice. Waiting
        half a hand-off delay more lets the group's records arrive first.
        Without other deaths pending, a lone death is reported without delay.
        """
        if incident.yielded:
            return False
        others = any(
            other is not incident
            and other.kind is Kind.MEMBER_DOWN
            and other.ended is None
            and not self.is_reported(other.id, FIRING)
            for other in self._incidents.values()
        )
        if not others:
            return False
        # Half a delay keeps this turn apart from the next rank's, which may
        # not have yielded, because its member has no other death pending.
        incident.yielded = True
        incident.due[FIRING] = (now + self.handoff_delay / 2, rank)
        return True

    def _group_turn(self, incident: Incident, rank: int, now: float) -> Report | None:
        """Report the group of ``incident`` if it is this member's turn.

        The group is ranked as one incident, so that the members reporting its
        parts do not each report the whole group. Members may see groups that
        differ by a member or two, the late deaths, so the ranking is keyed by
        the group's first death, which such groups share, rather than by the
        group's id. Members date a death alike (see Swim._date_back), so they
        agree on which came first.
        """
        members = self._group_candidates(incident)
        key = min(members, key=lambda m: (m.started, m.subject)).id
        current = self._rank(key, {m.subject for m in members})
        if current is None:
            return None
        group_rank, offset = current
        due = self._group_start(incident) + group_rank * self.handoff_delay + offset
        if now < due:
            incident.due[FIRING] = (due, rank)
            return None
        return self._group_report(incident, group_rank, now)

    def _group_id(self, members: list[Incident]) -> str:
        subjects = sorted(m.subject for m in members)
        first = min(members, key=lambda m: (m.started, m.id))
        return f"{GROUP_PREFIX}{','.join(subjects)}@{first.id.rpartition('@')[2]}"

    def _groups(self, incident: Incident) -> bool:
        down = len(self._group_candidates(incident))
        mesh = self._mesh_size + down
        return down >= 2 and down > self.group_share * mesh

    def _group_report(self, incident: Incident, rank: int, now: float) -> Report:
        """Fold every member-down incident of the window into one report.

        The grouped incidents leave the schedule; the reporter's records for
        each of them stop the other members from reporting them one by one.
        """
        members = sorted(self._group_candidates(incident), key=lambda i: i.subject)
        for member in members:
            member.due.pop(FIRING, None)
            self._log.append(IncidentLog(member.id, FIRING, Decision.GROUPED, rank))
        subjects = [m.subject for m in members]
        group = Incident(
            self._group_id(members),
            Kind.GROUP,
            ",".join(subjects),
            group_observers(members, subjects),
            min(m.started for m in members),
            detail=(
                f"{len(subjects)} of {self._mesh_size + len(subjects)} members went down "
                f"together: {', '.join(subjects)}"
            ),
            members=tuple(m.id for m in members),
        )
        # Kept so that the group resolves as one alarm; see _resolve_group_member.
        self._incidents.setdefault(group.id, group)
        return self._report(group, FIRING, rank)

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
