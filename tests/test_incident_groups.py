"""Grouped member-down alarms and turns when members' views differ, on Incidents alone."""

from mesh.election import rank_members
from mesh.incidents import FIRING, RESOLVED, Incidents, Kind, member_incident_id
from mesh.membership import State
from mesh.messages import Reported
from mesh.swim import MemberEvent

HANDOFF = 1.5


def incidents(name, names, **options):
    table = Incidents(name=name, handoff_delay=HANDOFF, retention=3600.0, **options)
    for member in names:
        if member != name:
            event = MemberEvent(member, None, State.ALIVE, 0, local=False)
            table.on_member_event(event, sorted(names), 0.0)
    return table


def record(incident, status, reporter="z"):
    return Reported(incident, status, reporter, 0.0)


def down(table, name, active, now, known=None):
    event = MemberEvent(name, State.SUSPECT, State.DEAD, 0, local=True)
    table.on_member_event(event, active, now, known)


def back(table, name, active, now):
    event = MemberEvent(name, State.DEAD, State.ALIVE, 1, local=False)
    table.on_member_event(event, active, now)


def run(table, until, step=0.05):
    reports, now = [], 0.0
    while now <= until:
        reports += [(now, r) for r in table.due_reports(now)]
        now = round(now + step, 4)
    return reports


def test_learned_group_resolves_once_when_all_are_back():
    names = ["a", "b", "c", "d"]
    group = "members-down/c,d@0"
    # a is ranked first for the group's resolution among the members left.
    assert rank_members(group, ["a", "b"])[0] == "a"
    table = incidents("a", names)
    down(table, "c", ["a", "b", "d"], 1.0)
    down(table, "d", ["a", "b"], 1.0)
    # Another member reported c and d as one group; its records arrive.
    for incident in (group, member_incident_id("c", 0), member_incident_id("d", 0)):
        table.on_record(record(incident, FIRING), 1.1)
    assert table.get(group).kind is Kind.GROUP

    back(table, "c", ["a", "b", "c"], 10.0)
    assert table.get(group).ended is None
    back(table, "d", ["a", "b", "c", "d"], 11.0)
    assert table.get(group).ended == 11.0

    reports = [r for _, r in run(table, 30.0) if r.status == RESOLVED]
    assert [r.incident for r in reports] == [group]
    assert reports[0].kind is Kind.GROUP
    assert reports[0].rank == 0
    assert reports[0].members == (member_incident_id("c", 0), member_incident_id("d", 0))


def test_grouped_member_back_alone_sends_nothing():
    names = ["a", "b", "c", "d"]
    table = incidents("a", names)
    down(table, "c", ["a", "b", "d"], 1.0)
    down(table, "d", ["a", "b"], 1.0)
    for incident in ("members-down/c,d@0", member_incident_id("c", 0), member_incident_id("d", 0)):
        table.on_record(record(incident, FIRING), 1.1)

    back(table, "c", ["a", "b", "c"], 10.0)
    assert [r for _, r in run(table, 30.0) if r.status == RESOLVED] == []


def test_tie_break_offset_separates_equal_ranks():
    """Two members that count different members as dead come out at one rank, apart in time."""
    names = ["a", "b", "c", "d", "e", "f"]
    incident = member_incident_id("f", 0)
    # Over every member but f, the ranking is c, e, d, a, b.
    assert rank_members(incident, ["a", "b", "c", "d", "e"]) == ["c", "e", "d", "a", "b"]
    # a also counts c as dead, b counts c and e: both are at rank 2.
    views = {"a": ["a", "b", "d", "e"], "b": ["a", "b", "d"]}
    turns = {}
    for name, active in views.items():
        table = incidents(name, names, group_wait=0.0)
        down(table, "f", active, 0.0, known=names)
        turns[name] = [(t, r.rank) for t, r in run(table, 10.0, step=0.01)]
    # Offsets: (position 3 - rank 2) / 5 and (4 - 2) / 5 of a hand-off delay.
    assert turns["a"] == [(2 * HANDOFF + 0.3, 2)]
    assert turns["b"] == [(2 * HANDOFF + 0.6, 2)]


def test_lone_report_waits_while_other_deaths_are_unreported():
    names = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]
    table = incidents("a", names, group_wait=1.0, group_share=0.5)
    active = [n for n in names if n not in ("i", "j")]
    down(table, "i", active + ["j"], 0.0)
    down(table, "j", active, 0.0)
    # Two of ten is below the group share: each is reported alone, and the
    # first of them waits half a hand-off delay for a group that may form elsewhere.
    reports = run(table, 20.0)
    lone = [(t, r.incident) for t, r in reports if r.kind is Kind.MEMBER_DOWN]
    assert {incident for _, incident in lone} <= {member_incident_id("i", 0), member_incident_id("j", 0)}
    for t, incident in lone:
        rank = rank_members(incident, active).index("a")
        assert t >= 1.0 + rank * HANDOFF + HANDOFF / 2 - 0.05


def test_member_back_as_suspect_resolves():
    """A dead member that refuted and is suspected again at once is back all the same."""
    names = ["a", "b", "c"]
    table = incidents("a", names, group_wait=0.0)
    down(table, "c", ["a", "b"], 1.0)
    table.on_record(record(member_incident_id("c", 0), FIRING), 1.1)
    event = MemberEvent("c", State.DEAD, State.SUSPECT, 1, local=False)
    table.on_member_event(event, ["a", "b", "c"], 10.0)
    assert table.get(member_incident_id("c", 0)).ended == 10.0


def test_group_record_after_return_takes_over_resolution():
    """The group's record can arrive after its member is back: the group resolves it."""
    names = ["a", "b", "c", "d"]
    group = "members-down/c,d@0"
    table = incidents("a", names, group_wait=1.0)
    down(table, "c", ["a", "b", "d"], 1.0)
    down(table, "d", ["a", "b"], 1.0)
    for incident in (member_incident_id("c", 0), member_incident_id("d", 0)):
        table.on_record(record(incident, FIRING), 1.1)
    back(table, "c", ["a", "b", "c"], 10.0)
    back(table, "d", ["a", "b", "c", "d"], 10.0)
    # Before the lone resolutions' turns, the group's own record arrives.
    table.on_record(record(group, FIRING), 10.5)

    reports = [r for _, r in run(table, 30.0) if r.status == RESOLVED]
    assert [r.incident for r in reports] == [group]
    assert sorted(reports[0].members) == [member_incident_id("c", 0), member_incident_id("d", 0)]


def test_unreported_shared_check_rekeyed():
    table = incidents("a", ["a", "b", "c"])
    incident = table.open("check/web@1000", Kind.SHARED_CHECK, "web", ["a", "b", "c"], 1.0, hold=2.0)
    # A verdict that arrived later moves the quorum's moment, and the id with it.
    table.rekey(incident, "check/web@900", ["a", "b", "c"], start=2.5)
    assert table.get("check/web@1000") is None
    assert table.get("check/web@900") is incident
    ranking = rank_members("check/web@900", ["a", "b", "c"])
    reports = [(t, r.incident) for t, r in run(table, 20.0)]
    assert reports == [(2.5 + ranking.index("a") * HANDOFF, "check/web@900")]


def test_reported_shared_check_keeps_id():
    table = incidents("a", ["a", "b", "c"])
    incident = table.open("check/web@1000", Kind.SHARED_CHECK, "web", ["a", "b", "c"], 1.0)
    table.on_record(record("check/web@1000", FIRING), 1.5)
    table.rekey(incident, "check/web@900", ["a", "b", "c"], start=2.5)
    assert table.get("check/web@1000") is incident
