"""Alarm summaries built from reports."""

from mesh.alarm_builder import AlarmBuilder
from mesh.incidents import Kind, Report


def build(status, detail):
    builder = AlarmBuilder(
        reporter="a",
        cluster="seoul",
        checks={},
        wall_time_of=lambda monotonic: 1.7e9 + monotonic,
        wall_clock=lambda: 1.7e9 + 100.0,
    )
    ended = 50.0 if status == "resolved" else None
    report = Report("check/web@1", Kind.CHECK, status, "web", ("a",), 10.0, ended, 0, detail)
    return builder.build(report)


def test_firing_check_summary_says_failing():
    alarm = build("firing", "GET http://127.0.0.1/x returned 503")
    assert "check web failing: GET http://127.0.0.1/x returned 503" in alarm.summary


def test_resolved_check_summary_says_passing_again():
    alarm = build("resolved", "GET http://127.0.0.1/x returned 200")
    assert "check web passing again: GET http://127.0.0.1/x returned 200" in alarm.summary
    assert "failing" not in alarm.summary
