"""Flap damping of check results, over tables of result sequences."""

import pytest

from mesh.flapping import Damper, Edge

START, STOP = Edge.STARTED_FAILING, Edge.STOPPED_FAILING


def run(damper, results):
    """Feed (time, ok) pairs and return the (time, edge) pairs reported."""
    edges = []
    for now, ok in results:
        edge = damper.observe(ok, now)
        if edge is not None:
            edges.append((now, edge))
    return edges


@pytest.mark.parametrize(
    "results, expected",
    [
        # A failure shorter than fail_for raises nothing.
        ([(0, False), (10, False), (20, True)], []),
        # A failure that lasts fail_for starts, and resolves after resolve_for.
        ([(0, False), (30, False), (40, True), (100, True)], [(30, START), (100, STOP)]),
        # One pass inside a long failure does not resolve it.
        ([(0, False), (30, False), (40, True), (50, False), (200, True), (260, True)],
         [(30, START), (260, STOP)]),
        # fail_for counts from the first failure of the current run only.
        ([(0, False), (20, True), (25, False), (50, False), (55, False)], [(55, START)]),
    ],
)
def test_damper_edges(results, expected):
    damper = Damper(fail_for=30, resolve_for=60, min_alarm_interval=0)
    assert run(damper, results) == expected


def test_damper_zero_fail_for_starts_at_once():
    damper = Damper(fail_for=0, resolve_for=0, min_alarm_interval=0)
    assert run(damper, [(0, False), (1, True)]) == [(0, START), (1, STOP)]


def test_damper_flap_limit_holds_back_next_start():
    damper = Damper(fail_for=0, resolve_for=0, min_alarm_interval=300)
    results = [(0, False), (10, True), (20, False), (100, False), (300, False)]
    assert run(damper, results) == [(0, START), (10, STOP), (300, START)]


def test_damper_flap_limit_drops_start_that_resolves_first():
    damper = Damper(fail_for=0, resolve_for=0, min_alarm_interval=300)
    results = [(0, False), (10, True), (20, False), (30, True), (400, True)]
    assert run(damper, results) == [(0, START), (10, STOP)]
    assert not damper.is_failing
