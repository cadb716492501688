"""Merge rules of membership updates, checked over all pairs by hypothesis."""

from hypothesis import given
from hypothesis import strategies as st

from mesh.election import rank_members
from mesh.membership import State, supersedes

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
