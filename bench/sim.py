"""Simulator benchmarks: Lifeguard's false-positive case and the 1,000-member run.

* ``bench/scenarios/lifeguard.yaml``: 100 members, 10 % message loss, three
  members starved 5 s every 30 s, for 10 simulated minutes, once per seed.
  Target: no member that never crashed is declared dead.
* ``bench/scenarios/partition.yaml``: 200 members, a fifth of them cut off for
  a minute; reports the time from the heal until every member holds every
  other alive.
* ``bench/scenarios/thousand.yaml``: 1,000 members for 10 simulated minutes.
  Target: under 2 minutes of wall time.

Wall time depends on what else the machine runs, so the CPU time of the
process and the load average are printed next to it.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mesh.simulator import format_report, load_scenario, parse_scenario, run_simulation  # noqa: E402

SCENARIOS = ROOT / "bench" / "scenarios"
WALL_TARGET = 120.0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(path: Path, seed: int | None) -> tuple[object, float, float]:
    raw = load_scenario(path)
    if seed is not None:
        raw["seed"] = seed
    scenario = parse_scenario(raw)
    cpu = cpu_seconds()
    report = run_simulation(scenario)
    return report, report.wall_seconds, cpu_seconds() - cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3", help="seeds of the lifeguard scenario")
    parser.add_argument("--skip-thousand", action="store_true", help="skip the 1,000-member run")
    parser.add_argument("--verbose", action="store_true", help="print every full report")
    args = parser.parse_args(argv)

    rows = []
    for seed in [int(s) for s in args.seeds.split(",") if s]:
        load = os.getloadavg()[0]
        report, wall, cpu = run(SCENARIOS / "lifeguard.yaml", seed)
        if args.verbose:
            print(format_report(report))
        firsts = [c.first_dead for c in report.crashes if c.first_dead is not None]
        rows.append(
            f"| lifeguard | {seed} | {report.false_dead_members} | {report.false_dead_events} | "
            f"{report.suspected_members} | {report.refutations} | "
            f"{max(firsts) if firsts else float('nan'):.2f} | "
            f"{sum(report.bytes.values()) / report.members / report.duration:.0f} | "
            f"{wall:.1f} | {cpu:.1f} | {load:.1f} |"
        )
        verdict = "met" if report.false_dead_members == 0 else "MISSED"
        rows[-1] += f" no false dead: {verdict} |"

    load = os.getloadavg()[0]
    report, wall, cpu = run(SCENARIOS / "partition.yaml", None)
    if args.verbose:
        print(format_report(report))
    heals = ", ".join("-" if h.converged is None else f"{h.converged:.1f} s" for h in report.heals)
    rows.append(
        f"| partition | {report.seed} | {report.false_dead_members} | {report.false_dead_events} | "
        f"{report.suspected_members} | {report.refutations} | - | "
        f"{sum(report.bytes.values()) / report.members / report.duration:.0f} | "
        f"{wall:.1f} | {cpu:.1f} | {load:.1f} | converged after heal: {heals} |"
    )

    if not args.skip_thousand:
        load = os.getloadavg()[0]
        report, wall, cpu = run(SCENARIOS / "thousand.yaml", None)
        if args.verbose:
            print(format_report(report))
        firsts = [c.first_dead for c in report.crashes if c.first_dead is not None]
        verdict = "met" if wall < WALL_TARGET else "MISSED"
        rows.append(
            f"| thousand | {report.seed} | {report.false_dead_members} | {report.false_dead_events} | "
            f"{report.suspected_members} | {report.refutations} | "
            f"{max(firsts) if firsts else float('nan'):.2f} | "
            f"{sum(report.bytes.values()) / report.members / report.duration:.0f} | "
            f"{wall:.1f} | {cpu:.1f} | {load:.1f} | wall < {WALL_TARGET:g} s: {verdict} |"
        )

    print(
        "| scenario | seed | members wrongly declared dead | declarations | suspicions "
        "(member, incarnation) | refutations | slowest first detection (s) | frame B/s "
        "per member | wall s | CPU s | load | target |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
