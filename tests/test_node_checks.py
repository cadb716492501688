"""Checks, shared quorums, egress and grouping in the protocol core.

Nodes run over the in-memory transport of memory_mesh with exact virtual
times; check results are fed by hand, as the runtime would feed them.
"""

import dataclasses

from memory_mesh import MemoryMesh


@dataclasses.dataclass(frozen=True)
class Spec:
    name: str
    interval: float = 1.0
    shared: bool = False
    quorum: float = 0.5
    fail_for: float = 0.0
    resolve_for: float = 0.0
    min_alarm_interval: float = 0.0


class CheckMesh(MemoryMesh):
    """A memory mesh whose members run the given checks and group outages."""

    def __init__(self, names, checks, *, group_wait=0.0, group_share=1.0, **kwargs):
        super().__init__(
            names, checks=checks, group_wait=group_wait, group_share=group_share, **kwargs
        )

    def observe(self, name, check, ok, summary="result"):
        node = self.nodes[name]
        node.observe_check(check, ok, summary, self.now, 1_800_000_000 + self.now)
        self._collect(name)


def reports(mesh, status=None):
    return [r for _, _, r in mesh.reports if status is None or r.status == status]


def test_local_check_reported_by_its_member_once():
    mesh = CheckMesh(["a", "b", "c"], [Spec("apiserver")])
    mesh.run_until(5)
    mesh.observe("b", "apiserver", False, "GET /readyz returned 500")
    mesh.run_until(10)
    mesh.observe("b", "apiserver", False)
    mesh.observe("b", "apiserver", True, "GET /readyz returned 200")
    mesh.run_until(15)
    firing = [(t, who, r) for t, who, r in mesh.reports if r.status == "firing"]
    assert len(firing) == 1
    assert firing[0][1] == "b"
    assert firing[0][2].detail == "GET /readyz returned 500"
    assert len(reports(mesh, "resolved")) == 1


def run_shared(mesh, verdicts, until):
    """Feed every member's result for the shared check until ``until``."""
    while mesh.now < until:
        for name, ok in verdicts.items():
            mesh.observe(name, "shop", ok)
        mesh.run_until(mesh.now + 1)


def test_shared_check_fires_once_on_quorum():
    mesh = CheckMesh(["a", "b", "c"], [Spec("shop", shared=True)])
    mesh.run_until(5)
    run_shared(mesh, {"a": True, "b": True, "c": True}, 8)
    run_shared(mesh, {"a": False, "b": False, "c": True}, 20)
    firing = reports(mesh, "firing")
    assert len(firing) == 1
    assert firing[0].kind.value == "shared_check"
    assert set(firing[0].observers) == {"a", "b"}

    run_shared(mesh, {"a": True, "b": True, "c": True}, 30)
    assert len(reports(mesh, "resolved")) == 1
    assert reports(mesh, "resolved")[0].incident == firing[0].incident


def test_shared_check_one_failing_member_is_egress_not_outage():
    mesh = CheckMesh(["a", "b", "c"], [Spec("shop", shared=True)])
    mesh.run_until(5)
    run_shared(mesh, {"a": True, "b": True, "c": True}, 8)
    run_shared(mesh, {"a": True, "b": True, "c": False}, 20)
    firing = reports(mesh, "firing")
    assert [r.kind.value for r in firing] == ["egress"]
    assert firing[0].subject == "c/shop"
    reporter = [who for _, who, r in mesh.reports if r is firing[0]][0]
    assert reporter in ("a", "b")

    run_shared(mesh, {"a": True, "b": True, "c": True}, 30)
    assert [r.kind.value for r in reports(mesh, "resolved")] == ["egress"]


def test_many_members_down_at_once_grouped():
    names = [f"m{i}" for i in range(8)]
    mesh = CheckMesh(names, [], group_wait=3.0, group_share=0.3)
    mesh.run_until(10)
    for name in names[:4]:
        mesh.crash(name)
    mesh.run_until(60)
    firing = reports(mesh, "firing")
    assert len(firing) == 1
    assert firing[0].kind.value == "group"
    assert firing[0].subject == "m0,m1,m2,m3"
    assert len(firing[0].members) == 4


def test_one_member_down_not_grouped():
    names = [f"m{i}" for i in range(8)]
    mesh = CheckMesh(names, [], group_wait=3.0, group_share=0.3)
    mesh.run_until(10)
    mesh.crash("m5")
    mesh.run_until(40)
    firing = reports(mesh, "firing")
    assert [r.kind.value for r in firing] == ["member_down"]


def test_restarted_member_takes_over_reported_check_incident():
    mesh = CheckMesh(["a", "b"], [Spec("apiserver")])
    mesh.run_until(5)
    mesh.observe("a", "apiserver", False)
    mesh.run_until(8)
    records = mesh.nodes["a"].incidents.records()
    assert len(reports(mesh, "firing")) == 1

    mesh.crash("a")
    mesh.start("a", seeds=["b"])
    mesh.nodes["a"].restore_records(records, mesh.now)
    mesh.observe("a", "apiserver", False)
    mesh.run_until(12)
    assert len(reports(mesh, "firing")) == 1

    mesh.observe("a", "apiserver", True)
    mesh.run_until(15)
    resolved = reports(mesh, "resolved")
    assert len(resolved) == 1
    assert resolved[0].incident == reports(mesh, "firing")[0].incident


def test_partition_each_side_reports_other_side_once_then_resolves():
    names = [f"m{i}" for i in range(6)]
    mesh = CheckMesh(names, [], group_wait=3.0, group_share=0.3)
    mesh.run_until(10)
    for name in names:
        assert set(mesh.states(name).values()) == {"alive"}

    left, right = names[:3], names[3:]
    mesh.partition(left, right)
    mesh.run_until(60)
    firing = reports(mesh, "firing")
    assert len(firing) == 2
    assert sorted(r.subject for r in firing) == ["m0,m1,m2", "m3,m4,m5"]
    assert all(r.kind.value == "group" for r in firing)

    mesh.heal()
    mesh.run_until(150)
    for name in names:
        assert set(mesh.states(name).values()) == {"alive"}
    # Each group resolves as one alarm, standing for its members' incidents.
    resolved = reports(mesh, "resolved")
    assert sorted(r.subject for r in resolved) == ["m0,m1,m2", "m3,m4,m5"]
    assert all(r.kind.value == "group" for r in resolved)
    assert sorted(i for r in resolved for i in r.members) == [f"member-down/{n}@0" for n in names]
    assert len(reports(mesh, "firing")) == 2
