"""The SWIM state machine with Lifeguard, fed messages by hand."""

import math
import random

import pytest

from mesh.membership import State
from mesh.messages import Ack, Gossip, Nack, Ping, PingReq, Sync, Update
from mesh.swim import Outbound, Swim, SwimConfig, push_pull_interval

CONFIG = SwimConfig(
    probe_interval=1.0,
    probe_timeout=0.5,
    indirect_checks=3,
    suspicion_mult=4,
    retransmit_mult=4,
    gossip_interval=0.2,
    gossip_nodes=3,
    push_pull_interval=30.0,
    reconnect_interval=30.0,
)


def make_swim(others=("b", "c", "d", "e"), *, seed=1, config=CONFIG):
    swim = Swim(name="a", address="a", config=config, now=0.0, rng=random.Random(seed))
    swim.assume_members([Update(n, n, 0, State.ALIVE) for n in others], 0.0)
    return swim


def start_probe(swim):
    """Tick until a probe starts; return (now, its ping)."""
    for _ in range(100):
        now = swim.next_deadline()
        for outbound in swim.tick(now):
            if isinstance(outbound.message, Ping):
                return now, outbound
    raise AssertionError("no probe started")


def of_type(outbound, kind):
    return [o for o in outbound if isinstance(o.message, kind)]


def state_of(swim, name):
    return swim.members[name].state


# ----------------------------------------------------------------------
# Probes and local health
# ----------------------------------------------------------------------


def test_probe_acked_reports_rtt():
    swim = make_swim()
    now, ping = start_probe(swim)
    swim.handle(ping.target, Ack(ping.message.seq), now + 0.01)
    [result] = swim.drain_probe_results()
    assert result.outcome == "ack"
    assert result.rtt == pytest.approx(0.01)


def test_probe_ack_lowers_health_score():
    swim = make_swim()
    swim.awareness.apply_delta(3)
    now, ping = start_probe(swim)
    swim.handle(ping.target, Ack(ping.message.seq), now + 0.01)
    assert swim.awareness.score == 2


def test_probe_timeout_sends_ping_reqs_to_k_others():
    swim = make_swim()
    now, ping = start_probe(swim)
    out = swim.tick(now + 0.5)
    reqs = of_type(out, PingReq)
    assert len(reqs) == 3
    assert ping.target not in {o.target for o in reqs}
    assert all(o.message.target == ping.target for o in reqs)


def test_probe_without_nacks_suspects_and_raises_health_score():
    swim = make_swim()
    now, ping = start_probe(swim)
    swim.tick(now + 0.5)
    swim.tick(now + 1.0)
    assert state_of(swim, ping.target) is State.SUSPECT
    # Three probers asked, none nacked: three points against ourselves.
    assert swim.awareness.score == 3
    [result] = swim.drain_probe_results()
    assert result.outcome == "failed"


def test_probe_all_nacks_suspects_before_period_ends():
    swim = make_swim()
    now, ping = start_probe(swim)
    reqs = of_type(swim.tick(now + 0.5), PingReq)
    for req in reqs:
        swim.handle(req.target, Nack(req.message.seq), now + 0.9)
    assert state_of(swim, ping.target) is State.SUSPECT
    # Every prober answered: the fault is not ours.
    assert swim.awareness.score == 0


def test_probe_indirect_ack_counts_as_success():
    swim = make_swim()
    now, ping = start_probe(swim)
    req = of_type(swim.tick(now + 0.5), PingReq)[0]
    swim.handle(req.target, Ack(req.message.seq), now + 0.6)
    [result] = swim.drain_probe_results()
    assert result.outcome == "indirect_ack"
    swim.tick(now + 1.0)
    assert state_of(swim, ping.target) is State.ALIVE


def test_refused_ping_goes_indirect_at_once():
    swim = make_swim()
    now, ping = start_probe(swim)
    out = swim.delivery_failed(ping, now + 0.002)
    assert len(of_type(out, PingReq)) == 3


def test_refused_ping_req_expects_no_nack():
    swim = make_swim()
    now, ping = start_probe(swim)
    reqs = of_type(swim.tick(now + 0.5), PingReq)
    swim.delivery_failed(reqs[0], now + 0.5)
    for req in reqs[1:]:
        swim.handle(req.target, Nack(req.message.seq), now + 0.9)
    assert state_of(swim, ping.target) is State.SUSPECT
    assert swim.awareness.score == 0


def test_health_score_stretches_probe_timing():
    swim = make_swim()
    swim.awareness.apply_delta(3)
    assert swim.probe_timeout() == pytest.approx(2.0)
    now, ping = start_probe(swim)
    # No ping-req before the stretched timeout.
    assert of_type(swim.tick(now + 1.9), PingReq) == []
    assert swim.next_deadline() == pytest.approx(now + 2.0)


def test_late_indirect_stage_gets_its_full_share():
    swim = make_swim()
    now, ping = start_probe(swim)
    # Our timer ran 3 s late (we were starved): the probers still get 0.5 s.
    late = now + 3.0
    assert of_type(swim.tick(late), PingReq)
    swim.tick(late + 0.4)
    assert state_of(swim, ping.target) is State.ALIVE
    swim.tick(late + 0.5)
    assert state_of(swim, ping.target) is State.SUSPECT


# ----------------------------------------------------------------------
# Indirect probes on behalf of others
# ----------------------------------------------------------------------


def test_ping_req_forwarded_and_ack_relayed():
    swim = make_swim()
    [forward] = swim.handle("b", PingReq(7, "c", "c"), 10.0)
    assert forward.target == "c"
    [relay] = swim.handle("c", Ack(forward.message.seq), 10.1)
    assert relay.target == "b"
    assert relay.message.seq == 7


def test_ping_req_unanswered_nacked_before_requester_deadline():
    swim = make_swim()
    swim.handle("b", PingReq(7, "c", "c"), 10.0)
    assert of_type(swim.tick(10.39), Nack) == []
    [nack] = of_type(swim.tick(10.4), Nack)
    assert nack.target == "b"
    assert nack.message.seq == 7


def test_refused_forwarded_ping_nacked_at_once():
    swim = make_swim()
    [forward] = swim.handle("b", PingReq(7, "c", "c"), 10.0)
    [nack] = swim.delivery_failed(forward, 10.001)
    assert isinstance(nack.message, Nack)
    assert nack.message.seq == 7


# ----------------------------------------------------------------------
# Suspicion, confirmations, death
# ----------------------------------------------------------------------


def suspect(name, incarnation=0, source="b"):
    return Update(name, name, incarnation, State.SUSPECT, source)


def test_suspicion_starts_at_max_timeout():
    swim = make_swim()
    swim.handle("b", Gossip((suspect("e"),)), 10.0)
    assert state_of(swim, "e") is State.SUSPECT
    # N = 5: min = 4 s, max = 24 s, k = 2.
    timer = swim.suspicion("e")
    assert timer.deadline == pytest.approx(34.0)
    assert timer.k == 2


def test_suspicion_confirmations_bring_death_forward():
    swim = make_swim()
    swim.handle("b", Gossip((suspect("e", source="b"),)), 10.0)
    swim.handle("c", Gossip((suspect("e", source="c"),)), 11.0)
    swim.handle("d", Gossip((suspect("e", source="d"),)), 12.0)
    assert swim.suspicion("e").deadline == pytest.approx(14.0)
    swim.tick(14.0)
    assert state_of(swim, "e") is State.DEAD
    [event] = [e for e in swim.drain_events() if e.new is State.DEAD]
    assert event.local


def test_suspicion_relayed_confirmation_not_counted_twice():
    swim = make_swim()
    swim.handle("b", Gossip((suspect("e", source="b"),)), 10.0)
    # c relays b's suspicion: same source, no confirmation.
    swim.handle("c", Gossip((suspect("e", source="b"),)), 11.0)
    assert swim.suspicion("e").confirmations == 0


def test_suspicion_new_confirmation_gossiped_again():
    swim = make_swim(others=("b", "c", "d", "e", "f", "g", "h"))
    swim.handle("b", Gossip((suspect("e", source="b"),)), 10.0)
    drain_queue(swim, 10.0)
    swim.handle("c", Gossip((suspect("e", source="c"),)), 11.0)
    items = drain_queue(swim, 11.0)
    assert Update("e", "e", 0, State.SUSPECT, "c") in items


def drain_queue(swim, now):
    """Return every queued item, taken from the acks to pings from b."""
    items = []
    for seq in range(50):
        for outbound in swim.handle("b", Ping(seq, "a"), now):
            items.extend(outbound.message.piggyback)
    return items


def test_own_failed_probe_confirms_existing_suspicion():
    swim = make_swim()
    now, ping = start_probe(swim)
    target = ping.target
    swim.handle("b" if target != "b" else "c", Gossip((suspect(target, source="x"),)), now)
    swim.tick(now + 0.5)
    swim.tick(now + 1.0)
    assert swim.suspicion(target).confirmations == 1


def test_suspicion_refuted_by_higher_incarnation():
    swim = make_swim()
    swim.handle("b", Gossip((suspect("e"),)), 10.0)
    swim.handle("e", Gossip((Update("e", "e", 1, State.ALIVE),)), 11.0)
    assert state_of(swim, "e") is State.ALIVE
    assert swim.suspicion("e") is None
    assert swim.next_deadline() < math.inf


def test_suspicion_of_stale_incarnation_ignored():
    swim = make_swim()
    swim.handle("e", Gossip((Update("e", "e", 2, State.ALIVE),)), 10.0)
    swim.handle("b", Gossip((suspect("e", incarnation=1),)), 11.0)
    assert state_of(swim, "e") is State.ALIVE


def test_small_mesh_expects_no_confirmation():
    swim = make_swim(others=("b", "c"))
    swim.handle("b", Gossip((suspect("c"),)), 10.0)
    # N = 3 < k + 2: the timer starts at min, 4 s.
    assert swim.suspicion("c").deadline == pytest.approx(14.0)


def test_buddy_ping_carries_suspicion_to_suspect():
    swim = make_swim(others=("b",))
    swim.handle("b", Gossip((suspect("b", source="z"),)), 0.0)
    now, ping = start_probe(swim)
    assert ping.target == "b"
    assert Update("b", "b", 0, State.SUSPECT, "z") in ping.message.piggyback


# ----------------------------------------------------------------------
# Refutation
# ----------------------------------------------------------------------


def test_refutes_suspicion_of_itself():
    swim = make_swim()
    swim.handle("b", Gossip((Update("a", "a", 0, State.SUSPECT, "b"),)), 5.0)
    assert swim.incarnation == 1
    assert swim.refutations == 1
    assert swim.awareness.score == 1
    assert state_of(swim, "a") is State.ALIVE
    assert Update("a", "a", 1, State.ALIVE) in drain_queue(swim, 5.0)


def test_refutes_death_above_own_incarnation():
    swim = make_swim()
    swim.handle("b", Gossip((Update("a", "a", 4, State.DEAD),)), 5.0)
    assert swim.incarnation == 5


def test_ignores_claims_older_than_own_incarnation():
    swim = make_swim()
    swim.handle("b", Gossip((Update("a", "a", 0, State.SUSPECT, "b"),)), 5.0)
    swim.handle("c", Gossip((Update("a", "a", 0, State.DEAD),)), 6.0)
    assert swim.incarnation == 1
    assert swim.refutations == 1


def test_adopts_incarnation_of_earlier_life():
    swim = make_swim()
    swim.handle("b", Gossip((Update("a", "a", 7, State.ALIVE),)), 5.0)
    assert swim.incarnation == 7
    assert swim.members["a"].incarnation == 7


# ----------------------------------------------------------------------
# Gossip, push-pull, leave
# ----------------------------------------------------------------------


def test_gossip_idle_without_news():
    swim = make_swim()
    drain_queue(swim, 0.0)
    # Nothing queued: the next deadline is the next probe, not a gossip round.
    now = swim.next_deadline()
    assert of_type(swim.tick(now), Gossip) == []


def test_gossip_reaches_recently_dead_member():
    swim = make_swim(others=("b",))
    swim.handle("c", Gossip((Update("c", "c", 0, State.ALIVE),)), 0.0)
    swim.handle("b", Gossip((Update("c", "c", 0, State.DEAD),)), 1.0)
    targets = set()
    for step in range(10):
        for outbound in of_type(swim.tick(1.0 + step * 0.2), Gossip):
            targets.add(outbound.target)
    assert "c" in targets


def test_gossip_skips_long_dead_member():
    swim = make_swim(others=("b",))
    swim.handle("c", Gossip((Update("c", "c", 0, State.ALIVE),)), 0.0)
    swim.handle("b", Gossip((Update("c", "c", 0, State.DEAD),)), 1.0)
    swim.broadcast(Update("b", "b", 3, State.ALIVE))
    targets = set()
    for step in range(10):
        for outbound in of_type(swim.tick(40.0 + step * 0.2), Gossip):
            targets.add(outbound.target)
    assert targets == {"b"}


def test_sync_turns_remote_death_into_suspicion():
    swim = make_swim()
    table = (Update("b", "b", 0, State.ALIVE), Update("e", "e", 0, State.DEAD))
    swim.handle("b", Sync(table, (), reply=False), 3.0)
    assert state_of(swim, "e") is State.SUSPECT
    assert swim.suspicion("e").source == "b"


def test_sync_reply_carries_whole_table():
    swim = make_swim()
    [answer] = swim.handle("b", Sync((), (), reply=True), 3.0)
    assert answer.reply
    assert {u.name for u in answer.message.members} == {"a", "b", "c", "d", "e"}


@pytest.mark.parametrize(
    ("members", "expected"),
    [(1, 30.0), (32, 30.0), (33, 60.0), (64, 60.0), (65, 90.0), (128, 90.0), (1000, 180.0)],
)
def test_push_pull_interval_scales_above_32(members, expected):
    assert push_pull_interval(30.0, members) == pytest.approx(expected)


def test_leave_notifies_active_members_and_stops_timers():
    swim = make_swim()
    out = swim.leave(2.0)
    assert {o.target for o in out} == {"b", "c", "d", "e"}
    assert all(isinstance(o.message, Gossip) for o in out)
    assert swim.next_deadline() == math.inf
    assert swim.tick(10.0) == []


def test_left_member_not_revived_by_same_incarnation():
    swim = make_swim()
    swim.handle("b", Gossip((Update("b", "b", 0, State.LEFT),)), 1.0)
    swim.handle("c", Gossip((Update("b", "b", 0, State.ALIVE),)), 2.0)
    swim.handle("c", Gossip((Update("b", "b", 0, State.SUSPECT, "c"),)), 2.0)
    assert state_of(swim, "b") is State.LEFT


def test_unknown_member_suspicion_ignored():
    swim = make_swim()
    swim.handle("b", Gossip((suspect("zz"),)), 1.0)
    assert "zz" not in swim.members


def test_swim_config_rejects_timeout_not_below_interval():
    with pytest.raises(ValueError, match="probe_timeout 1.0"):
        SwimConfig(
            probe_interval=1.0,
            probe_timeout=1.0,
            indirect_checks=3,
            suspicion_mult=4,
            retransmit_mult=4,
            gossip_interval=0.2,
            gossip_nodes=3,
            push_pull_interval=30.0,
            reconnect_interval=30.0,
        )


def test_outbound_reply_flag_default():
    assert Outbound("x", "x", Gossip()).reply is False


# ----------------------------------------------------------------------
# Getting refutations through
# ----------------------------------------------------------------------


def test_last_ping_before_suspicion_expires():
    swim = make_swim()
    swim.handle("b", Gossip((suspect("e"),)), 10.0)
    deadline = swim.suspicion("e").deadline
    lead = CONFIG.probe_timeout
    assert swim.next_deadline() <= deadline - lead
    pings = [o for o in swim.tick(deadline - lead) if isinstance(o.message, Ping) and o.target == "e"]
    # The regular probe may pick e at the same moment; the last ping is the first.
    last = [p for p in pings if suspect("e") in p.message.piggyback][0]
    # The ack carries the refutation: no death.
    swim.handle("e", Ack(last.message.seq, (Update("e", "e", 1, State.ALIVE),)), deadline - 0.3)
    swim.tick(deadline)
    assert state_of(swim, "e") is State.ALIVE


def test_last_ping_unanswered_death_on_time():
    swim = make_swim()
    swim.handle("b", Gossip((suspect("e"),)), 10.0)
    deadline = swim.suspicion("e").deadline
    swim.tick(deadline - CONFIG.probe_timeout)
    swim.tick(deadline)
    assert state_of(swim, "e") is State.DEAD


def test_stale_accusation_corrected_to_sender():
    swim = make_swim()
    swim.handle("b", Gossip((Update("a", "a", 0, State.SUSPECT, "b"),)), 5.0)
    assert swim.incarnation == 1
    out = swim.handle("c", Gossip((Update("a", "a", 0, State.SUSPECT, "c"),)), 6.0)
    [correction] = [o for o in out if o.target == "c"]
    assert correction.message.piggyback == (Update("a", "a", 1, State.ALIVE),)
    # At most once per probe interval per sender.
    again = swim.handle("c", Gossip((Update("a", "a", 0, State.DEAD),)), 6.5)
    assert [o for o in again if o.target == "c"] == []


def test_stale_accusation_on_ping_answered_in_ack():
    swim = make_swim()
    swim.handle("b", Gossip((Update("a", "a", 0, State.SUSPECT, "b"),)), 5.0)
    [ack] = swim.handle("c", Ping(4, "a", (Update("a", "a", 0, State.SUSPECT, "c"),)), 6.0)
    assert ack.message.piggyback[0] == Update("a", "a", 1, State.ALIVE)


def test_suspect_sender_told_of_suspicion():
    swim = make_swim()
    swim.handle("b", Gossip((suspect("e", source="b"),)), 10.0)
    out = swim.handle("e", Gossip(), 11.0)
    [told] = [o for o in out if o.target == "e"]
    assert told.message.piggyback == (suspect("e", source="b"),)


def test_dead_sender_told_in_ack():
    swim = make_swim()
    swim.handle("b", Gossip((Update("e", "e", 0, State.DEAD),)), 10.0)
    [ack] = swim.handle("e", Ping(1, "a"), 11.0)
    assert Update("e", "e", 0, State.DEAD) in ack.message.piggyback


# ----------------------------------------------------------------------
# The moment of a death, shared by its age


def gossip_suspicion(swim, name, now):
    swim.handle("b", Gossip((Update(name, name, 0, State.SUSPECT, "b"),)), now)


def test_death_dated_back_by_its_age():
    swim = make_swim()
    gossip_suspicion(swim, "c", 5.0)
    swim.handle("b", Gossip((Update("c", "c", 0, State.DEAD, age=2.5),)), 10.0)
    assert swim.members["c"].since == 7.5
    events = [e for e in swim.drain_events() if e.name == "c" and e.new is State.DEAD]
    assert [e.since for e in events] == [7.5]


def test_death_dated_back_no_earlier_than_own_doubt():
    swim = make_swim()
    gossip_suspicion(swim, "c", 9.0)
    swim.handle("b", Gossip((Update("c", "c", 0, State.DEAD, age=2.5),)), 10.0)
    assert swim.members["c"].since == 9.0


def test_old_death_of_alive_member_not_dated_back():
    """The other side of a healed partition hears an old death: time to refute."""
    swim = make_swim()
    swim.handle("b", Gossip((Update("c", "c", 0, State.DEAD, age=100.0),)), 10.0)
    assert swim.members["c"].since == 10.0


def test_death_sent_with_its_age_now():
    swim = make_swim(others=("b",))
    swim.handle("b", Gossip((Update("c", "c", 0, State.ALIVE),)), 0.0)
    gossip_suspicion(swim, "c", 1.0)
    swim.handle("b", Gossip((Update("c", "c", 0, State.DEAD, age=1.0),)), 4.0)
    ages = [
        item.age
        for outbound in swim.tick(5.0)
        for item in outbound.message.piggyback
        if isinstance(item, Update) and item.name == "c" and item.state is State.DEAD
    ]
    # Declared dead at 3.0, sent at 5.0.
    assert ages
    assert set(ages) == {2.0}


def test_later_declaration_takes_the_earlier_moment():
    swim = make_swim()
    gossip_suspicion(swim, "c", 5.0)
    swim.handle("b", Gossip((Update("c", "c", 0, State.DEAD),)), 10.0)
    swim.drain_dated_back()
    # d held the death 3 s longer than we did.
    swim.handle("d", Gossip((Update("c", "c", 0, State.DEAD, age=3.0),)), 10.0)
    assert swim.members["c"].since == 7.0
    assert swim.drain_dated_back() == [("c", 0, 7.0)]
    # Delivery delay alone moves nothing.
    swim.handle("e", Gossip((Update("c", "c", 0, State.DEAD, age=3.01),)), 10.0)
    assert swim.drain_dated_back() == []
    # Nor does a moment before this member's own doubt.
    swim.handle("e", Gossip((Update("c", "c", 0, State.DEAD, age=9.0),)), 10.0)
    assert swim.members["c"].since == 5.0
