"""Protocol-core behaviour over the in-memory transport."""

from memory_mesh import MemoryMesh


def test_mesh_converges_alive():
    mesh = MemoryMesh(["a", "b", "c"])
    mesh.run_until(5)
    for name in "abc":
        assert mesh.states(name) == {"a": "alive", "b": "alive", "c": "alive"}


def test_crash_reported_once_then_resolved_once():
    mesh = MemoryMesh(["a", "b", "c", "d"])
    mesh.run_until(5)
    mesh.crash("c")
    mesh.run_until(30)
    for name in "abd":
        assert mesh.states(name)["c"] == "dead"
    firing = [r for r in mesh.reports if r[2].status == "firing"]
    assert len(firing) == 1
    assert firing[0][2].subject == "c"

    mesh.start("c", seeds=["a"])
    mesh.run_until(60)
    for name in "abd":
        assert mesh.states(name)["c"] == "alive"
    resolved = [r for r in mesh.reports if r[2].status == "resolved"]
    assert len(resolved) == 1
    assert resolved[0][2].incident == firing[0][2].incident


def test_graceful_leave_raises_no_incident():
    mesh = MemoryMesh(["a", "b", "c"])
    mesh.run_until(5)
    mesh.leave("b")
    mesh.run_until(5.01)
    mesh.crash("b")
    mesh.run_until(30)
    assert mesh.states("a")["b"] == "left"
    assert mesh.states("c")["b"] == "left"
    assert mesh.reports == []


def test_rank_one_takes_over_when_rank_zero_also_dies():
    mesh = MemoryMesh(["a", "b", "c", "d", "e"])
    mesh.run_until(5)
    from mesh.election import rank_members
    from mesh.incidents import member_incident_id

    incident = member_incident_id("e", 0)
    first = rank_members(incident, ["a", "b", "c", "d"])[0]
    mesh.crash("e")
    mesh.crash(first)
    mesh.run_until(60)
    firing_e = [r for r in mesh.reports if r[2].incident == incident]
    assert len(firing_e) == 1
    assert firing_e[0][1] != first
    assert firing_e[0][2].rank >= 1


def test_confirmed_record_is_sent_again_before_next_rank():
    from mesh.incidents import Kind, Report
    from mesh.messages import Gossip
    from mesh.node import RECORD_RESEND_SHARE

    mesh = MemoryMesh(["a", "b", "c"])
    mesh.run_until(5)
    node = mesh.nodes["a"]
    report = Report("member-down/c@0", Kind.MEMBER_DOWN, "firing", "c", ("a", "b"), 5.0, None, 0)
    direct = node.confirm_report(report, 1000.0, 5.0)
    assert sorted(o.target for o in direct) == ["b", "c"]
    assert all(isinstance(o.message, Gossip) for o in direct)

    resend_at = 5.0 + RECORD_RESEND_SHARE * node.incidents.handoff_delay
    assert node.next_deadline() <= resend_at
    # The very same messages, not gossip that happens to carry the record.
    again = [o for o in node.tick(resend_at) if any(o is d for d in direct)]
    assert len(again) == len(direct)
    later = [o for o in node.tick(resend_at + 10) if any(o is d for d in direct)]
    assert later == []
