"""What a simulation measures, and the report it prints.

* Per crash: time to the first survivor declaring the member dead, and to the
  last survivor that was up throughout doing so (full dissemination).
* False positives: members that never crashed but were declared dead, and
  suspicions of them, told apart from the expected ones across a partition.
* Traffic: messages and frame bytes per member per second, by message type.
* Convergence: time from a partition's heal until every member that is up
  holds every other one alive again.
* Alarms: firing and resolved alarms delivered by outboxes, and duplicates of
  one incident. The collector also keeps every report with its time and
  reporter, and the deliveries of each (incident, status), for callers that
  check the reporting protocol itself.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections import Counter
from typing import TYPE_CHECKING, Any

from ..incidents import Report
from ..membership import State
from ..swim import MemberEvent

if TYPE_CHECKING:
    from .engine import Simulation

__all__ = ["Collector", "CrashRecord", "SimulationReport", "format_report"]


@dataclasses.dataclass(slots=True)
class CrashRecord:
    member: str
    at: float
    mode: str
    # Members up at the crash that have not declared the member dead yet.
    waiting: set[str]
    observers: int
    first_suspect: float | None = None
    first_dead: float | None = None
    all_dead: float | None = None
    # The member came back before every survivor noticed.
    restarted: float | None = None


@dataclasses.dataclass(slots=True)
class HealRecord:
    at: float
    converged: float | None = None


@dataclasses.dataclass(slots=True)
class SimulationReport:
    members: int
    duration: float
    seed: int
    wall_seconds: float
    crashes: list[CrashRecord]
    heals: list[HealRecord]
    # Declarations that a member that was up is dead, by every observer, and
    # the distinct (member, incarnation) pairs they concern.
    false_dead_events: int
    false_dead_members: int
    # Suspicions of members that were up: events, distinct pairs, and the
    # events about members starved or slow at the time.
    suspicion_events: int
    suspected_members: int
    impaired_suspicion_events: int
    # Suspicions and deaths across an active or just-healed partition.
    partition_events: int
    refutations: int
    messages: Counter
    bytes: Counter
    dropped: int
    alarms: Counter
    duplicate_alarms: int
    max_health_score: int

    def per_member_second(self, total: float) -> float:
        return total / self.members / self.duration

    def to_dict(self) -> dict[str, Any]:
        data = {
            "members": self.members,
            "duration": self.duration,
            "seed": self.seed,
            "wall_seconds": round(self.wall_seconds, 3),
            "crashes": [
                {
                    "member": c.member,
                    "at": c.at,
                    "mode": c.mode,
                    "first_suspect": _round(c.first_suspect),
                    "first_dead": _round(c.first_dead),
                    "all_dead": _round(c.all_dead),
                    "restarted": c.restarted,
                }
                for c in self.crashes
            ],
            "heals": [{"at": h.at, "converged": _round(h.converged)} for h in self.heals],
            "false_dead_events": self.false_dead_events,
            "false_dead_members": self.false_dead_members,
            "suspicion_events": self.suspicion_events,
            "suspected_members": self.suspected_members,
            "impaired_suspicion_events": self.impaired_suspicion_events,
            "partition_events": self.partition_events,
            "refutations": self.refutations,
            "messages_per_member_second": round(
                self.per_member_second(sum(self.messages.values())), 3
            ),
            "bytes_per_member_second": round(self.per_member_second(sum(self.bytes.values())), 1),
            "messages_by_type": dict(self.messages),
            "bytes_by_type": dict(self.bytes),
            "dropped": self.dropped,
            "alarms": dict(self.alarms),
            "duplicate_alarms": self.duplicate_alarms,
            "max_health_score": self.max_health_score,
        }
        return data


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class Collector:
    """Gathers the measurements while a simulation runs."""

    def __init__(self, simulation: Simulation) -> None:
        self._sim = simulation
        self.crashes: list[CrashRecord] = []
        self._open_crashes: dict[str, CrashRecord] = {}
        self.heals: list[HealRecord] = []
        # Events within this time of a heal still count as partition effects.
        self.partition_grace_until = -1.0
        self.false_dead_events = 0
        self.false_dead_pairs: set[tuple[str, int]] = set()
        self.suspicion_events = 0
        self.suspected_pairs: set[tuple[str, int]] = set()
        self.impaired_suspicion_events = 0
        self.partition_events = 0
        self.messages: Counter = Counter()
        self.bytes: Counter = Counter()
        self.dropped = 0
        # Alarms delivered, by status.
        self.alarms: Counter = Counter()
        # Every report a member decided to send, as (time, reporter, report),
        # whether or not its alarm was delivered.
        self.reports: list[tuple[float, str, Report]] = []
        # Alarms delivered, by (incident, status). A grouped alarm counts under
        # the group's id, not under the incidents it groups.
        self.deliveries: Counter = Counter()
        # crash_reporter faults that struck, as (time, reporter, point).
        self.reporter_crashes: list[tuple[float, str, str]] = []
        # Convergence: for each member that is up, how many other members
        # that are up it holds alive; converged when every count is full.
        self._alive_views: dict[str, int] = {}
        self._deficit = 0

    # ------------------------------------------------------------------
    # Traffic and alarms
    # ------------------------------------------------------------------

    def on_send(self, kind: str, size: int, dropped: bool) -> None:
        self.messages[kind] += 1
        self.bytes[kind] += size
        if dropped:
            self.dropped += 1

    def on_report(self, now: float, reporter: str, report: Report) -> None:
        self.reports.append((now, reporter, report))

    def on_delivery(self, key: tuple[str, str]) -> None:
        """Count one alarm delivered, ``key`` being its (incident, status)."""
        self.alarms[key[1]] += 1
        self.deliveries[key] += 1

    def on_reporter_crash(self, reporter: str, point: str, now: float) -> None:
        self.reporter_crashes.append((now, reporter, point))

    # ------------------------------------------------------------------
    # Membership views
    # ------------------------------------------------------------------

    def on_member_event(self, observer: str, event: MemberEvent, now: float) -> None:
        sim = self._sim
        subject = sim.members.get(event.name)
        up = subject is not None and subject.up

        # Convergence bookkeeping: only views between members that are up.
        if up and observer in self._alive_views:
            was = event.old is State.ALIVE
            is_alive = event.new is State.ALIVE
            if was != is_alive:
                step = 1 if is_alive else -1
                self._alive_views[observer] += step
                self._deficit -= step
                if self._deficit == 0:
                    self._converged(now)

        if event.new is State.DEAD:
            record = self._open_crashes.get(event.name)
            if record is not None and observer in record.waiting:
                self._declared_dead(record, observer, now)
        if event.new is State.SUSPECT:
            record = self._open_crashes.get(event.name)
            if record is not None and record.first_suspect is None:
                record.first_suspect = now - record.at

        # False positives: a member that is up and that the observer held
        # active becomes suspect or dead. Learning of a member for the first
        # time as dead (a restarted observer's table) declares nothing.
        if not up or event.new not in (State.SUSPECT, State.DEAD):
            return
        if event.old is None or not event.old.is_active:
            return
        if sim.partitioned(observer, event.name) or now <= self.partition_grace_until:
            self.partition_events += 1
            return
        pair = (event.name, event.incarnation)
        if event.new is State.DEAD:
            self.false_dead_events += 1
            self.false_dead_pairs.add(pair)
        else:
            self.suspicion_events += 1
            self.suspected_pairs.add(pair)
            if sim.impaired(event.name, now):
                self.impaired_suspicion_events += 1

    def _declared_dead(self, record: CrashRecord, observer: str, now: float) -> None:
        record.waiting.discard(observer)
        if record.first_dead is None:
            record.first_dead = now - record.at
        if not record.waiting and record.all_dead is None:
            record.all_dead = now - record.at
            del self._open_crashes[record.member]

    def _converged(self, now: float) -> None:
        for heal in self.heals:
            if heal.converged is None:
                heal.converged = now - heal.at

    def recount_views(self) -> None:
        """Count every alive view from scratch: O(N²), once at the start."""
        sim = self._sim
        up = [name for name, m in sim.members.items() if m.up]
        self._alive_views = {name: self._alive_count(name, up) for name in up}
        self._update_deficit()

    def _alive_count(self, observer: str, names: list[str]) -> int:
        table = self._sim.members[observer].node.swim.members
        count = 0
        for name in names:
            if name != observer:
                member = table.get(name)
                if member is not None and member.state is State.ALIVE:
                    count += 1
        return count

    def _holds_alive(self, observer: str, name: str) -> bool:
        member = self._sim.members[observer].node.swim.members.get(name)
        return member is not None and member.state is State.ALIVE

    def _update_deficit(self) -> None:
        others = len(self._alive_views) - 1
        self._deficit = sum(others - c for c in self._alive_views.values())

    def _went_down(self, name: str) -> None:
        self._alive_views.pop(name, None)
        for observer, count in self._alive_views.items():
            if self._holds_alive(observer, name):
                self._alive_views[observer] = count - 1
        self._update_deficit()

    def _came_up(self, name: str) -> None:
        for observer, count in self._alive_views.items():
            if self._holds_alive(observer, name):
                self._alive_views[observer] = count + 1
        self._alive_views[name] = self._alive_count(name, list(self._alive_views))
        self._update_deficit()

    # ------------------------------------------------------------------
    # Faults
    # ------------------------------------------------------------------

    def on_crash(self, name: str, mode: str, now: float, *, record: bool = True) -> None:
        """Note that ``name`` went down; ``record`` is False for a graceful leave."""
        self._went_down(name)
        # The crashed member no longer observes: it stops blocking others.
        for record in list(self._open_crashes.values()):
            if name in record.waiting:
                record.waiting.discard(name)
                if not record.waiting and record.all_dead is None:
                    record.all_dead = now - record.at
                    del self._open_crashes[record.member]
        if not record:
            return
        sim = self._sim
        waiting = set()
        for observer, member in sim.members.items():
            if observer == name or not member.up:
                continue
            held = member.node.swim.members.get(name)
            if held is not None and held.state.is_active:
                waiting.add(observer)
        record = CrashRecord(name, now, mode, waiting, len(waiting))
        self.crashes.append(record)
        if waiting:
            self._open_crashes[name] = record

    def on_restart(self, name: str, now: float) -> None:
        self._came_up(name)
        record = self._open_crashes.pop(name, None)
        if record is not None:
            record.restarted = now

    def on_heal(self, now: float, grace: float) -> None:
        self.heals.append(HealRecord(now))
        self.partition_grace_until = now + grace
        if self._deficit == 0:
            self._converged(now)

    # ------------------------------------------------------------------

    def finish(self, wall_seconds: float) -> SimulationReport:
        sim = self._sim
        scenario = sim.scenario
        refutations = 0
        max_health = 0
        for member in sim.members.values():
            swim = member.node.swim
            refutations += swim.refutations + member.past_refutations
            max_health = max(max_health, member.max_health)
        duplicates = sum(n - 1 for n in self.deliveries.values() if n > 1)
        return SimulationReport(
            members=scenario.members,
            duration=scenario.duration,
            seed=scenario.seed,
            wall_seconds=wall_seconds,
            crashes=self.crashes,
            heals=self.heals,
            false_dead_events=self.false_dead_events,
            false_dead_members=len(self.false_dead_pairs),
            suspicion_events=self.suspicion_events,
            suspected_members=len(self.suspected_pairs),
            impaired_suspicion_events=self.impaired_suspicion_events,
            partition_events=self.partition_events,
            refutations=refutations,
            messages=self.messages,
            bytes=self.bytes,
            dropped=self.dropped,
            alarms=self.alarms,
            duplicate_alarms=duplicates,
            max_health_score=max_health,
        )


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def format_report(report: SimulationReport) -> str:
    """Return the report as aligned text."""
    lines = [
        f"simulated {report.members} members for {report.duration:g}s "
        f"(seed {report.seed}) in {report.wall_seconds:.1f}s of wall time",
        "",
        "crashes (time to first detection / to all survivors):",
    ]
    if not report.crashes:
        lines.append("  none")
    for c in report.crashes:
        note = f"  restarted at {c.restarted:g}s first" if c.restarted is not None else ""
        lines.append(
            f"  {c.member:<8} at {c.at:>7.1f}s ({c.mode}): suspect {_seconds(c.first_suspect)}"
            f", first dead {_seconds(c.first_dead)}, all {c.observers} survivors "
            f"{_seconds(c.all_dead)}{note}"
        )
    firsts = [c.first_dead for c in report.crashes if c.first_dead is not None]
    alls = [c.all_dead for c in report.crashes if c.all_dead is not None]
    if firsts:
        lines.append(
            f"  median first detection {statistics.median(firsts):.2f}s, "
            f"median full dissemination {statistics.median(alls):.2f}s"
            if alls
            else f"  median first detection {statistics.median(firsts):.2f}s"
        )
    lines += [
        "",
        "false positives (members that never crashed):",
        f"  declared dead: {report.false_dead_members} members, "
        f"{report.false_dead_events} declarations",
        f"  suspected: {report.suspected_members} times (member, incarnation), "
        f"{report.suspicion_events} suspicion events, "
        f"{report.impaired_suspicion_events} of them about starved or slow members",
        f"  refutations: {report.refutations}; highest local health score: "
        f"{report.max_health_score}",
        f"  across partitions (expected): {report.partition_events} events",
    ]
    if report.heals:
        lines += ["", "convergence after heal:"]
        for h in report.heals:
            lines.append(f"  heal at {h.at:.1f}s: converged after {_seconds(h.converged)}")
    total_messages = sum(report.messages.values())
    total_bytes = sum(report.bytes.values())
    lines += [
        "",
        "traffic per member per second (frames, signature included):",
        f"  {report.per_member_second(total_messages):.2f} messages, "
        f"{report.per_member_second(total_bytes):.0f} bytes; "
        f"{report.dropped} messages lost",
    ]
    for kind in sorted(report.messages):
        lines.append(
            f"  {kind:<8} {report.per_member_second(report.messages[kind]):8.3f} msg/s"
            f" {report.per_member_second(report.bytes[kind]):9.1f} B/s"
        )
    alarm_text = ", ".join(f"{k} {v}" for k, v in sorted(report.alarms.items())) or "none"
    lines += ["", f"alarms: {alarm_text}; duplicates: {report.duplicate_alarms}"]
    return "\n".join(lines) + "\n"
