"""The simulation engine: many :class:`~mesh.node.Node` instances in one trio run.

Every simulated member is the protocol core the real agent runs (the same
``Node``, ``Swim``, suspicion, awareness and incident code); only the transport
and the clock differ. Time is trio's: the run happens under
``trio.testing.MockClock(autojump_threshold=0)``, so ``trio.sleep_until`` jumps
straight to the next event and a simulated hour takes as long as its events
take to process.

One task owns a heap of events (message deliveries, member timers, faults)
keyed by time in steps of ``scenario.resolution`` seconds. It sleeps until the
earliest step and runs every event of that step in the order they were
scheduled. A single task rather than one per member keeps the cost per event
to a few microseconds, which is what lets 1,000 members run faster than real
time on one core. Every random draw comes from generators seeded from the
scenario's seed, so a run is reproducible.

The network model, per message: it is lost with probability ``loss`` or when a
partition separates the two members; otherwise it arrives after a delay drawn
from the latency distribution. A reply (an ack in an HTTP response) is a
message like any other. A crashed member drops what it receives ("silent", a
dead host) or makes the sender's transport report a refusal one delay later
("refuse", a dead process whose host still answers). A starved member handles
nothing until its episode ends and then handles its backlog in arrival order,
then its overdue timers (a process paused by the kernel or a long garbage
collection); a slow member handles every inbound message late by a fixed delay
while its timers run on time, as in the Lifeguard paper's experiments, so that
acks and nacks reach its protocol after its own timeouts.

A reporter sends an alarm as the agent does: it writes the alarm to its
outbox, sends the signed ``reported`` record, then the outbox delivers. The
three steps happen at the same simulated moment unless a ``crash_reporter``
fault strikes between two of them. A crashed member keeps its outbox and the
records it stored after its last report, as the agent keeps them in its data
directory. On restart it loads those records and its outbox delivers what it
contains.
"""

from __future__ import annotations

import heapq
import math
import random
import time
import zlib
from collections.abc import Callable

import msgpack
import trio
import trio.testing

from ..incidents import FIRING, Report
from ..messages import Message, Reported, Sync, Update, _encode_item, encode_message
from ..membership import State
from ..node import Node
from ..swim import Outbound
from ..suspicion import suspicion_bounds
from ..wire import COMPRESS_MIN_BYTES, SIGNATURE_BYTES, VERSION
from .report import Collector, SimulationReport
from .scenario import FaultEvent, Scenario

__all__ = ["Simulation", "run_simulation"]

# Event kinds in the heap; the order of entries at one step is their sequence.
_DELIVER = 0
_DELIVER_LATE = 1
_REFUSED = 2
_TIMER = 3
_FAULT = 4

# Signature of simulated records: the real length, so frame sizes are right.
_SIGNATURE = bytes(SIGNATURE_BYTES)
# Seeds a restarted member contacts to rejoin.
REJOIN_SEEDS = 3
# Member tables whose sizes are remembered at most.
TABLE_SIZE_CACHE = 4096
PACKED_UPDATE_CACHE = 200_000
# Joins are spread over this many seconds when the scenario bootstraps by join.
JOIN_SPREAD = 5.0
# Suspicions within this many probe intervals after a starvation or slowdown
# ends are still counted as caused by it.
IMPAIRED_GRACE_PERIODS = 5


def _message_kind(message: Message) -> str:
    return type(message).__name__.lower()


# msgpack's encodings by value or length: below each limit, that many bytes
# of type and length (for an int, of type and value).
_STR_HEADERS = ((32, 1), (256, 2), (65536, 3))
_UINT_SIZES = ((128, 1), (256, 2), (65536, 3))
_BIN_HEADERS = ((256, 2), (65536, 3))
_ARRAY_HEADERS = ((16, 1), (65536, 3))


def _header_size(value: int, sizes: tuple[tuple[int, int], ...]) -> int:
    for limit, size in sizes:
        if value < limit:
            return size
    return 5


def _str_size(text: str) -> int:
    length = len(text.encode())
    return length + _header_size(length, _STR_HEADERS)


def _update_size(update: Update) -> int:
    """Return the msgpack size of an update, as messages.encode_message packs it."""
    size = 1 + 1 + _str_size(update.name) + _str_size(update.address) + 1
    size += _header_size(update.incarnation, _UINT_SIZES)
    age_ms = round(update.age * 1000)
    if age_ms > 0:
        size += _str_size(update.source) + _header_size(age_ms, _UINT_SIZES)
    elif update.source:
        size += _str_size(update.source)
    return size


class SimMember:
    """One simulated agent and the faults that affect it."""

    __slots__ = (
        "name",
        "node",
        "up",
        "mode",
        "generation",
        "paused",
        "backlog",
        "slow_ticks",
        "timer_tick",
        "impaired_until",
        "past_refutations",
        "max_health",
        "outbox",
        "stored_records",
    )

    def __init__(self, name: str, node: Node) -> None:
        self.name = name
        # The protocol core; replaced by a fresh one on restart.
        self.node = node
        # False after a crash or a leave, until a restart.
        self.up = True
        # What a crashed member does with messages: "silent" drops them,
        # "refuse" makes the sender's transport report a refusal.
        self.mode = "silent"
        # Raised on restart, so that timers of the previous life are ignored.
        self.generation = 0
        # True while starved: inbound messages wait in backlog, timers wait.
        self.paused = False
        self.backlog: list[tuple[str, Outbound]] = []
        # Steps every inbound message of a slow member is delayed by, or 0.
        self.slow_ticks = 0
        # Step of the member's earliest pending timer event, or None.
        self.timer_tick: int | None = None
        # Suspicions of the member until this time count as caused by a fault.
        self.impaired_until = -1.0
        # Refutations and the highest health score of earlier lives and this one.
        self.past_refutations = 0
        self.max_health = 0
        # Alarms written to the outbox and not delivered yet, as (incident,
        # status); kept across a crash like the agent's outbox directory.
        self.outbox: list[tuple[str, str]] = []
        # Reported records as of the member's last report, loaded again on
        # restart like the agent's record store.
        self.stored_records: tuple[Reported, ...] = ()


class Simulation:
    """A simulated mesh running one scenario."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self._resolution = scenario.resolution
        self._end_tick = self._to_tick(scenario.duration)
        self._heap: list[tuple] = []
        self._sequence = 0
        self._now_tick = 0
        self._network_rng = random.Random(f"{scenario.seed}/network")
        # Partition side of each member while a partition is on, else None.
        self._sides: dict[str, int] | None = None
        self._loss = scenario.loss
        self._latency = scenario.latency
        self._exact_bytes = scenario.wire_bytes == "exact"
        # Envelope bytes of a frame from each sender, payload excluded.
        self._envelope: dict[str, int] = {}
        # Payload bytes of each member table sent in a sync, by the table's id.
        self._table_sizes: dict[int, tuple[tuple, int]] = {}
        # Packed bytes of each distinct update seen in a table, by its fields.
        self._packed_updates: dict[tuple, bytes] = {}
        self.members: dict[str, SimMember] = {}
        # crash_reporter faults whose time has come, waiting for a firing
        # alarm, oldest first.
        self._armed_reporter_crashes: list[FaultEvent] = []
        self.collector = Collector(self)
        names = scenario.names
        _, max_timeout = suspicion_bounds(
            scenario.swim.suspicion_mult,
            scenario.swim.suspicion_max_timeout_mult,
            len(names),
            scenario.swim.probe_interval,
        )
        # After a heal, suspicions and deaths still in flight come from it.
        self._heal_grace = max_timeout
        self._impaired_grace = IMPAIRED_GRACE_PERIODS * scenario.swim.probe_interval
        for name in names:
            self._envelope[name] = (
                1 + len(msgpack.packb(VERSION)) + len(msgpack.packb(name)) + 9 + 1
            )

    # ------------------------------------------------------------------
    # Time and scheduling
    # ------------------------------------------------------------------

    def _to_tick(self, seconds: float) -> int:
        return math.ceil(seconds / self._resolution - 1e-9)

    def _push(self, tick: int, kind: int, a, b=None, c=None) -> None:
        self._sequence += 1
        heapq.heappush(self._heap, (tick, self._sequence, kind, a, b, c))

    def _fault_at(self, seconds: float, action: Callable[[float], None]) -> None:
        if seconds <= self.scenario.duration:
            self._push(self._to_tick(seconds), _FAULT, action)

    def _schedule_timer(self, member: SimMember) -> None:
        deadline = member.node.next_deadline()
        if deadline == math.inf:
            return
        tick = self._to_tick(deadline)
        if tick <= self._now_tick:
            tick = self._now_tick + 1
        if member.timer_tick is None or tick < member.timer_tick:
            member.timer_tick = tick
            self._push(tick, _TIMER, member.name, member.generation)

    # ------------------------------------------------------------------
    # Setup
    # ------------------------------------------------------------------

    def _new_node(self, name: str, seeds: list[str], now: float, life: int) -> Node:
        scenario = self.scenario
        return Node(
            name=name,
            address=name,
            swim_config=scenario.swim,
            handoff_delay=scenario.handoff_delay,
            group_wait=scenario.group_wait,
            group_share=scenario.group_share,
            sign=lambda data: _SIGNATURE,
            verify=lambda member, data, signature: True,
            now=now,
            seeds=seeds,
            rng=random.Random(f"{scenario.seed}/{name}/{life}"),
        )

    def _bootstrap(self) -> None:
        scenario = self.scenario
        names = scenario.names
        join = scenario.bootstrap == "join"
        table = [Update(n, n, 0, State.ALIVE) for n in names]
        for name in names:
            seeds = [names[0]] if join and name != names[0] else []
            member = SimMember(name, self._new_node(name, seeds, 0.0, 0))
            self.members[name] = member
            if not join:
                member.node.swim.assume_members(table, 0.0)
        rng = random.Random(f"{scenario.seed}/join")
        for name, member in self.members.items():
            if join:
                at = rng.uniform(0, JOIN_SPREAD)
                self._fault_at(at, lambda now, m=member: self._join(m, now))
            self._schedule_timer(member)
        for event in scenario.events:
            self._schedule_fault(event)

    def _join(self, member: SimMember, now: float) -> None:
        self._send(member, member.node.join(now))
        self._after(member, now)

    # ------------------------------------------------------------------
    # Network
    # ------------------------------------------------------------------

    def partitioned(self, a: str, b: str) -> bool:
        sides = self._sides
        return sides is not None and sides[a] != sides[b]

    def impaired(self, name: str, now: float) -> bool:
        member = self.members[name]
        return member.paused or member.slow_ticks > 0 or now < member.impaired_until

    def _payload_size(self, message: Message) -> int:
        payload = msgpack.packb([encode_message(message)], use_bin_type=True)
        body = len(payload)
        # The wire compresses a payload only when that makes it smaller.
        if self._exact_bytes and body >= COMPRESS_MIN_BYTES:
            body = min(body, len(zlib.compress(payload, 6)))
        return body

    def _sync_size(self, message: Sync) -> int:
        # A member's table only changes now and then, and encoding 1,000
        # members for every sync would dominate a large run: size each table
        # once, and add the rest of the message to it. This can differ from the
        # compressed size of the whole message by a few bytes.
        table = message.members
        cached = self._table_sizes.get(id(table))
        if cached is None or cached[0] is not table:
            if len(self._table_sizes) > TABLE_SIZE_CACHE:
                self._table_sizes.clear()
            cached = self._table_sizes[id(table)] = (table, self._table_size(table))
        rest = Sync((), message.records, message.reply, message.piggyback)
        return cached[1] + self._payload_size(rest)

    def _table_size(self, table: tuple[Update, ...]) -> int:
        # Bytes the table adds to a sync whose table is empty: the items, and
        # the array header beyond the empty array's single byte.
        extra_header = _header_size(len(table), _ARRAY_HEADERS) - 1
        if not self._exact_bytes:
            return extra_header + sum(_update_size(u) for u in table)
        # Members share most of their updates, so each distinct update is
        # packed once; a msgpack array is the concatenation of its items.
        packed = self._packed_updates
        if len(packed) > PACKED_UPDATE_CACHE:
            packed.clear()
        parts = []
        for update in table:
            key = (update.name, update.address, update.incarnation, update.state, update.source)
            item = packed.get(key)
            if item is None:
                item = packed[key] = msgpack.packb(_encode_item(update), use_bin_type=True)
            parts.append(item)
        body = b"".join(parts)
        size = len(body) + extra_header
        if size >= COMPRESS_MIN_BYTES:
            size = min(size, len(zlib.compress(body, 6)) + extra_header)
        return size

    def frame_size(self, sender: str, message: Message) -> int:
        """Return the bytes of the signed frame that would carry ``message``."""
        if isinstance(message, Sync):
            body = self._sync_size(message)
        else:
            body = self._payload_size(message)
        header = _header_size(body, _BIN_HEADERS)
        return SIGNATURE_BYTES + self._envelope[sender] + header + body

    def _send(self, sender: SimMember, outbound: list[Outbound], reply_to: str | None = None) -> None:
        collector = self.collector
        rng = self._network_rng
        for item in outbound:
            receiver = reply_to if item.reply else (item.target or item.address)
            message = item.message
            lost = (
                receiver not in self.members
                or self.partitioned(sender.name, receiver)
                or (self._loss > 0 and rng.random() < self._loss)
            )
            collector.on_send(_message_kind(message), self.frame_size(sender.name, message), lost)
            if lost:
                continue
            delay = max(1, self._to_tick(self._latency.sample(rng)))
            self._push(self._now_tick + delay, _DELIVER, sender.name, receiver, item)

    def _deliver(self, sender: str, receiver: str, item: Outbound, now: float, late: bool) -> None:
        member = self.members[receiver]
        if not member.up:
            if member.mode == "refuse":
                delay = max(1, self._to_tick(self._latency.sample(self._network_rng)))
                self._push(self._now_tick + delay, _REFUSED, sender, None, item)
            return
        if member.paused:
            member.backlog.append((sender, item))
            return
        if member.slow_ticks and not late:
            self._push(self._now_tick + member.slow_ticks, _DELIVER_LATE, sender, receiver, item)
            return
        self._handle(member, sender, item.message, now)

    # ------------------------------------------------------------------
    # Driving the protocol core
    # ------------------------------------------------------------------

    def _handle(self, member: SimMember, sender: str, message: Message, now: float) -> None:
        out = member.node.handle(sender, message, now)
        self._send(member, out, reply_to=sender)
        self._after(member, now)

    def _tick(self, member: SimMember, now: float) -> None:
        if member.node.next_deadline() <= now:
            self._send(member, member.node.tick(now))
            self._after(member, now)
        else:
            self._schedule_timer(member)

    def _after(self, member: SimMember, now: float) -> None:
        node = member.node
        events = node.drain_events()
        for event in events.members:
            self.collector.on_member_event(member.name, event, now)
        for report in node.drain_reports():
            if not self._send_report(member, report, now):
                # The crash lost the reports still queued in memory.
                return
        score = node.swim.awareness.score
        if score > member.max_health:
            member.max_health = score
        self._schedule_timer(member)

    def _send_report(self, member: SimMember, report: Report, now: float) -> bool:
        """Send ``report`` along the agent's send path; return False if it crashed."""
        node = member.node
        collector = self.collector
        collector.on_report(now, member.name, report)
        crash = None
        if self._armed_reporter_crashes and report.status == FIRING:
            crash = self._armed_reporter_crashes.pop(0)
        if crash is not None and crash.point == "before_write":
            self._crash_reporter(member, crash, now)
            return False
        key = (report.incident, report.status)
        member.outbox.append(key)
        if crash is not None and crash.point == "before_record":
            self._crash_reporter(member, crash, now)
            return False
        self._send(member, node.confirm_report(report, now, now))
        member.stored_records = node.incidents.records()
        if crash is not None and crash.point == "before_delivery":
            self._crash_reporter(member, crash, now)
            return False
        member.outbox.remove(key)
        collector.on_delivery(key)
        return True

    def _crash_reporter(self, member: SimMember, event: FaultEvent, now: float) -> None:
        self.collector.on_reporter_crash(member.name, event.point, now)
        self._crash((member.name,), event.mode, now)
        if event.duration:
            self._fault_at(now + event.duration, lambda at: self._restart((member.name,), at))

    # ------------------------------------------------------------------
    # Faults
    # ------------------------------------------------------------------

    def _schedule_fault(self, event: FaultEvent) -> None:
        match event.action:
            case "crash":
                self._fault_at(event.at, lambda now: self._crash(event.members, event.mode, now))
            case "restart":
                self._fault_at(event.at, lambda now: self._restart(event.members, now))
            case "leave":
                self._fault_at(event.at, lambda now: self._leave(event.members, now))
            case "partition":
                self._fault_at(event.at, lambda now: self._partition(event))
            case "heal":
                self._fault_at(event.at, self._heal)
            case "crash_reporter":
                arm = self._armed_reporter_crashes.append
                self._fault_at(event.at, lambda now: arm(event))
            case "starve":
                start = event.at
                while start <= self.scenario.duration:
                    self._fault_at(start, lambda now: self._pause(event.members, now))
                    end = start + event.duration
                    self._fault_at(end, lambda now: self._resume(event.members, now))
                    if not event.every:
                        break
                    start += event.every
            case "slow":
                ticks = max(1, self._to_tick(event.delay))
                self._fault_at(event.at, lambda now: self._set_slow(event.members, ticks, now))
                end = event.at + event.duration
                self._fault_at(end, lambda now: self._set_slow(event.members, 0, now))

    def _take_down(self, member: SimMember, mode: str) -> None:
        member.up = False
        member.mode = mode
        member.paused = False
        member.backlog.clear()
        member.slow_ticks = 0
        member.past_refutations += member.node.swim.refutations

    def _crash(self, names: tuple[str, ...], mode: str, now: float) -> None:
        for name in names:
            member = self.members[name]
            if member.up:
                self._take_down(member, mode)
                self.collector.on_crash(name, mode, now)

    def _leave(self, names: tuple[str, ...], now: float) -> None:
        # The agent leaves, then its process exits: later messages are refused.
        for name in names:
            member = self.members[name]
            if member.up:
                self._send(member, member.node.leave(now))
                self._after(member, now)
                self._take_down(member, "refuse")
                self.collector.on_crash(name, "refuse", now, record=False)

    def _restart(self, names: tuple[str, ...], now: float) -> None:
        rng = random.Random(f"{self.scenario.seed}/restart/{now}")
        for name in names:
            member = self.members[name]
            if member.up:
                continue
            others = [n for n, m in self.members.items() if m.up and n != name]
            seeds = rng.sample(others, min(REJOIN_SEEDS, len(others)))
            member.generation += 1
            member.node = self._new_node(name, seeds, now, member.generation)
            member.node.restore_records(member.stored_records, now)
            member.up = True
            member.timer_tick = None
            self.collector.on_restart(name, now)
            outbox, member.outbox = member.outbox, []
            for key in outbox:
                self.collector.on_delivery(key)
            self._join(member, now)

    def _partition(self, event: FaultEvent) -> None:
        sides: dict[str, int] = {}
        for index, group in enumerate((event.members, *event.groups)):
            for name in group:
                sides.setdefault(name, index)
        rest = len(event.groups) + 1
        self._sides = {name: sides.get(name, rest) for name in self.members}

    def _heal(self, now: float) -> None:
        self._sides = None
        self.collector.on_heal(now, self._heal_grace)

    def _pause(self, names: tuple[str, ...], now: float) -> None:
        for name in names:
            member = self.members[name]
            if member.up:
                member.paused = True

    def _resume(self, names: tuple[str, ...], now: float) -> None:
        for name in names:
            member = self.members[name]
            if not member.paused:
                continue
            member.paused = False
            member.impaired_until = now + self._impaired_grace
            backlog, member.backlog = member.backlog, []
            for sender, item in backlog:
                if member.up:
                    self._handle(member, sender, item.message, now)
            member.timer_tick = None
            self._schedule_timer(member)

    def _set_slow(self, names: tuple[str, ...], ticks: int, now: float) -> None:
        for name in names:
            member = self.members[name]
            member.slow_ticks = ticks
            if not ticks:
                member.impaired_until = now + self._impaired_grace

    # ------------------------------------------------------------------
    # The run
    # ------------------------------------------------------------------

    async def run(self) -> None:
        """Run the scenario to its end under the current trio clock."""
        self._bootstrap()
        self.collector.recount_views()
        heap = self._heap
        resolution = self._resolution
        members = self.members
        while heap and heap[0][0] <= self._end_tick:
            tick = heap[0][0]
            await trio.sleep_until(tick * resolution)
            now = trio.current_time()
            self._now_tick = tick
            while heap and heap[0][0] == tick:
                _, _, kind, a, b, c = heapq.heappop(heap)
                if kind == _TIMER:
                    member = members[a]
                    if b != member.generation or member.timer_tick != tick:
                        continue
                    member.timer_tick = None
                    if not member.up or member.paused:
                        continue
                    self._tick(member, now)
                elif kind == _DELIVER or kind == _DELIVER_LATE:
                    self._deliver(a, b, c, now, kind == _DELIVER_LATE)
                elif kind == _REFUSED:
                    member = members[a]
                    if member.up and not member.paused:
                        self._send(member, member.node.delivery_failed(c, now))
                        self._after(member, now)
                else:
                    a(now)
        await trio.sleep_until(self.scenario.duration)


def run_simulation(scenario: Scenario) -> SimulationReport:
    """Run ``scenario`` under trio's MockClock and return what it measured."""
    simulation = Simulation(scenario)
    started = time.perf_counter()
    trio.run(simulation.run, clock=trio.testing.MockClock(autojump_threshold=0))
    return simulation.collector.finish(time.perf_counter() - started)
