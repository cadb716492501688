"""The dynamic suspicion timeout: the pure formula and the timer with confirmations."""

import pytest

from mesh.suspicion import (
    Suspicion,
    expected_confirmations,
    remaining_suspicion,
    suspicion_bounds,
)


@pytest.mark.parametrize(
    ("confirmations", "k", "elapsed", "expected"),
    [
        # min 2 s, max 30 s throughout.
        (0, 3, 0.0, 30.0),
        (1, 3, 2.0, 14.0),
        (2, 3, 3.0, 4.81),
        (3, 3, 4.0, -2.0),
        (4, 3, 5.0, -3.0),
        (5, 3, 10.0, -8.0),
        # Without expected confirmations the timer runs at min from the start.
        (0, 0, 0.0, 2.0),
        (0, 0, 1.5, 0.5),
        (3, 0, 0.0, 2.0),
        # One expected confirmation: it alone drives the timer to min.
        (0, 1, 0.0, 30.0),
        (1, 1, 0.0, 2.0),
    ],
)
def test_remaining_suspicion_table(confirmations, k, elapsed, expected):
    remaining = remaining_suspicion(confirmations, k, elapsed, 2.0, 30.0)
    assert remaining == pytest.approx(expected, abs=1e-9)


def test_remaining_suspicion_never_below_min():
    for confirmations in range(10):
        assert remaining_suspicion(confirmations, 2, 0.0, 4.0, 24.0) >= 4.0


def test_remaining_suspicion_shrinks_with_each_confirmation():
    values = [remaining_suspicion(n, 4, 0.0, 5.0, 30.0) for n in range(5)]
    assert values == sorted(values, reverse=True)
    assert len(set(values)) == 5


@pytest.mark.parametrize(
    ("members", "expected_min"),
    [(1, 4.0), (5, 4.0), (10, 4.0), (100, 8.0), (1000, 12.0)],
)
def test_suspicion_bounds_scale_with_log10_members(members, expected_min):
    minimum, maximum = suspicion_bounds(4, 6, members, 1.0)
    assert minimum == pytest.approx(expected_min)
    assert maximum == pytest.approx(6 * expected_min)


@pytest.mark.parametrize(
    ("mult", "members", "expected"),
    [(4, 100, 2), (4, 4, 2), (4, 3, 0), (3, 3, 1), (3, 2, 0), (2, 50, 0), (6, 10, 4)],
)
def test_expected_confirmations_table(mult, members, expected):
    assert expected_confirmations(mult, members) == expected


def make_suspicion(k=2, started=100.0):
    return Suspicion(
        incarnation=3, source="raiser", started=started, k=k, min_timeout=4.0, max_timeout=24.0
    )


def test_suspicion_starts_at_max():
    suspicion = make_suspicion()
    assert suspicion.deadline == pytest.approx(124.0)
    assert suspicion.confirmations == 0


def test_suspicion_confirmation_moves_deadline_earlier():
    suspicion = make_suspicion()
    assert suspicion.confirm("second", 101.0)
    # log(2)/log(3) of the way from 24 s to 4 s, measured from the start.
    assert suspicion.deadline == pytest.approx(100.0 + 11.381, abs=1e-3)
    assert suspicion.confirm("third", 102.0)
    assert suspicion.deadline == pytest.approx(104.0)


def test_suspicion_ignores_raiser_and_repeats():
    suspicion = make_suspicion()
    assert not suspicion.confirm("raiser", 101.0)
    assert suspicion.confirm("second", 101.0)
    assert not suspicion.confirm("second", 102.0)
    assert suspicion.confirmations == 1


def test_suspicion_ignores_confirmations_beyond_k():
    suspicion = make_suspicion(k=1)
    assert suspicion.confirm("second", 101.0)
    assert not suspicion.confirm("third", 101.0)
    assert suspicion.deadline == pytest.approx(104.0)


def test_suspicion_late_confirmation_expires_at_once():
    suspicion = make_suspicion()
    suspicion.confirm("second", 110.0)
    suspicion.confirm("third", 110.0)
    # The minimum has passed already: the deadline is in the past.
    assert suspicion.deadline == pytest.approx(104.0)
    assert suspicion.deadline < 110.0


def test_suspicion_without_expected_confirmations_starts_at_min():
    suspicion = make_suspicion(k=0)
    assert suspicion.deadline == pytest.approx(104.0)
    assert not suspicion.confirm("second", 101.0)
