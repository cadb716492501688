"""Quorum over shared check verdicts."""

import pytest

from mesh.observations import Observed, ObservationTable, required_quorum


@pytest.mark.parametrize(
    "quorum, runners, required",
    [(0.5, 1, 1), (0.5, 2, 2), (0.5, 3, 2), (0.5, 4, 3), (0.5, 5, 3), (0.0, 4, 1),
     (0.99, 3, 3), (2, 5, 2), (9, 3, 3), (0.5, 0, 1)],
)
def test_required_quorum(quorum, runners, required):
    assert required_quorum(quorum, runners) == required


def table_of(*rows):
    table = ObservationTable()
    for member, failing, since in rows:
        table.merge(Observed("shop", member, failing, since, 1))
    return table


def test_verdict_quorum_reached_starts_at_quorum_th_failure():
    table = table_of(("a", True, 30.0), ("b", True, 10.0), ("c", False, 5.0))
    verdict = table.verdict("shop", ["a", "b", "c"], 0.5)
    assert verdict.reached
    assert verdict.failing == ("b", "a")
    assert verdict.started == 30.0


def test_verdict_one_failing_member_is_no_quorum():
    table = table_of(("a", True, 10.0), ("b", False, 5.0), ("c", False, 5.0))
    verdict = table.verdict("shop", ["a", "b", "c"], 0.5)
    assert not verdict.reached
    assert verdict.passing == ("b", "c")


def test_verdict_ignores_inactive_members():
    table = table_of(("a", True, 10.0), ("b", True, 11.0), ("c", False, 5.0))
    verdict = table.verdict("shop", ["a", "c"], 0.5)
    assert not verdict.reached
    assert verdict.required == 2


def test_merge_keeps_highest_version():
    table = ObservationTable()
    assert table.merge(Observed("shop", "a", True, 1.0, 2))
    assert not table.merge(Observed("shop", "a", False, 2.0, 1))
    assert table.get("shop", "a").failing


def test_publish_raises_version():
    table = ObservationTable()
    first = table.publish("shop", "a", False, 1.0)
    second = table.publish("shop", "a", True, 1.0)
    assert second.version > first.version


def test_publish_after_restart_beats_old_versions():
    before = ObservationTable()
    old = before.publish("shop", "a", False, 100.0)
    old = before.publish("shop", "a", False, 100.0)
    others = ObservationTable()
    others.merge(old)
    restarted = ObservationTable().publish("shop", "a", True, 200.0)
    assert others.merge(restarted)
    assert others.get("shop", "a").failing
