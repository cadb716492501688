"""Randomized incident scenarios over the protocol core, on virtual time.

Each scenario builds a mesh of 3 to 8 members over the in-memory transport of
tests/memory_mesh.py (seeded, every message delivered in virtual time order),
kills one member, brings it back, and counts the alarms every reporter sends.
A reporter's send path is modelled as the agent runs it: the alarm is written
to the outbox, then the signed ``reported`` record is sent, then the outbox
delivers. Three classes of scenario:

* ``clean``: no other fault. Every incident must be delivered exactly once,
  and resolved exactly once.
* ``crash``: the member that reports the firing alarm crashes at one point of
  its send path (before the outbox write, between the write and the record,
  or between the record and the delivery) and restarts 30 s after the first
  member died, with its outbox and its records. Every incident must be delivered at least once and
  at most twice.
* ``partition``: the mesh splits in two random sides for 40 s. Each side may report
  the other once (grouped), and every firing alarm must be resolved once
  after the heal.
"""

from __future__ import annotations

import collections
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from memory_mesh import MemoryMesh  # noqa: E402

CRASH_POINTS = ("before_write", "before_record", "before_delivery")

# Seconds the mesh runs before the fault: longer than one push-pull interval
# of the local profile (15 s), so that every member has every other in its table.
CONVERGE = 20.0


class SendPathMesh(MemoryMesh):
    """A memory mesh whose members model the agent's send path and outbox."""

    def __init__(self, names, *, seed, crash_point=None, group_wait=2.0):
        self.crash_point = crash_point
        # Alarms written to each member's outbox and not yet delivered.
        self.outboxes: dict[str, list] = collections.defaultdict(list)
        # Records each member keeps on disk, restored at restart.
        self.stored_records: dict[str, tuple] = {}
        self.delivered = collections.Counter()
        self.crashed_reporter: str | None = None
        super().__init__(
            names, seed=seed, handoff_delay=1.5, group_wait=group_wait, group_share=0.3
        )

    def new_node(self, name, seeds):
        node = super().new_node(name, seeds)
        node.restore_records(self.stored_records.get(name, ()), self.now)
        return node

    def start(self, name, seeds=()):
        # A restarted member's outbox delivers what it holds.
        for key in self.outboxes.pop(name, []):
            self.delivered[key] += 1
        # A restarted member rejoins through every other member.
        super().start(name, list(seeds) or [n for n in self.nodes if n != name])

    def _collect(self, name):
        node = self.nodes[name]
        for report in node.drain_reports():
            self.reports.append((self.now, name, report))
            key = (report.incident, report.status)
            crash_here = (
                self.crash_point is not None
                and self.crashed_reporter is None
                and report.status == "firing"
            )
            if crash_here and self.crash_point == "before_write":
                self._crash_reporter(name)
                return
            self.outboxes[name].append(key)
            if crash_here and self.crash_point == "before_record":
                self._crash_reporter(name)
                return
            self._send(name, node.confirm_report(report, self.now))
            self.stored_records[name] = node.incidents.records()
            if crash_here and self.crash_point == "before_delivery":
                self._crash_reporter(name)
                return
            self.outboxes[name].remove(key)
            self.delivered[key] += 1

    def _crash_reporter(self, name):
        self.crashed_reporter = name
        self.crash(name)


def run_clean(seed: int) -> tuple[bool, str]:
    rng = random.Random(seed)
    names = [f"m{i}" for i in range(rng.randint(3, 8))]
    mesh = SendPathMesh(names, seed=seed)
    mesh.run_until(CONVERGE)
    victim = rng.choice(names)
    mesh.crash(victim)
    mesh.run_until(CONVERGE + 30)
    mesh.start(victim)
    mesh.run_until(CONVERGE + 70)
    firing = [k for k in mesh.delivered if k[1] == "firing"]
    ok = len(firing) == 1 and all(n == 1 for n in mesh.delivered.values())
    ok = ok and len(mesh.delivered) == 2
    return ok, f"{len(names)} members, deliveries {dict(mesh.delivered)}"


def run_crash(seed: int, point: str) -> tuple[bool, str]:
    rng = random.Random(seed)
    names = [f"m{i}" for i in range(rng.randint(4, 8))]
    mesh = SendPathMesh(names, seed=seed, crash_point=point, group_wait=0.0)
    mesh.run_until(CONVERGE)
    victim = rng.choice(names)
    mesh.crash(victim)
    mesh.run_until(CONVERGE + 30)
    reporter = mesh.crashed_reporter
    if reporter is not None:
        mesh.start(reporter)
    mesh.run_until(CONVERGE + 60)
    victim_firing = [
        n for (incident, status), n in mesh.delivered.items()
        if status == "firing" and incident.startswith(f"member-down/{victim}@")
    ]
    count = sum(victim_firing)
    ok = 1 <= count <= 2
    return ok, f"{len(names)} members, {point}, reporter {reporter}, delivered {count}"


def run_partition(seed: int) -> tuple[bool, str]:
    rng = random.Random(seed)
    names = [f"m{i}" for i in range(rng.randint(4, 8))]
    mesh = SendPathMesh(names, seed=seed)
    mesh.run_until(CONVERGE)
    shuffled = names[:]
    rng.shuffle(shuffled)
    cut = rng.randint(1, len(names) - 1)
    left, right = shuffled[:cut], shuffled[cut:]
    mesh.partition(left, right)
    mesh.run_until(CONVERGE + 40)
    mesh.heal()
    mesh.run_until(CONVERGE + 140)

    problems = []
    # At most one firing alarm per side about each member of the other side.
    per_subject_side = collections.Counter()
    for _, reporter, report in mesh.reports:
        if report.status != "firing":
            continue
        side = "left" if reporter in left else "right"
        for subject in report.subject.split(","):
            per_subject_side[(subject, side)] += 1
    problems += [f"{k} reported {n} times" for k, n in per_subject_side.items() if n > 1]

    # Every member-down incident reported firing is resolved exactly once.
    firing_members = collections.Counter()
    resolved = collections.Counter()
    for _, _, report in mesh.reports:
        if report.status == "firing":
            for incident in report.members or (report.incident,):
                firing_members[incident] += 1
        else:
            resolved[report.incident] += 1
    for incident in firing_members:
        if resolved[incident] != 1:
            problems.append(f"{incident} resolved {resolved[incident]} times")
    sizes = f"{len(left)}+{len(right)} members"
    return not problems, f"{sizes}: " + ("; ".join(problems) or "ok")


def main(count: int = 200) -> int:
    classes = {
        "clean": [run_clean(seed) for seed in range(count)],
        "crash": [run_crash(seed, CRASH_POINTS[seed % 3]) for seed in range(count)],
        "partition": [run_partition(seed) for seed in range(count)],
    }
    failed = 0
    for name, results in classes.items():
        passed = sum(ok for ok, _ in results)
        print(f"{name:10s} {passed}/{len(results)} scenarios hold")
        for ok, detail in results:
            if not ok:
                failed += 1
                print(f"    failed: {detail}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 200))
