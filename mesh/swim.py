"""SWIM membership and failure detection as a state machine without I/O.

The machine is fed inbound messages and the current monotonic time, and returns
the messages to send; :meth:`Swim.next_deadline` says when it next needs
:meth:`Swim.tick`. The trio runtime drives it over HTTP, and a simulator can
drive the very same code over an in-memory transport with a mock clock.

One protocol period, as in SWIM (Das, Gupta, Motivala, 2002) and memberlist:

1. Probe the next member of a shuffled round-robin list with a ping.
2. If no ack has come after ``probe_timeout``, ask ``indirect_checks`` other
   members to ping it for us (ping-req). They answer with an ack, or with a nack
   when the target stays silent, so that we learn that they, at least, hear us.
3. If no ack has come by the end of the period, mark the member suspect and
   gossip it. A suspect member refutes by raising its incarnation; if it does not
   within the suspicion timeout, we declare it dead and gossip that.

Updates travel piggybacked on every message, with a retransmit limit that grows
with log N; between probes a gossip round sends queued updates to a few random
members, and a periodic push-pull sync exchanges whole tables with one member
so that missed updates and healed partitions converge.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterable

from .broadcasts import BroadcastQueue
from .membership import Member, State, supersedes
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

__all__ = ["SwimConfig", "Swim", "Outbound", "MemberEvent", "ProbeResult"]


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
    # Suspicion timeout = suspicion_mult × max(1, log10 N) × probe_interval. A
    # higher multiplier gives a suspect member more time to refute.
    suspicion_mult: float
    # Retransmits per update = retransmit_mult × ⌈log10(N + 1)⌉.
    retransmit_mult: int
    # Time between gossip rounds, which send queued updates to gossip_nodes
    # random members; a round is skipped when there is nothing to send.
    gossip_interval: float
    gossip_nodes: int
    # Time between push-pull syncs of the whole table with one random member.
    push_pull_interval: float
    # Time between attempts to reach the seeds while alone, and to sync with
    # one dead member, so that a healed partition merges back.
    reconnect_interval: float
    # Updates piggybacked on one message at most.
    max_piggyback: int = 12


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


@dataclasses.dataclass(frozen=True, slots=True)
class ProbeResult:
    """How one probe ended, for metrics."""

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
    started: float
    indirect_sent: bool = False
    acked: bool = False
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

        self._rng = rng or random.Random()
        self._queue = BroadcastQueue(config.retransmit_mult)
        # Sequence numbers of pings, ping-reqs and forwarded pings.
        self._seq = 0
        # Round-robin order of probe targets; reshuffled after each pass.
        self._probe_order: list[str] = []
        self._probe: _Probe | None = None
        # Forwarded pings by our own sequence number.
        self._forwards: dict[int, _Forward] = {}
        # Suspected member name to the time its suspicion times out.
        self._suspicion_deadlines: dict[str, float] = {}
        # Changes and probe outcomes waiting for the runtime to drain.
        self._events: list[MemberEvent] = []
        self._probe_results: list[ProbeResult] = []
        # Reported records received, waiting for the incident layer.
        self._records: list[Reported] = []
        self.refutations = 0

        self._next_probe = now + self._rng.uniform(0, config.probe_interval)
        self._next_gossip = now + config.gossip_interval
        self._next_push_pull = now + config.push_pull_interval
        self._next_reconnect = now + config.reconnect_interval

    # ------------------------------------------------------------------
    # Views
    # ------------------------------------------------------------------

    def active_members(self) -> list[str]:
        """Names of alive and suspect members, this agent included, sorted."""
        return sorted(n for n, m in self.members.items() if m.state.is_active)

    def _others(self, *, exclude: Iterable[str] = ()) -> list[str]:
        skip = {self.name, *exclude}
        return [
            n for n, m in self.members.items() if m.state.is_active and n not in skip
        ]

    def drain_events(self) -> list[MemberEvent]:
        events, self._events = self._events, []
        return events

    def drain_probe_results(self) -> list[ProbeResult]:
        results, self._probe_results = self._probe_results, []
        return results

    def drain_records(self) -> list[Reported]:
        records, self._records = self._records, []
        return records

    def suspicion_timeout(self) -> float:
        n = len(self.active_members())
        scale = max(1.0, math.log10(max(n, 1)))
        return self.config.suspicion_mult * scale * self.config.probe_interval

    def next_deadline(self) -> float:
        deadlines = [self._next_probe, self._next_gossip, self._next_push_pull]
        deadlines.append(self._next_reconnect)
        if self._probe is not None and not self._probe.acked:
            if not self._probe.indirect_sent:
                deadlines.append(self._probe.started + self.config.probe_timeout)
        deadlines.extend(f.nack_at for f in self._forwards.values())
        deadlines.extend(self._suspicion_deadlines.values())
        return min(deadlines)

    # ------------------------------------------------------------------
    # Outgoing
    # ------------------------------------------------------------------

    def broadcast(self, item: Update | Reported) -> None:
        """Queue ``item`` for piggybacking and gossip."""
        self._queue.push(item)

    def _piggyback(self) -> tuple[Update | Reported, ...]:
        return self._queue.take(self.config.max_piggyback, len(self.members))

    def _to(self, name: str, message: Message, *, reply: bool = False) -> Outbound:
        return Outbound(self.members[name].address, name, message, reply)

    def _self_update(self) -> Update:
        state = State.LEFT if self.leaving else State.ALIVE
        return Update(self.name, self.address, self.incarnation, state)

    def _full_state(self) -> tuple[Update, ...]:
        return tuple(
            Update(m.name, m.address, m.incarnation, m.state)
            for m in self.members.values()
        )

    def sync_message(self, records: tuple[Reported, ...], *, reply: bool) -> Sync:
        return Sync(self._full_state(), records, reply, self._piggyback())

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

    def leave(self, now: float) -> list[Outbound]:
        """Start a graceful leave: tell every active member that we left.

        Members that receive it mark us ``left`` and raise no alarm. Our state is
        final for this incarnation, so a delayed probe cannot revive us.
        """
        self.leaving = True
        me = self.members[self.name]
        me.state, me.since = State.LEFT, now
        update = self._self_update()
        self.broadcast(update)
        return [self._to(name, Gossip((update,))) for name in self._others()]

    # ------------------------------------------------------------------
    # Inbound
    # ------------------------------------------------------------------

    def handle(self, sender: str, message: Message, now: float) -> list[Outbound]:
        """Apply an inbound message from member ``sender`` (already verified)."""
        self._apply_all(message.piggyback, now)
        match message:
            case Ping():
                return self._on_ping(sender, message, now)
            case Ack():
                return self._on_ack(sender, message, now)
            case PingReq():
                return self._on_ping_req(sender, message, now)
            case Nack():
                if self._probe is not None and self._probe.seq == message.seq:
                    self._probe.nacks += 1
                return []
            case Sync():
                return self._on_sync(sender, message, now)
        return []

    def _on_ping(self, sender: str, ping: Ping, now: float) -> list[Outbound]:
        # A ping for another name reached our address: the member it was meant
        # for is gone from here, so silence is the truthful answer.
        if ping.target != self.name or self.leaving:
            return []
        address = self.members[sender].address if sender in self.members else ""
        return [Outbound(address, sender, Ack(ping.seq, self._piggyback()), reply=True)]

    def _on_ack(self, sender: str, ack: Ack, now: float) -> list[Outbound]:
        # An ack for a ping we forwarded goes back to the requester.
        forward = self._forwards.pop(ack.seq, None)
        if forward is not None:
            if forward.requester not in self.members:
                return []
            relay = Ack(forward.requester_seq, self._piggyback())
            return [self._to(forward.requester, relay)]

        probe = self._probe
        if probe is None or probe.seq != ack.seq or probe.acked:
            return []
        probe.acked = True
        direct = sender == probe.target
        outcome = "ack" if direct else "indirect_ack"
        rtt = now - probe.started if direct else None
        self._probe_results.append(ProbeResult(probe.target, outcome, rtt, probe.nacks))
        return []

    def _on_ping_req(self, sender: str, req: PingReq, now: float) -> list[Outbound]:
        if self.leaving or sender not in self.members:
            return []
        self._seq += 1
        # Lifeguard: nack a little before the requester's own deadline, so the
        # nack arrives while it still counts.
        nack_at = now + 0.8 * self.config.probe_timeout
        self._forwards[self._seq] = _Forward(sender, req.seq, nack_at)
        ping = Ping(self._seq, req.target, self._piggyback())
        return [Outbound(req.target_address, req.target, ping)]

    def _on_sync(self, sender: str, sync: Sync, now: float) -> list[Outbound]:
        self._records.extend(sync.records)
        for update in sync.members:
            # As memberlist does, a remote "dead" only makes a member we hold
            # active suspect: the remote view may be stale, and the suspicion
            # gives the member a chance to refute.
            known = self.members.get(update.name)
            if (
                update.state is State.DEAD
                and update.name != self.name
                and known is not None
                and known.state.is_active
            ):
                update = dataclasses.replace(update, state=State.SUSPECT)
            self._apply(update, now, local=False)
        if not sync.reply:
            return []
        address = self.members[sender].address if sender in self.members else ""
        answer = self.sync_message((), reply=False)
        return [Outbound(address, sender, answer, reply=True)]

    # ------------------------------------------------------------------
    # Merging updates
    # ------------------------------------------------------------------

    def _apply_all(self, items: Iterable[Update | Reported], now: float) -> None:
        for item in items:
            if isinstance(item, Update):
                self._apply(item, now, local=False)
            else:
                self._records.append(item)

    def _apply(self, update: Update, now: float, *, local: bool) -> None:
        # Updates about ourselves are refuted, never applied.
        if update.name == self.name:
            self._refute_if_needed(update)
            return

        known = self.members.get(update.name)
        if known is None:
            # A suspicion of a member we never saw alive carries no news worth
            # acting on; we learn of the member from its own alive update.
            if update.state is State.SUSPECT:
                return
            self.members[update.name] = Member(
                update.name, update.address, update.incarnation, update.state, now
            )
            self._events.append(
                MemberEvent(update.name, None, update.state, update.incarnation, local)
            )
            if update.state is State.ALIVE:
                self._probe_order.append(update.name)
            self.broadcast(update)
            return

        # Ignore stale news: the merge rules decide.
        if not supersedes(update.state, update.incarnation, known.state, known.incarnation):
            return

        old = known.state
        known.incarnation = update.incarnation
        if update.state is State.ALIVE:
            known.address = update.address
        if update.state is not old:
            known.state, known.since = update.state, now
            self._events.append(
                MemberEvent(update.name, old, update.state, update.incarnation, local)
            )

        # Start or stop the suspicion timer.
        if update.state is State.SUSPECT:
            self._suspicion_deadlines.setdefault(
                update.name, now + self.suspicion_timeout()
            )
        else:
            self._suspicion_deadlines.pop(update.name, None)
        self.broadcast(update)

    def _refute_if_needed(self, update: Update) -> None:
        if self.leaving:
            return
        if update.state is State.ALIVE:
            # An alive claim at a higher incarnation is an older life of ours
            # (we restarted); take its number so our next refutation beats it.
            self.incarnation = max(self.incarnation, update.incarnation)
            return
        if update.incarnation < self.incarnation:
            return
        # Someone suspects us, declares us dead, or replays a leave from an
        # earlier life: refute with a higher incarnation.
        self.incarnation = update.incarnation + 1
        self.members[self.name].incarnation = self.incarnation
        self.refutations += 1
        self.broadcast(self._self_update())

    # ------------------------------------------------------------------
    # Timers
    # ------------------------------------------------------------------

    def tick(self, now: float) -> list[Outbound]:
        """Run every timer that is due at ``now``."""
        out: list[Outbound] = []
        if self.leaving:
            return out
        out += self._check_probe(now)
        out += self._expire_forwards(now)
        self._expire_suspicions(now)
        if now >= self._next_probe:
            self._next_probe = now + self.config.probe_interval
            out += self._start_probe(now)
        if now >= self._next_gossip:
            self._next_gossip = now + self.config.gossip_interval
            out += self._gossip()
        if now >= self._next_push_pull:
            self._next_push_pull = now + self.config.push_pull_interval
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
                member = self.members.get(name)
                if member is not None and member.state.is_active and name != self.name:
                    return name
            self._probe_order = self._others()
            self._rng.shuffle(self._probe_order)
        return None

    def _start_probe(self, now: float) -> list[Outbound]:
        target = self._next_probe_target()
        if target is None:
            return []
        self._seq += 1
        self._probe = _Probe(self._seq, target, now)
        piggyback = self._piggyback()

        # Buddy system (Lifeguard): a suspect learns of its suspicion from the
        # very probe it receives, and can refute at once.
        member = self.members[target]
        if member.state is State.SUSPECT:
            suspicion = Update(target, member.address, member.incarnation, State.SUSPECT)
            piggyback = (suspicion, *piggyback)
        return [self._to(target, Ping(self._seq, target, piggyback))]

    def _check_probe(self, now: float) -> list[Outbound]:
        probe = self._probe
        if probe is None or probe.acked:
            return []
        member = self.members.get(probe.target)
        if member is None or not member.state.is_active:
            self._probe = None
            return []

        # Direct timeout: ask k others to probe for us.
        if not probe.indirect_sent and now >= probe.started + self.config.probe_timeout:
            probe.indirect_sent = True
            helpers = self._others(exclude=[probe.target])
            self._rng.shuffle(helpers)
            req = PingReq(probe.seq, probe.target, member.address)
            return [
                self._to(h, dataclasses.replace(req, piggyback=self._piggyback()))
                for h in helpers[: self.config.indirect_checks]
            ]

        # End of the protocol period without any ack: suspect the target.
        if now >= probe.started + self.config.probe_interval:
            self._probe = None
            self._probe_results.append(
                ProbeResult(probe.target, "failed", None, probe.nacks)
            )
            if member.state is State.ALIVE:
                suspicion = Update(
                    probe.target, member.address, member.incarnation, State.SUSPECT
                )
                self._apply(suspicion, now, local=True)
        return []

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

    def _expire_suspicions(self, now: float) -> None:
        for name, deadline in list(self._suspicion_deadlines.items()):
            if now < deadline:
                continue
            member = self.members[name]
            death = Update(name, member.address, member.incarnation, State.DEAD)
            self._apply(death, now, local=True)

    def _gossip(self) -> list[Outbound]:
        if not len(self._queue):
            return []
        others = self._others()
        self._rng.shuffle(others)
        out = []
        for name in others[: self.config.gossip_nodes]:
            piggyback = self._piggyback()
            if piggyback:
                out.append(self._to(name, Gossip(piggyback)))
        return out

    def _push_pull(self) -> list[Outbound]:
        others = self._others()
        if not others:
            return []
        name = self._rng.choice(others)
        return [self._to(name, self.sync_message((), reply=True))]

    def _reconnect(self, now: float) -> list[Outbound]:
        # Alone: try the seeds again, as at start.
        if not self._others():
            return self.join(now)

        # Otherwise sync with one dead member, which merges a healed partition
        # and lets a restarted member learn that it must refute its death.
        dead = [n for n, m in self.members.items() if m.state is State.DEAD]
        if not dead:
            return []
        name = self._rng.choice(dead)
        return [self._to(name, self.sync_message((), reply=True))]
