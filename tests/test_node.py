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
