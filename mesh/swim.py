"""SWIM membership and failure detection, with Lifeguard, as a state machine.

The machine is fed inbound messages and the current monotonic time, and returns
the messages to send; :meth:`Swim.next_deadline` returns when it next needs
:meth:`Swim.tick`. The trio runtime drives it over HTTP, and the simulator
drives the very same code over an in-memory transport with a mock clock.

One protocol period, as in SWIM (Das, Gupta, Motivala, 2002) and memberlist:

1. Probe the next member of a shuffled round-robin list with a ping.
2. If no ack has come after the probe timeout, ask ``indirect_checks`` other
   members to ping it for us (ping-req). They relay its ack, or answer with a
   nack when the target stays silent, so that we learn that they, at least,
   hear us.
3. If no ack has come by the end of the period, or every indirect prober has
   nacked, mark the member suspect and gossip it. A suspect member refutes by
   raising its incarnation; if it does not within the suspicion timeout, we
   declare it dead and gossip that.

The Lifeguard refinements (Dadgar, Phillips, Currey, 2017):

* local health awareness (:mod:`mesh.awareness`): missed nacks, failed probes
  and refutations raise a score that stretches our own probe interval and
  timeout, so a starved member stops accusing healthy ones;
* dynamic suspicion (:mod:`mesh.suspicion`): the timeout starts long and
  shrinks as independent members confirm the suspicion;
* the buddy system: a ping to a suspect member carries the suspicion, so the
  member learns of it at once and can refute.

Updates travel piggybacked on every message, with a retransmit limit that grows
with log N. A gossip round sends queued updates to a few random members, and to
members declared dead recently so that a wrongly declared member hears of it. A
periodic push-pull sync (anti-entropy) exchanges whole tables with one member,
so that missed updates and healed partitions converge.

Reachability the runtime learns itself also counts: when a ping cannot even be
delivered (connection refused, an error answer), :meth:`Swim.delivery_failed`
moves the probe on to its indirect stage at once instead of waiting for the
probe timeout.
"""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any
from collections.abc import Iterable

from .awareness import Awareness
from .broadcasts import BroadcastQueue
from .membership import Member, Merge, State, merge_decision, refutation
from .messages import (
    Ack,
    Gossip,
    Message,
    Nack,
    Ping,
    PingReq,
    Reported,
    Sync,
    Update,
)
from .suspicion import Suspicion, expected_confirmations, suspicion_bounds

__all__ = [
    "SwimConfig",
    "Swim",
    "Outbound",
    "MemberEvent",
    "ProbeResult",
    "push_pull_interval",
]

# A death heard of as this many seconds older than held moves earlier; less is
# delivery delay, not a missed declaration.
DATE_BACK_MIN = 0.05

# Push-pull keeps its base interval up to this many members and then slows down
# with log2 N (memberlist's pushPullScaleThreshold), so that the bytes each
# member spends on whole tables stay bounded as the mesh grows.
PUSH_PULL_SCALE_THRESHOLD = 32

# States of members that are probed and count as part of the mesh; a set is
# faster to test than State.is_active on the hot paths.
_ACTIVE_STATES = frozenset({State.ALIVE, State.SUSPECT})

# An indirect prober nacks this fraction of the probe timeout after the ping-req
# arrived, so that its nack reaches the requester before the period ends.
NACK_FRACTION = 0.8


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SwimConfig:
    """Timing and fan-out of the failure detector. Durations are seconds."""

    # Time between probes. Lower detects faster and costs more messages.
    probe_interval: float
    # Wait for a direct ack before asking others to probe. Must exceed the round
    # trip time at its 99th percentile, or slow links look like failures.
    probe_timeout: float
    # Members asked to probe indirectly after a direct timeout. More of them
    # guards better against one lossy path and costs k more messages.
    indirect_checks: int
    # Minimum suspicion timeout = suspicion_mult × max(1, log10 N) ×
    # probe_interval. A higher multiplier gives a suspect member more time to
    # refute; it also sets the confirmations expected, suspicion_mult - 2.
    suspicion_mult: float
    # Retransmits per update = retransmit_mult × ⌈log10(N + 1)⌉.
    retransmit_mult: int
    # Time between gossip rounds, which send queued updates to gossip_nodes
    # random members; a round is skipped when there is nothing to send.
    gossip_interval: float
    gossip_nodes: int
    # Time between push-pull syncs of the whole table with one random member,
    # for meshes of up to 32 members; see push_pull_interval().
    push_pull_interval: float
    # Time between attempts to reach the seeds while alone, and to sync with
    # one dead member, so that a healed partition merges back.
    reconnect_interval: float
    # Updates piggybacked on one message at most.
    max_piggyback: int = 12
    # Maximum suspicion timeout = this × the minimum, used while no other
    # member has confirmed the suspicion (memberlist: 6). Higher tolerates a suspect
    # member that is slow to refute, and delays detection when no confirmation comes.
    suspicion_max_timeout_mult: float = 6
    # The local health score stretches probe_interval and probe_timeout by at
    # most this factor (memberlist: 8). Higher backs off a starved member more.
    awareness_max_multiplier: int = 8
    # Members declared dead within this time still receive gossip, so that a
    # member declared dead by mistake hears of it and refutes (memberlist LAN:
    # 30 s). Longer costs gossip messages to members that are really gone.
    gossip_to_the_dead_time: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.probe_timeout < self.probe_interval:
            raise ValueError(
                f"invalid probe_timeout {self.probe_timeout!r}, expected more than 0 "
                f"and less than probe_interval {self.probe_interval!r}"
            )
        if self.suspicion_max_timeout_mult < 1:
            raise ValueError(
                f"invalid suspicion_max_timeout_mult {self.suspicion_max_timeout_mult!r}, "
                "expected at least 1"
            )


def push_pull_interval(base: float, members: int) -> float:
    """Return the push-pull interval for a mesh of ``members``, in seconds.

    Up to 32 members it is ``base``; above, it is multiplied by
    ⌈log2 N - log2 32⌉ + 1 (2 up to 64 members, 3 up to 128, 6 at 1,000), as
    memberlist's ``pushPullScale`` does.
    """
    if members <= PUSH_PULL_SCALE_THRESHOLD:
        return base
    factor = math.ceil(math.log2(members) - math.log2(PUSH_PULL_SCALE_THRESHOLD)) + 1
    return base * factor


@dataclasses.dataclass(frozen=True, slots=True)
class Outbound:
    """A message to send.

    ``reply`` marks an answer to the message being handled, which the HTTP
    runtime returns in the response body instead of opening a new request.
    """

    address: str
    # Member name of the receiver, or None for a seed not known by name yet.
    target: str | None
    message: Message
    reply: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class MemberEvent:
    """A member's state changed in this agent's view."""

    name: str
    # None when the member was not known before.
    old: State | None
    new: State
    incarnation: int
    # True when this agent raised the change itself (its own probe or timeout)
    # rather than learning it from another member.
    local: bool
    # Monotonic time the new state began. A death is dated back by the age
    # its update carried, so members record about the same moment.
    since: float | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ProbeResult:
    """The outcome of one probe, for metrics."""

    target: str
    # "ack", "indirect_ack" or "failed".
    outcome: str
    # Seconds from ping to ack, for acked probes.
    rtt: float | None
    nacks: int


@dataclasses.dataclass(slots=True)
class _Probe:
    seq: int
    target: str
    # Monotonic time the ping went out.
    started: float
    # When to go indirect, and when the probe fails without an ack; both are
    # stretched by the local health score when the probe starts.
    timeout_at: float
    ends_at: float
    indirect_sent: bool = False
    # Indirect probers asked whose requests were delivered, and their nacks.
    expected_nacks: int = 0
    nacks: int = 0


@dataclasses.dataclass(slots=True)
class _Forward:
    """A ping sent on behalf of another member's ping-req."""

    requester: str
    requester_seq: int
    nack_at: float


class Swim:
    """Membership of one agent: its view of the others and its own incarnation.

    All methods take the current monotonic time and return the messages to send.
    Nothing here reads a clock, sleeps or does I/O.
    """

    def __init__(
        self,
        *,
        name: str,
        address: str,
        config: SwimConfig,
        now: float,
        rng: random.Random | None = None,
        seeds: Iterable[str] = (),
    ) -> None:
        self.name = name
        self.address = address
        self.config = config
        # This agent's incarnation; only this agent raises it, to refute.
        self.incarnation = 0
        # Every member known, this agent included, by name.
        self.members: dict[str, Member] = {
            name: Member(name, address, 0, State.ALIVE, now)
        }
        # Seed addresses to join through, and to retry while alone.
        self.seeds = [s for s in seeds if s != address]
        # Set once a graceful leave starts: no more probes or refutations.
        self.leaving = False
        # Lifeguard local health; its score stretches our probe timing.
        self.awareness = Awareness(config.awareness_max_multiplier)
        # Times this agent refuted a suspicion or death of itself.
        self.refutations = 0

        self._rng = rng or random.Random()
        self._queue = BroadcastQueue(config.retransmit_mult)
        # Alive and suspect members other than this agent, in any order, with
        # each name's index, so that random choices cost O(1) in large meshes.
        self._active: list[str] = []
        self._active_index: dict[str, int] = {}
        # Members declared dead (not left) within gossip_to_the_dead_time, with
        # the time each was declared dead; older ones are pruned by _gossip.
        self._recently_dead: dict[str, float] = {}
        # Deaths moved earlier by news from a member that held them longer.
        self._dated_back: list[tuple[str, int, float]] = []
        # When this member began to doubt each member it marked dead (its
        # suspicion, or the death itself). Deaths are dated back no earlier.
        self._doubted: dict[str, float] = {}
        # The time of the call being handled, for the ages of deaths sent.
        self._now = now
        # Sequence numbers of pings, ping-reqs and forwarded pings.
        self._seq = 0
        # Round-robin order of probe targets; reshuffled after each pass.
        self._probe_order: list[str] = []
        self._probe: _Probe | None = None
        # Forwarded pings by our own sequence number.
        self._forwards: dict[int, _Forward] = {}
        # Suspected member name to its suspicion timer.
        self._suspicions: dict[str, Suspicion] = {}
        # Suspects whose suspicion ends within a probe timeout and that got
        # their last ping; see _recheck_suspicions.
        self._rechecked: set[str] = set()
        # Member name to the time before which it gets no further correction
        # of a stale accusation, or no further news that we suspect it or hold
        # it dead.
        self._corrected: dict[str, float] = {}
        self._told: dict[str, float] = {}
        # Changes and probe outcomes waiting for the runtime to drain.
        self._events: list[MemberEvent] = []
        self._probe_results: list[ProbeResult] = []
        # Reported records received, waiting for the incident layer.
        self._records: list[Reported] = []
        # The whole table as updates, for push-pull, built once per change;
        # the update of each unchanged member is kept between builds.
        self._table: tuple[Update, ...] | None = None
        self._table_updates: dict[str, Update] = {}

        # Each timer starts at a random phase, as memberlist staggers them, so
        # that members started together do not all sync at the same moment.
        uniform = self._rng.uniform
        self._next_probe = now + uniform(0, config.probe_interval)
        self._next_gossip = now + uniform(0, config.gossip_interval)
        self._next_push_pull = now + uniform(0, config.push_pull_interval)
        self._next_reconnect = now + uniform(0, config.reconnect_interval)

    # ------------------------------------------------------------------
    # Views
    # ------------------------------------------------------------------

    def active_members(self) -> list[str]:
        """Names of alive and suspect members, this agent included, sorted."""
        names = list(self._active)
        if self.members[self.name].state.is_active:
            names.append(self.name)
        return sorted(names)

    def known_members(self) -> list[str]:
        """Names of members that have not left, dead ones and this agent included."""
        return [name for name, member in self.members.items() if member.state is not State.LEFT]

    def member_count(self) -> int:
        """Number of active members, this agent included: N in the formulas."""
        return len(self._active) + 1

    def drain_events(self) -> list[MemberEvent]:
        events, self._events = self._events, []
        return events

    def drain_probe_results(self) -> list[ProbeResult]:
        results, self._probe_results = self._probe_results, []
        return results

    def drain_records(self) -> list[Reported]:
        records, self._records = self._records, []
        return records

    def probe_timeout(self) -> float:
        """Return the current direct probe timeout in seconds, health included."""
        return self.awareness.scale(self.config.probe_timeout)

    def suspicion(self, name: str) -> Suspicion | None:
        """Return the suspicion timer of member ``name``, if it is suspect."""
        return self._suspicions.get(name)

    def statistics(self) -> dict[str, int]:
        """Return counts for debugging and metrics."""
        return {
            "members": len(self.members),
            "active": self.member_count(),
            "suspicions": len(self._suspicions),
            "queued_broadcasts": len(self._queue),
            "health_score": self.awareness.score,
            "refutations": self.refutations,
            "incarnation": self.incarnation,
        }

    def next_deadline(self) -> float:
        # A leaving member runs no timers: it only waits to be stopped.
        if self.leaving:
            return math.inf
        # Plain comparisons rather than min() over a list: the simulator asks
        # this after every message of every member.
        deadline = self._next_push_pull
        if self._next_reconnect < deadline:
            deadline = self._next_reconnect
        probe = self._probe
        if probe is None:
            due = self._next_probe
        elif probe.indirect_sent:
            due = probe.ends_at
        else:
            due = probe.timeout_at
        if due < deadline:
            deadline = due
        # Gossip rounds only matter while something is queued.
        if self._next_gossip < deadline and len(self._queue):
            deadline = self._next_gossip
        for forward in self._forwards.values():
            if forward.nack_at < deadline:
                deadline = forward.nack_at
        if self._suspicions:
            lead = self.probe_timeout()
            for name, suspicion in self._suspicions.items():
                due = suspicion.deadline
                if name not in self._rechecked:
                    due -= lead
                if due < deadline:
                    deadline = due
        return deadline

    # ------------------------------------------------------------------
    # Outgoing
    # ------------------------------------------------------------------

    def broadcast(self, item: Update | Reported) -> None:
        """Queue ``item`` for piggybacking and gossip."""
        self._queue.push(item)

    def _piggyback(self, receiver: str | None = None) -> tuple[Update | Reported, ...]:
        # A message to a member we do not hold alive is likely lost, so it
        # carries the queued updates without using up the few transmissions
        # each gets; otherwise, when many members fail at once, the news of
        # their deaths is spent on pings to the dead.
        member = self.members.get(receiver) if receiver is not None else None
        if member is not None and member.state is not State.ALIVE:
            items = self._queue.peek(self.config.max_piggyback)
        else:
            items = self._queue.take(self.config.max_piggyback, len(self.members))
        return tuple(self._aged(item) for item in items)

    def _aged(self, item: Any) -> Any:
        """Return ``item`` with the current age of a death it announces."""
        if not isinstance(item, Update) or item.state is not State.DEAD:
            return item
        member = self.members.get(item.name)
        if member is None or member.state is not State.DEAD or member.incarnation != item.incarnation:
            return item
        return dataclasses.replace(item, age=max(0.0, self._now - member.since))

    def _to(self, name: str, message: Message, *, reply: bool = False) -> Outbound:
        return Outbound(self.members[name].address, name, message, reply)

    def _self_update(self) -> Update:
        state = State.LEFT if self.leaving else State.ALIVE
        return Update(self.name, self.address, self.incarnation, state)

    def _full_state(self) -> tuple[Update, ...]:
        # A push-pull of 1,000 members would otherwise build 1,000 updates for
        # every sync; a change rebuilds the update of the changed member only.
        if self._table is None:
            cache = self._table_updates
            for name, m in self.members.items():
                if name not in cache:
                    cache[name] = Update(name, m.address, m.incarnation, m.state)
            self._table = tuple(cache.values())
        return self._table

    def _changed(self, name: str) -> None:
        self._table = None
        self._table_updates.pop(name, None)

    def sync_message(
        self, records: tuple[Reported, ...], *, reply: bool, receiver: str | None = None
    ) -> Sync:
        # The table is cached between changes, so its deaths carry no age. The
        # recent ones, whose moment still decides reporter turns, ride along
        # in the piggyback with their ages and are applied first.
        deaths = tuple(
            self._aged(Update(name, m.address, m.incarnation, State.DEAD))
            for name in self._recently_dead
            if (m := self.members[name]).state is State.DEAD
        )
        return Sync(self._full_state(), records, reply, self._piggyback(receiver) + deaths)

    def join(self, now: float, records: tuple[Reported, ...] = ()) -> list[Outbound]:
        """Return a push-pull sync to every seed; answers merge their tables.

        Our own alive update is queued too, so that members the seeds have not
        told about us yet learn of us from our first probes.
        """
        self.broadcast(self._self_update())
        return [
            Outbound(seed, None, self.sync_message(records, reply=True))
            for seed in self.seeds
        ]

    def assume_members(self, updates: Iterable[Update], now: float) -> None:
        """Start from a table the mesh already agrees on, without gossiping it.

        This is the state a join reaches once its updates have spread: no events
        and no broadcasts. The simulator uses it to start a large mesh without
        the warm-up traffic of everyone joining at once.
        """
        members = self.members
        for update in updates:
            name = update.name
            if name in members:
                continue
            members[name] = Member(name, update.address, update.incarnation, update.state, now)
            if update.state in _ACTIVE_STATES:
                self._active_index[name] = len(self._active)
                self._active.append(name)
        self._table = None
        self._probe_order = list(self._active)
        self._rng.shuffle(self._probe_order)

    def leave(self, now: float) -> list[Outbound]:
        """Start a graceful leave: tell every active member that we left.

        Members that receive it mark us ``left`` and raise no alarm. Our state is
        final for this incarnation, so a delayed probe cannot revive us.
        """
        self.leaving = True
        me = self.members[self.name]
        me.state, me.since = State.LEFT, now
        self._changed(self.name)
        update = self._self_update()
        self.broadcast(update)
        return [self._to(name, Gossip((update,))) for name in self._active]

    # ------------------------------------------------------------------
    # Random choices
    # ------------------------------------------------------------------

    def _set_active(self, name: str, active: bool) -> None:
        index = self._active_index.get(name)
        if active and index is None:
            self._active_index[name] = len(self._active)
            self._active.append(name)
        elif not active and index is not None:
            # Swap with the last name, so that removal is O(1).
            last = self._active.pop()
            del self._active_index[name]
            if last != name:
                self._active[index] = last
                self._active_index[last] = index

    def _sample(self, pool: list[str], count: int, exclude: str | None = None) -> list[str]:
        """Return up to ``count`` distinct random names of ``pool``, not ``exclude``."""
        size = len(pool)
        if size <= 2 * count + 1:
            names = [n for n in pool if n != exclude]
            self._rng.shuffle(names)
            return names[:count]
        chosen: list[str] = []
        while len(chosen) < count:
            name = pool[self._rng.randrange(size)]
            if name != exclude and name not in chosen:
                chosen.append(name)
        return chosen

    # ------------------------------------------------------------------
    # Inbound
    # ------------------------------------------------------------------

    def handle(self, sender: str, message: Message, now: float) -> list[Outbound]:
        """Apply an inbound message from member ``sender`` (already verified)."""
        self._now = now
        stale = self._apply_all(sender, message.piggyback, now)
        match message:
            case Ping():
                return self._on_ping(sender, message, now, correct=stale)
            case Ack():
                out = self._on_ack(sender, message, now)
            case PingReq():
                out = self._on_ping_req(sender, message, now)
            case Nack():
                out = self._on_nack(message, now)
            case Sync():
                out = self._on_sync(sender, message, now)
            case _:
                out = []
        if stale:
            out += self._correct(sender, now)
        accusation = self._accusation(sender, now)
        if accusation is not None:
            out.append(self._to(sender, Gossip((accusation,))))
        return out

    def _on_ping(self, sender: str, ping: Ping, now: float, *, correct: bool) -> list[Outbound]:
        # A ping for another name reached our address: the member it was meant
        # for is gone from here, so silence is the truthful answer.
        if ping.target != self.name or self.leaving:
            return []
        address = self.members[sender].address if sender in self.members else ""
        piggyback = self._piggyback()
        # The ping accused us of an incarnation we already refuted: the
        # prober missed the refutation, so the ack carries it again.
        if correct:
            piggyback = (self._self_update(), *piggyback)
        accusation = self._accusation(sender, now)
        if accusation is not None:
            piggyback = (accusation, *piggyback)
        return [Outbound(address, sender, Ack(ping.seq, piggyback), reply=True)]

    def _accusation(self, name: str, now: float) -> Update | None:
        # A member we hold suspect or dead just sent us something, so it runs:
        # tell it what we hold (the buddy system, outside probes), so that it
        # refutes, or corrects us if its refutation missed us. At most once
        # per probe interval per member.
        member = self.members.get(name)
        if member is None or member.state not in (State.SUSPECT, State.DEAD):
            return None
        if now < self._told.get(name, -math.inf):
            return None
        self._told[name] = now + self.config.probe_interval
        suspicion = self._suspicions.get(name)
        source = suspicion.source if suspicion is not None else ""
        return Update(name, member.address, member.incarnation, member.state, source)

    def _correct(self, sender: str, now: float) -> list[Outbound]:
        # Tell a member that still spreads an old accusation of us that we
        # refuted it, at most once per probe interval per member: the
        # refutation's own gossip missed it.
        if sender not in self.members or now < self._corrected.get(sender, -math.inf):
            return []
        self._corrected[sender] = now + self.config.probe_interval
        return [self._to(sender, Gossip((self._self_update(),)))]

    def _on_ack(self, sender: str, ack: Ack, now: float) -> list[Outbound]:
        # An ack for a ping we forwarded goes back to the requester.
        forward = self._forwards.pop(ack.seq, None)
        if forward is not None:
            if forward.requester not in self.members:
                return []
            relay = Ack(forward.requester_seq, self._piggyback())
            return [self._to(forward.requester, relay)]

        # Ignore acks of pings that already ended or were never ours.
        probe = self._probe
        if probe is None or probe.seq != ack.seq:
            return []

        # Any ack shows that we are healthy enough to probe (Lifeguard).
        self._probe = None
        self.awareness.apply_delta(-1)
        direct = sender == probe.target
        outcome = "ack" if direct else "indirect_ack"
        rtt = now - probe.started if direct else None
        self._probe_results.append(ProbeResult(probe.target, outcome, rtt, probe.nacks))
        return []

    def _on_nack(self, nack: Nack, now: float) -> list[Outbound]:
        probe = self._probe
        if probe is None or probe.seq != nack.seq:
            return []
        probe.nacks += 1
        # Every indirect prober reached us and none reached the target: the
        # evidence is complete, so waiting for the period's end adds nothing.
        if probe.indirect_sent and probe.nacks >= probe.expected_nacks:
            self._fail_probe(probe, now)
        return []

    def _on_ping_req(self, sender: str, req: PingReq, now: float) -> list[Outbound]:
        if self.leaving or sender not in self.members:
            return []
        self._seq += 1
        # Lifeguard: nack a little before the requester's own deadline, so the
        # nack arrives while it still counts.
        nack_at = now + NACK_FRACTION * self.config.probe_timeout
        self._forwards[self._seq] = _Forward(sender, req.seq, nack_at)
        ping = Ping(self._seq, req.target, self._piggyback(req.target))
        return [Outbound(req.target_address, req.target, ping)]

    def _on_sync(self, sender: str, sync: Sync, now: float) -> list[Outbound]:
        self._records.extend(sync.records)
        members = self.members
        for update in sync.members:
            # Skip what we agree on, which is nearly everything (memberlist).
            known = members.get(update.name)
            if (
                known is not None
                and known.incarnation == update.incarnation
                and known.state is update.state
                and update.name != self.name
            ):
                continue
            # As memberlist does, a remote "dead" only makes a member we hold
            # active suspect: the remote view may be stale, and the suspicion
            # gives the member a chance to refute.
            if (
                update.state is State.DEAD
                and update.name != self.name
                and known is not None
                and known.state.is_active
            ):
                update = dataclasses.replace(update, state=State.SUSPECT, source=sender)
            self._apply(sender, update, now, local=False)
        if not sync.reply:
            return []
        address = self.members[sender].address if sender in self.members else ""
        answer = self.sync_message((), reply=False)
        return [Outbound(address, sender, answer, reply=True)]

    def delivery_failed(self, outbound: Outbound, now: float) -> list[Outbound]:
        """Learn that ``outbound`` could not be delivered at all.

        The runtime calls this when a message was refused or answered with an
        error, not when it merely went unanswered. A failed ping of our probe
        goes indirect at once; a failed forwarded ping is nacked at once; an
        undeliverable ping-req expects no nack, so its silence does not count
        against our health.
        """
        message = outbound.message
        probe = self._probe
        if isinstance(message, Ping):
            if probe is not None and probe.seq == message.seq and not probe.indirect_sent:
                return self._go_indirect(probe, now)
            forward = self._forwards.pop(message.seq, None)
            if forward is not None and forward.requester in self.members:
                nack = Nack(forward.requester_seq, self._piggyback())
                return [self._to(forward.requester, nack)]
        elif isinstance(message, PingReq) and probe is not None and probe.seq == message.seq:
            probe.expected_nacks -= 1
            if probe.expected_nacks > 0 and probe.nacks >= probe.expected_nacks:
                self._fail_probe(probe, now)
        return []

    # ------------------------------------------------------------------
    # Merging updates
    # ------------------------------------------------------------------

    def _apply_all(self, sender: str, items: Iterable[Update | Reported], now: float) -> bool:
        """Apply piggybacked items; return whether one was an accusation of us
        that we had already refuted."""
        stale = False
        for item in items:
            if not isinstance(item, Update):
                self._records.append(item)
            elif item.name == self.name:
                stale = self._refute_if_needed(item) or stale
            else:
                self._apply(sender, item, now, local=False)
        return stale

    def _apply(self, sender: str, update: Update, now: float, *, local: bool) -> None:
        # Updates about ourselves are refuted, never applied.
        if update.name == self.name:
            self._refute_if_needed(update)
            return

        known = self.members.get(update.name)
        held = None if known is None else (known.state, known.incarnation)
        decision = merge_decision(held, update.state, update.incarnation)
        if known is not None and held == (State.DEAD, update.incarnation):
            self._date_back(known, update, now)
        if decision is Merge.ADD:
            self._add(update, now)
            self._events.append(
                MemberEvent(update.name, None, update.state, update.incarnation, local)
            )
            self.broadcast(update)
            return
        if decision is Merge.CONFIRM:
            self._confirm(sender, update, now)
            return
        if decision is not Merge.APPLY:
            return
        assert known is not None

        # Take the newer news and tell the runtime about the change.
        self._changed(update.name)
        old = known.state
        known.incarnation = update.incarnation
        if update.state is State.ALIVE:
            known.address = update.address
        if update.state is not old:
            since = now
            if update.state is State.DEAD:
                # Dated back by the update's age, but not before this member
                # itself began to doubt the member. A member held alive until
                # now (the other side of a healed partition hearing an old
                # death) counts from now, which leaves it time to refute.
                doubt = known.since if old is State.SUSPECT else now
                self._doubted[update.name] = doubt
                since = max(now - update.age, doubt)
            known.state, known.since = update.state, since
            self._set_active(update.name, update.state in _ACTIVE_STATES)
            if update.state is State.DEAD:
                self._recently_dead[update.name] = now
            else:
                self._recently_dead.pop(update.name, None)
            self._events.append(
                MemberEvent(update.name, old, update.state, update.incarnation, local, since)
            )

        # Start or stop the suspicion timer, and pass the news on.
        self._suspicions.pop(update.name, None)
        self._rechecked.discard(update.name)
        if update.state is State.SUSPECT:
            source = update.source or sender
            self._start_suspicion(update.name, update.incarnation, source, now)
            update = dataclasses.replace(update, source=source)
        self.broadcast(update)

    def _date_back(self, known: Member, update: Update, now: float) -> None:
        """Move a death earlier when another member has held it longer.

        Members that miss each other's news declare a death on their own, later
        than the first. Taking the earliest moment heard keeps their reporter
        turns together.
        """
        since = max(now - update.age, self._doubted.get(known.name, known.since))
        if since < known.since - DATE_BACK_MIN:
            known.since = since
            self._dated_back.append((known.name, known.incarnation, since))

    def drain_dated_back(self) -> list[tuple[str, int, float]]:
        """Return the deaths moved earlier since the last call: (name, incarnation, since)."""
        dated, self._dated_back = self._dated_back, []
        return dated

    def _add(self, update: Update, now: float) -> None:
        self._changed(update.name)
        since = now - update.age if update.state is State.DEAD else now
        self.members[update.name] = Member(
            update.name, update.address, update.incarnation, update.state, since
        )

        if update.state in _ACTIVE_STATES:
            self._set_active(update.name, True)
            # Insert at a random place of the round-robin order, as memberlist
            # does, so that a newcomer is probed within one pass.
            order = self._probe_order
            order.append(update.name)
            spot = self._rng.randrange(len(order))
            order[spot], order[-1] = order[-1], order[spot]
        elif update.state is State.DEAD:
            self._recently_dead[update.name] = now

    def _start_suspicion(self, name: str, incarnation: int, source: str, now: float) -> None:
        config = self.config
        members = self.member_count()
        min_timeout, max_timeout = suspicion_bounds(
            config.suspicion_mult,
            config.suspicion_max_timeout_mult,
            members,
            config.probe_interval,
        )
        self._suspicions[name] = Suspicion(
            incarnation=incarnation,
            source=source,
            started=now,
            k=expected_confirmations(config.suspicion_mult, members),
            min_timeout=min_timeout,
            max_timeout=max_timeout,
        )

    def _confirm(self, sender: str, update: Update, now: float) -> None:
        # Another member independently suspects the same life of the member:
        # shorten the timer, and gossip the confirmation so others count it.
        suspicion = self._suspicions.get(update.name)
        source = update.source or sender
        if suspicion is None or suspicion.incarnation != update.incarnation:
            return
        if suspicion.confirm(source, now):
            self.broadcast(dataclasses.replace(update, source=source))

    def _refute_if_needed(self, update: Update) -> bool:
        """Refute a claim about us; return whether it was an already refuted one."""
        if self.leaving:
            return False
        me = self.members[self.name]
        if update.state is State.ALIVE:
            # An alive claim at a higher incarnation is an older life of ours
            # (we restarted); take its number so our next refutation beats it.
            if update.incarnation > self.incarnation:
                self.incarnation = me.incarnation = update.incarnation
                self._changed(self.name)
            return False
        incarnation = refutation(self.incarnation, update.state, update.incarnation)
        if incarnation is None:
            return True
        # Someone suspects us, declares us dead, or replays a leave from an
        # earlier life: refute with a higher incarnation. Others failing to
        # reach us is a sign that we are the slow one (Lifeguard).
        self.incarnation = me.incarnation = incarnation
        self._changed(self.name)
        self.refutations += 1
        self.awareness.apply_delta(1)
        self.broadcast(self._self_update())
        return False

    # ------------------------------------------------------------------
    # Timers
    # ------------------------------------------------------------------

    def tick(self, now: float) -> list[Outbound]:
        """Run every timer that is due at ``now``."""
        self._now = now
        out: list[Outbound] = []
        if self.leaving:
            return out
        out += self._check_probe(now)
        out += self._expire_forwards(now)
        out += self._recheck_suspicions(now)
        self._expire_suspicions(now)
        if self._probe is None and now >= self._next_probe:
            # The period is stretched while our local health is poor.
            self._next_probe = now + self.awareness.scale(self.config.probe_interval)
            out += self._start_probe(now)
        if now >= self._next_gossip:
            self._next_gossip = now + self.config.gossip_interval
            out += self._gossip(now)
        if now >= self._next_push_pull:
            interval = push_pull_interval(
                self.config.push_pull_interval, self.member_count()
            )
            self._next_push_pull = now + interval
            out += self._push_pull()
        if now >= self._next_reconnect:
            self._next_reconnect = now + self.config.reconnect_interval
            out += self._reconnect(now)
        return out

    def _next_probe_target(self) -> str | None:
        # Round-robin over a shuffled list bounds the time to the first probe of
        # a failed member to 2N-1 periods (SWIM section 4.3), unlike pure random.
        for _ in range(2):
            while self._probe_order:
                name = self._probe_order.pop()
                if name in self._active_index:
                    return name
            self._probe_order = list(self._active)
            self._rng.shuffle(self._probe_order)
        return None

    def _start_probe(self, now: float) -> list[Outbound]:
        target = self._next_probe_target()
        if target is None:
            return []
        self._seq += 1
        self._probe = _Probe(
            self._seq,
            target,
            started=now,
            timeout_at=now + self.probe_timeout(),
            ends_at=now + self.awareness.scale(self.config.probe_interval),
        )
        piggyback = self._piggyback(target)

        # Buddy system (Lifeguard): a suspect learns of its suspicion from the
        # very probe it receives, and can refute at once.
        member = self.members[target]
        suspicion = self._suspicions.get(target)
        if member.state is State.SUSPECT and suspicion is not None:
            news = Update(
                target, member.address, member.incarnation, State.SUSPECT, suspicion.source
            )
            piggyback = (news, *piggyback)
        return [self._to(target, Ping(self._seq, target, piggyback))]

    def _check_probe(self, now: float) -> list[Outbound]:
        probe = self._probe
        if probe is None:
            return []
        # The target was declared dead or left meanwhile: nothing to decide.
        if probe.target not in self._active_index:
            self._probe = None
            return []
        if not probe.indirect_sent:
            if now >= probe.timeout_at:
                return self._go_indirect(probe, now)
            return []
        if now >= probe.ends_at:
            self._fail_probe(probe, now)
        return []

    def _go_indirect(self, probe: _Probe, now: float) -> list[Outbound]:
        # Direct timeout: ask k others to probe for us. The indirect stage gets
        # its full share of the period even when it starts late (our timer ran
        # late while we were starved) or early (the ping was refused).
        probe.indirect_sent = True
        share = self.awareness.scale(self.config.probe_interval - self.config.probe_timeout)
        probe.ends_at = max(probe.ends_at, now + share)
        member = self.members[probe.target]
        helpers = self._sample(self._active, self.config.indirect_checks, exclude=probe.target)
        probe.expected_nacks = len(helpers)
        req = PingReq(probe.seq, probe.target, member.address)
        return [
            self._to(h, dataclasses.replace(req, piggyback=self._piggyback()))
            for h in helpers
        ]

    def _fail_probe(self, probe: _Probe, now: float) -> None:
        self._probe = None
        self._probe_results.append(ProbeResult(probe.target, "failed", None, probe.nacks))

        # Lifeguard: missing nacks mean our own messages are not getting
        # through; with nobody to nack, any failed probe counts against us.
        if probe.expected_nacks > 0:
            self.awareness.apply_delta(max(probe.expected_nacks - probe.nacks, 0))
        else:
            self.awareness.apply_delta(1)

        # Suspect the target, or confirm a suspicion that others raised.
        member = self.members[probe.target]
        suspicion = Update(
            probe.target, member.address, member.incarnation, State.SUSPECT, self.name
        )
        if member.state is State.ALIVE:
            self._apply(self.name, suspicion, now, local=True)
        elif member.state is State.SUSPECT:
            self._confirm(self.name, suspicion, now)

    def _expire_forwards(self, now: float) -> list[Outbound]:
        out = []
        for seq, forward in list(self._forwards.items()):
            if now < forward.nack_at:
                continue
            del self._forwards[seq]
            if forward.requester in self.members:
                nack = Nack(forward.requester_seq, self._piggyback())
                out.append(self._to(forward.requester, nack))
        return out

    def _recheck_suspicions(self, now: float) -> list[Outbound]:
        # A last ping, one probe timeout before a suspicion expires, carrying
        # the suspicion: a suspect that refuted answers with its refutation in
        # the ack, which saves us from declaring dead a member whose refutation
        # gossip happened to miss us. A dead member leaves it unanswered and
        # its death is declared on time.
        lead = self.probe_timeout()
        out = []
        for name, suspicion in self._suspicions.items():
            if name in self._rechecked or now < suspicion.deadline - lead:
                continue
            self._rechecked.add(name)
            member = self.members[name]
            news = Update(name, member.address, member.incarnation, State.SUSPECT, suspicion.source)
            self._seq += 1
            out.append(self._to(name, Ping(self._seq, name, (news, *self._piggyback(name)))))
        return out

    def _expire_suspicions(self, now: float) -> None:
        for name, suspicion in list(self._suspicions.items()):
            if now < suspicion.deadline:
                continue
            member = self.members[name]
            death = Update(name, member.address, member.incarnation, State.DEAD)
            self._apply(self.name, death, now, local=True)

    def _gossip(self, now: float) -> list[Outbound]:
        if not len(self._queue):
            return []
        # Members declared dead recently get gossip too, so that one declared
        # dead by mistake learns of it and refutes.
        horizon = now - self.config.gossip_to_the_dead_time
        for name, since in list(self._recently_dead.items()):
            if since < horizon:
                del self._recently_dead[name]
        pool = self._active + list(self._recently_dead) if self._recently_dead else self._active
        out = []
        for name in self._sample(pool, self.config.gossip_nodes):
            piggyback = self._piggyback(name)
            if not piggyback:
                break
            out.append(self._to(name, Gossip(piggyback)))
        return out

    def _push_pull(self) -> list[Outbound]:
        if not self._active:
            return []
        name = self._active[self._rng.randrange(len(self._active))]
        return [self._to(name, self.sync_message((), reply=True))]

    def _reconnect(self, now: float) -> list[Outbound]:
        # Alone: try the seeds again, as at start.
        if not self._active:
            return self.join(now)

        # Otherwise sync with one dead member, which merges a healed partition
        # and lets a restarted member learn that it must refute its death.
        dead = [n for n, m in self.members.items() if m.state is State.DEAD]
        if not dead:
            return []
        name = self._rng.choice(dead)
        return [self._to(name, self.sync_message((), reply=True, receiver=name))]
