"""Merge rules of membership updates, checked by hypothesis over all pairs and
over random sequences fed to a Swim machine."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.election import rank_members
from mesh.membership import Merge, State, merge_decision, refutation, supersedes
from mesh.messages import Gossip, Sync, Update
from mesh.swim import Swim, SwimConfig

states = st.sampled_from(list(State))
incarnations = st.integers(min_value=0, max_value=5)


@given(states, incarnations, states, incarnations)
def test_higher_incarnation_always_wins(new, new_inc, old, old_inc):
    if new_inc > old_inc:
        assert supersedes(new, new_inc, old, old_inc)
    if new_inc < old_inc:
        assert not supersedes(new, new_inc, old, old_inc)


@given(states, states, incarnations)
def test_equal_incarnation_order(new, old, inc):
    order = [State.ALIVE, State.SUSPECT, State.DEAD, State.LEFT]
    assert supersedes(new, inc, old, inc) == (order.index(new) > order.index(old))


@given(states, incarnations)
def test_left_is_final_for_its_incarnation(new, inc):
    assert not supersedes(new, inc, State.LEFT, inc)


@given(states, incarnations, states, incarnations)
def test_supersedes_is_antisymmetric(a, a_inc, b, b_inc):
    assert not (supersedes(a, a_inc, b, b_inc) and supersedes(b, b_inc, a, a_inc))


@given(st.text(min_size=1), st.lists(st.text(min_size=1), min_size=1, unique=True))
def test_ranking_independent_of_input_order(incident, members):
    assert rank_members(incident, members) == rank_members(incident, list(reversed(members)))
    assert sorted(rank_members(incident, members)) == sorted(members)


def test_ranking_spreads_first_reporter():
    members = [f"m{i}" for i in range(5)]
    firsts = {rank_members(f"incident-{i}", members)[0] for i in range(200)}
    assert firsts == set(members)


# ----------------------------------------------------------------------
# Merge decisions and refutation
# ----------------------------------------------------------------------

_PRECEDENCE = [State.ALIVE, State.SUSPECT, State.DEAD, State.LEFT]


@given(states, incarnations)
def test_merge_unknown_member_added_unless_suspect(new, inc):
    expected = Merge.IGNORE_UNKNOWN_SUSPECT if new is State.SUSPECT else Merge.ADD
    assert merge_decision(None, new, inc) is expected


@given(states, incarnations, states, incarnations)
def test_merge_applies_exactly_what_supersedes(new, new_inc, old, old_inc):
    decision = merge_decision((old, old_inc), new, new_inc)
    assert (decision is Merge.APPLY) == supersedes(new, new_inc, old, old_inc)


@given(states, incarnations, states, incarnations)
def test_merge_confirm_only_same_suspicion(new, new_inc, old, old_inc):
    decision = merge_decision((old, old_inc), new, new_inc)
    same_suspicion = new is old is State.SUSPECT and new_inc == old_inc
    assert (decision is Merge.CONFIRM) == same_suspicion


@given(incarnations, states, incarnations)
def test_refutation_beats_the_claim(own, claim, claim_inc):
    answer = refutation(own, claim, claim_inc)
    if answer is not None:
        assert answer > claim_inc
        assert answer > own


@given(incarnations, states, incarnations)
def test_refutation_answers_every_current_accusation(own, claim, claim_inc):
    answer = refutation(own, claim, claim_inc)
    accusation = claim is not State.ALIVE and claim_inc >= own
    assert (answer is not None) == accusation


# ----------------------------------------------------------------------
# The merge rules as a whole Swim machine applies them
# ----------------------------------------------------------------------

CONFIG = SwimConfig(
    probe_interval=1.0,
    probe_timeout=0.5,
    indirect_checks=2,
    suspicion_mult=4,
    retransmit_mult=4,
    gossip_interval=0.2,
    gossip_nodes=3,
    push_pull_interval=30.0,
    reconnect_interval=30.0,
)
subjects = st.sampled_from(["a", "b", "c"])
senders = st.sampled_from(["b", "c", "d"])
updates = st.builds(
    lambda name, inc, state, source: Update(name, name, inc, state, source),
    subjects,
    incarnations,
    states,
    st.sampled_from(["", "b", "c", "d"]),
)
deliveries = st.lists(st.tuples(senders, updates, st.booleans()), max_size=30)


def _rank(state: State, incarnation: int) -> tuple[int, int]:
    return incarnation, _PRECEDENCE.index(state)


@settings(max_examples=300, deadline=None)
@given(deliveries)
def test_swim_merge_invariants(sequence):
    swim = Swim(name="a", address="a", config=CONFIG, now=0.0, rng=random.Random(0))
    swim.assume_members([Update(n, n, 0, State.ALIVE) for n in ("b", "c", "d")], 0.0)
    now = 0.0
    for sender, update, as_sync in sequence:
        now += 0.01
        before = {n: (m.state, m.incarnation) for n, m in swim.members.items()}
        own_before = swim.incarnation
        if as_sync:
            swim.handle(sender, Sync((update,), (), reply=False), now)
        else:
            swim.handle(sender, Gossip((update,)), now)

        # This member stays alive and only it raises its incarnation, and only
        # in answer to a claim about itself.
        assert swim.members["a"].state is State.ALIVE
        assert swim.incarnation >= own_before
        assert swim.members["a"].incarnation == swim.incarnation
        if update.name != "a":
            assert swim.incarnation == own_before
        elif update.state is not State.ALIVE and update.incarnation >= own_before:
            assert swim.incarnation > update.incarnation

        # What we hold about others only moves forward in the merge order.
        for name, member in swim.members.items():
            if name == "a" or name not in before:
                continue
            old_state, old_inc = before[name]
            assert _rank(member.state, member.incarnation) >= _rank(old_state, old_inc)
            # Left is final for its incarnation.
            if old_state is State.LEFT and member.incarnation == old_inc:
                assert member.state is State.LEFT
