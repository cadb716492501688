"""Randomized incident scenarios over the protocol core, in the simulator.

Each scenario is a :class:`mesh.simulator.Scenario` of 3 to 8 members run by
the simulator under trio's MockClock, on the local timing profile with a 1.5 s
hand-off delay. Members join through m0. Each scenario draws its own latency
distribution and, but for the clean class, a message loss rate of 0 to 2 %;
every draw is seeded by the scenario's number. The simulator models a reporter's send path as the agent
runs it: the alarm is written to the outbox, then the signed ``reported``
record is sent, then the outbox delivers. Three classes of scenario:

* ``clean``: one member crashes and restarts 30 s later, with no other fault
  (no message loss either).
  Every incident must be delivered exactly once, and resolved exactly once.
* ``crash``: one member crashes, and the member that reports the first firing
  alarm crashes at one point of its send path (before the outbox write,
  between the write and the record, or between the record and the delivery).
  It restarts 30 s later with its outbox and its records. Every incident must
  be delivered at least once and at most twice.
* ``partition``: the mesh splits in two random sides for 40 s. Each side may
  report each member of the other side once (grouped), and every firing alarm
  must be resolved once after the heal.

Usage: ``python bench/incident_scenarios.py [COUNT]`` runs COUNT seeds of each
class (200 by default) and exits with 1 if any scenario fails.
"""

from __future__ import annotations

import collections
import random
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import trio
import trio.testing

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mesh.incidents import Report  # noqa: E402
from mesh.simulator import Scenario, Simulation, parse_scenario  # noqa: E402
from mesh.simulator.report import Collector  # noqa: E402
from mesh.simulator.scenario import SEND_PATH_POINTS  # noqa: E402

CRASH_POINTS = SEND_PATH_POINTS

# Seconds the mesh runs before the fault: longer than one push-pull interval
# of the local profile (15 s), so that every member has every other in its table.
CONVERGE = 20.0
# Seconds a crashed member stays down before it restarts.
DOWN_FOR = 30.0
# Grouping of member-down alarms as the local profile sets it.
GROUP_WAIT = 2.0
GROUP_SHARE = 0.3
HANDOFF_DELAY = 1.5
# Upper bound of the message loss rate drawn per scenario.
MAX_LOSS = 0.02
PARTITION_FOR = 40.0


def draw_network(rng: random.Random, *, loss: bool = True) -> dict[str, Any]:
    """Draw a one-way latency distribution and a loss rate for one scenario.

    Delays are those of one machine to one data centre: a median or mean of
    0.5 to 10 ms, so that round trips stay below the local profile's 200 ms
    probe timeout except rarely in a lognormal tail.
    """
    scale = rng.uniform(0.0005, 0.010)
    kind = rng.choice(("constant", "uniform", "lognormal", "exponential"))
    if kind == "constant":
        latency = {"distribution": kind, "value": scale}
    elif kind == "uniform":
        latency = {"distribution": kind, "low": scale / 2, "high": scale * 2}
    elif kind == "lognormal":
        latency = {"distribution": kind, "median": scale, "sigma": rng.uniform(0.2, 0.8)}
    else:
        latency = {"distribution": kind, "mean": scale}
    rate = rng.uniform(0.0, MAX_LOSS)
    return {"latency": latency, "loss": rate if loss else 0.0}


def build_scenario(
    seed: int,
    members: int,
    duration: float,
    events: list[dict[str, Any]],
    network: dict[str, Any],
    group_wait: float = GROUP_WAIT,
) -> Scenario:
    return parse_scenario(
        {
            "members": members,
            "duration": duration,
            "seed": seed,
            "profile": "local",
            "bootstrap": "join",
            "timing": {
                "handoff_delay": HANDOFF_DELAY,
                "group_wait": group_wait,
                "group_share": GROUP_SHARE,
            },
            "network": network,
            "events": events,
        }
    )


def simulate(scenario: Scenario) -> Collector:
    """Run ``scenario`` under trio's MockClock and return what it recorded."""
    simulation = Simulation(scenario)
    trio.run(simulation.run, clock=trio.testing.MockClock(autojump_threshold=0))
    return simulation.collector


def describe_network(network: dict[str, Any]) -> str:
    """Return the latency in milliseconds (sigma as is) and the loss in percent."""
    latency = dict(network["latency"])
    kind = latency.pop("distribution")
    params = []
    for name, value in latency.items():
        params.append(f"{value:.2f}" if name == "sigma" else f"{value * 1000:.2f}ms")
    return f"{kind}:{','.join(params)} loss {network['loss'] * 100:.1f}%"


def timeline(reports: Iterable[tuple[float, str, Report]]) -> str:
    """Return the reports as ``time reporter status incident (rank)``, for failures."""
    lines = [
        f"{at:.2f}s {reporter} {report.status} {report.incident} (rank {report.rank})"
        for at, reporter, report in reports
    ]
    return "; ".join(lines) or "no reports"


def incidents_of(report: Report) -> tuple[str, ...]:
    """Return the member-down incidents a report covers: a group's members, or its own."""
    return report.members or (report.incident,)


def victim_incident(incident: str, victim: str) -> bool:
    return incident.startswith(f"member-down/{victim}@")


def run_clean(seed: int) -> tuple[bool, str]:
    rng = random.Random(seed)
    names = [f"m{i}" for i in range(rng.randint(3, 8))]
    victim = rng.choice(names)
    # No faults but the crash: latency varies, no message is lost.
    network = draw_network(rng, loss=False)
    events = [
        {"at": CONVERGE, "crash": [victim]},
        {"at": CONVERGE + DOWN_FOR, "restart": [victim]},
    ]
    collector = simulate(build_scenario(seed, len(names), CONVERGE + 70, events, network))

    problems = []
    reported = {(r.incident, r.status) for _, _, r in collector.reports}
    for key in sorted(reported | set(collector.deliveries)):
        if collector.deliveries[key] != 1:
            problems.append(f"{key[1]} {key[0]} delivered {collector.deliveries[key]} times")
    firing = {i for _, _, r in collector.reports if r.status == "firing" for i in incidents_of(r)}
    for incident in sorted(firing):
        resolved = collector.deliveries[(incident, "resolved")]
        if resolved != 1:
            problems.append(f"{incident} resolved {resolved} times")
    if not any(victim_incident(i, victim) for i in firing):
        problems.append(f"no firing alarm about the victim {victim}")
    detail = f"seed {seed}, {len(names)} members, victim {victim}, {describe_network(network)}"
    if problems:
        detail += ": " + "; ".join(problems) + "; reports: " + timeline(collector.reports)
    else:
        detail += f", deliveries {dict(collector.deliveries)}"
    return not problems, detail


def run_crash(seed: int, point: str) -> tuple[bool, str]:
    rng = random.Random(seed)
    names = [f"m{i}" for i in range(rng.randint(4, 8))]
    victim = rng.choice(names)
    network = draw_network(rng)
    events = [
        {"at": CONVERGE, "crash": [victim]},
        {"at": CONVERGE, "crash_reporter": point, "for": DOWN_FOR},
    ]
    # Grouping off: the victim and the crashed reporter go down close
    # together, and each must be reported on its own for the counts to check
    # the hand-off after a reporter crash.
    scenario = build_scenario(seed, len(names), CONVERGE + 60, events, network, group_wait=0.0)
    collector = simulate(scenario)

    problems = []
    reported = {(r.incident, r.status) for _, _, r in collector.reports}
    for key in sorted(reported | set(collector.deliveries)):
        count = collector.deliveries[key]
        if not 1 <= count <= 2:
            problems.append(f"{key[1]} {key[0]} delivered {count} times")
    victim_firing = sum(
        n for (incident, status), n in collector.deliveries.items()
        if status == "firing" and victim_incident(incident, victim)
    )
    if not victim_firing:
        problems.append(f"no firing alarm about the victim {victim} delivered")
    if collector.reporter_crashes:
        at, reporter, _ = collector.reporter_crashes[0]
        crashed = f"reporter {reporter} crashed at {at:.2f}s"
    else:
        crashed = "no reporter crashed"
    detail = (
        f"seed {seed}, {len(names)} members, {point}, victim {victim}, {crashed}, "
        f"{describe_network(network)}, victim delivered {victim_firing}"
    )
    if problems:
        detail += ": " + "; ".join(problems) + "; reports: " + timeline(collector.reports)
    return not problems, detail


def run_partition(seed: int) -> tuple[bool, str]:
    rng = random.Random(seed)
    names = [f"m{i}" for i in range(rng.randint(4, 8))]
    shuffled = names[:]
    rng.shuffle(shuffled)
    cut = rng.randint(1, len(names) - 1)
    left, right = shuffled[:cut], shuffled[cut:]
    network = draw_network(rng)
    heal = CONVERGE + PARTITION_FOR
    events = [{"at": CONVERGE, "partition": left}, {"at": heal, "heal": True}]
    collector = simulate(build_scenario(seed, len(names), CONVERGE + 140, events, network))

    problems = []
    # At most one firing alarm per side about each member of the other side.
    per_subject_side = collections.Counter()
    for _, reporter, report in collector.reports:
        if report.status != "firing":
            continue
        side = "left" if reporter in left else "right"
        for subject in report.subject.split(","):
            per_subject_side[(subject, side)] += 1
    problems += [f"{k} reported {n} times" for k, n in per_subject_side.items() if n > 1]

    # Every firing alarm, grouped or not, is resolved exactly once after the
    # heal, and so is every member-down incident a group stood for.
    firing = collections.Counter()
    resolved = collections.Counter()
    for at, _, report in collector.reports:
        alarms = {report.incident, *incidents_of(report)}
        if report.status == "firing":
            firing.update(alarms)
        elif at >= heal:
            resolved.update(alarms)
        else:
            problems.append(f"{report.incident} resolved at {at:.2f}s, before the heal")
    for incident in firing:
        if resolved[incident] != 1:
            problems.append(f"{incident} resolved {resolved[incident]} times")

    detail = (
        f"seed {seed}, {len(left)}+{len(right)} members "
        f"(left {','.join(sorted(left))}), {describe_network(network)}: "
    )
    if problems:
        detail += "; ".join(problems) + "; reports: " + timeline(collector.reports)
    else:
        detail += "ok"
    return not problems, detail


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
