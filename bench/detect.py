"""Failure detection of real agents, Alarminati against Serf, in one run.

For each mesh size and repetition, and for each kind in turn, the benchmark
starts N agents in a fresh network namespace on the same timing (Serf's lan
profile and our lan profile: probe interval 1 s, probe timeout 500 ms,
suspicion multiplier 4, maximum suspicion 6 × minimum, 3 indirect probes,
gossip every 200 ms to 3 members, push-pull every 30 s), waits until every
agent has logged every other as joined, lets the mesh idle, and measures over
the idle window:

* bytes sent per agent per second: the namespace's ``lo`` transmit counter
  (IP packets, headers included, TCP and UDP alike) divided by N and seconds;
* CPU per agent, percent of one core, from /proc/PID/stat;
* RSS per agent, MiB.

Then it kills one agent with SIGKILL and stamps the log line with which each
survivor declares it failed (``member dead`` for Alarminati,
``EventMemberFailed`` for Serf): the first survivor's time and the last's.

A second part runs a lossy mesh: every packet inside the namespace is dropped
with probability 0.1 (iptables, inside the namespace only) and three agents are
stopped with SIGSTOP for 5 s every 30 s, and the benchmark counts suspicions
and failure declarations of agents that never crashed.

The stack's import floor is measured in the same run, as the RSS of a Python
process that imports trio, httpx, hypercorn, msgpack, PyNaCl,
prometheus-client and PyYAML and nothing else.

Run as root (namespaces and iptables): ``just bench-detect``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from detect_agents import (  # noqa: E402
    Agent,
    Namespace,
    start_alarminati,
    start_alarminati_with_webhook,
    start_serf,
    stop_all,
    wait_converged,
)

# "alarminati-webhook" is run at N = 20 only, for its memory with a receiver.
STARTERS = {
    "alarminati": start_alarminati,
    "alarminati-webhook": start_alarminati_with_webhook,
    "serf": start_serf,
}
MEMORY_SIZE = 20
IMPORT_FLOOR_CODE = (
    "import trio, httpx, hypercorn.trio, msgpack, nacl.signing, prometheus_client, yaml\n"
    "print([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1])"
)
# Targets, as ratios or absolute values.
FIRST_DETECTION_RATIO = 1.0
ALL_SURVIVORS_RATIO = 1.5
IDLE_BYTES_RATIO = 3.0
IDLE_BYTES_SPREAD = 0.20
RSS_ABOVE_FLOOR_MIB = 5.0
RSS_LIMIT_MIB = 40.0
IDLE_CPU_PERCENT = 1.0


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def import_floor_mib() -> float:
    output = subprocess.run(
        [sys.executable, "-c", IMPORT_FLOOR_CODE], capture_output=True, text=True, check=True
    ).stdout
    return int(output.strip()) / 1024


def namespace_name(*parts: object) -> str:
    return "am-bench-" + "-".join(str(p) for p in (os.getpid(), *parts))


def detection_run(kind: str, count: int, repetition: int, args: argparse.Namespace) -> dict:
    """Start, idle, kill one, and measure; return the figures of one run."""
    result: dict = {"kind": kind, "members": count, "repetition": repetition}
    with tempfile.TemporaryDirectory() as tmp, Namespace(namespace_name(kind, count, repetition)) as ns:
        agents = STARTERS[kind](ns, count, Path(tmp))
        try:
            converged = wait_converged(agents, args.converge_timeout)
            if converged is None:
                result["error"] = "did not converge"
                return result
            result["converge_seconds"] = round(converged, 2)
            time.sleep(args.settle)

            # Idle window: bytes on lo, CPU and RSS of every agent.
            tx_before, cpu_before = ns.tx_bytes(), [a.cpu_seconds() for a in agents]
            started = time.monotonic()
            time.sleep(args.idle)
            elapsed = time.monotonic() - started
            tx_after, cpu_after = ns.tx_bytes(), [a.cpu_seconds() for a in agents]
            result["idle_bytes_per_agent_second"] = (tx_after - tx_before) / count / elapsed
            cpu = [(b - a) / elapsed * 100 for a, b in zip(cpu_before, cpu_after)]
            result["idle_cpu_percent"] = statistics.median(cpu)
            result["rss_mib"] = statistics.median(a.rss_mib() for a in agents)
            result["idle_suspicions"] = sum(a.count("suspect", started) for a in agents)

            # Crash one member that is not a seed, and time the survivors.
            victim = agents[count // 2]
            survivors = [a for a in agents if a is not victim]
            killed_at = time.monotonic()
            victim.signal(signal.SIGKILL)
            times = wait_declared_dead(survivors, victim.name, killed_at, args.detect_timeout)
            if times:
                result["first_detection"] = min(times) - killed_at
            if len(times) == len(survivors):
                result["all_survivors"] = max(times) - killed_at
            result["declared_by"] = len(times)
        finally:
            stop_all(agents)
    return result


def wait_declared_dead(survivors: list[Agent], name: str, since: float, timeout: float) -> list[float]:
    deadline = since + timeout
    while True:
        times = [t for a in survivors if (t := a.events("dead", since).get(name)) is not None]
        if len(times) == len(survivors) or time.monotonic() > deadline:
            return times
        time.sleep(0.1)


def loss_run(kind: str, count: int, args: argparse.Namespace) -> dict:
    """Run a lossy mesh with starved members; count false suspicions and deaths."""
    result: dict = {"kind": kind, "members": count, "loss": args.loss, "seconds": args.loss_duration}
    name = namespace_name("loss", kind, count)
    with tempfile.TemporaryDirectory() as tmp, Namespace(name, loss=args.loss) as ns:
        agents = STARTERS[kind](ns, count, Path(tmp))
        try:
            converged = wait_converged(agents, args.converge_timeout * 3)
            if converged is None:
                result["error"] = "did not converge"
                return result
            starved = agents[1:4]
            started = time.monotonic()
            end = started + args.loss_duration
            # Each starved agent freezes for 5 s every 30 s, 10 s apart.
            schedule = sorted(
                (started + offset + k * 30, agent)
                for offset, agent in zip((10, 20, 30), starved)
                for k in range(int(args.loss_duration // 30) + 1)
            )
            for at, agent in schedule:
                if at + 5 > end:
                    break
                time.sleep(max(0.0, at - time.monotonic()))
                agent.signal(signal.SIGSTOP)
                time.sleep(5)
                agent.signal(signal.SIGCONT)
            time.sleep(max(0.0, end - time.monotonic()))

            declared = 0
            members_declared = set()
            suspicions = 0
            for agent in agents:
                dead = agent.events("dead", started)
                members_declared.update(dead)
                declared += agent.count("dead", started)
                suspicions += agent.count("suspect", started)
            result["false_dead_declarations"] = declared
            result["members_declared_dead"] = sorted(members_declared)
            result["suspicions_raised"] = suspicions
        finally:
            stop_all(agents)
    return result


def median_of(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def summarize(results: list[dict], floor: float, args: argparse.Namespace) -> str:
    lines = [
        "| N | kind | first detection (s) | all survivors (s) | idle B/s per agent | "
        "idle CPU % | RSS MiB | runs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ratios: dict[int, dict[str, float | None]] = {}
    idle_bytes: dict[int, float | None] = {}
    kinds = args.kinds + sorted({r["kind"] for r in results} - set(args.kinds))
    for count in args.sizes:
        medians = {}
        for kind in kinds:
            runs = [r for r in results if r["kind"] == kind and r["members"] == count]
            if not runs:
                continue
            m = {k: median_of(runs, k) for k in (
                "first_detection", "all_survivors", "idle_bytes_per_agent_second",
                "idle_cpu_percent", "rss_mib",
            )}
            medians[kind] = m
            fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
            ok_runs = sum(1 for r in runs if "error" not in r)
            lines.append(
                f"| {count} | {kind} | {fmt(m['first_detection'], '.2f')} | "
                f"{fmt(m['all_survivors'], '.2f')} | {fmt(m['idle_bytes_per_agent_second'], '.0f')} | "
                f"{fmt(m['idle_cpu_percent'], '.2f')} | {fmt(m['rss_mib'], '.1f')} | {ok_runs}/{len(runs)} |"
            )
        if {"alarminati", "serf"} <= set(medians):
            a, s = medians["alarminati"], medians["serf"]
            ratios[count] = {
                k: (a[k] / s[k] if a[k] is not None and s[k] else None)
                for k in ("first_detection", "all_survivors", "idle_bytes_per_agent_second")
            }
            ratios[count]["all_vs_serf_first"] = (
                a["all_survivors"] / s["all_survivors"]
                if a["all_survivors"] is not None and s["all_survivors"]
                else None
            )
        if "alarminati" in medians:
            idle_bytes[count] = medians["alarminati"]["idle_bytes_per_agent_second"]

    lines += ["", "Ratios Alarminati / Serf (medians):", ""]
    lines += ["| N | first detection | all survivors | idle bytes |", "|---|---|---|---|"]
    for count, r in ratios.items():
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        lines.append(
            f"| {count} | {fmt(r['first_detection'])} | {fmt(r['all_survivors'])} | "
            f"{fmt(r['idle_bytes_per_agent_second'])} |"
        )

    # Targets, each stated plainly.
    lines += ["", "Targets:", ""]
    firsts = [r["first_detection"] for r in ratios.values() if r["first_detection"] is not None]
    if firsts:
        value = statistics.median(firsts)
        lines.append(
            f"- first detection, median ratio to Serf ≤ {FIRST_DETECTION_RATIO}: "
            f"{value:.2f} ({verdict(value <= FIRST_DETECTION_RATIO)})"
        )
    alls = [r["all_survivors"] for r in ratios.values() if r["all_survivors"] is not None]
    if alls:
        worst = max(alls)
        lines.append(
            f"- all survivors within {ALL_SURVIVORS_RATIO} × Serf's time: worst ratio "
            f"{worst:.2f} ({verdict(worst <= ALL_SURVIVORS_RATIO)})"
        )
    known = [v for v in idle_bytes.values() if v]
    if len(known) >= 2:
        spread = (max(known) - min(known)) / statistics.median(known)
        lines.append(
            f"- idle bytes per agent constant within ±{IDLE_BYTES_SPREAD:.0%} from N = "
            f"{min(idle_bytes)} to {max(idle_bytes)}: {min(known):.0f}–{max(known):.0f} B/s, "
            f"spread {spread:.0%} of the median ({verdict(spread <= 2 * IDLE_BYTES_SPREAD)})"
        )
    byte_ratios = [r["idle_bytes_per_agent_second"] for r in ratios.values() if r["idle_bytes_per_agent_second"]]
    if byte_ratios:
        worst = max(byte_ratios)
        lines.append(
            f"- idle bytes at most {IDLE_BYTES_RATIO} × Serf's: worst ratio {worst:.2f} "
            f"({verdict(worst <= IDLE_BYTES_RATIO)})"
        )
    def at_memory_size(kind: str) -> list[dict]:
        return [
            r for r in results
            if r["kind"] == kind and r["members"] == MEMORY_SIZE and "rss_mib" in r
        ]

    at20 = at_memory_size("alarminati")
    if at20:
        rss = statistics.median(r["rss_mib"] for r in at20)
        cpu = statistics.median(r["idle_cpu_percent"] for r in at20)
        lines.append(
            f"- memory at N = {MEMORY_SIZE}: import floor {floor:.1f} MiB, idle agent {rss:.1f} MiB, "
            f"{rss - floor:+.1f} MiB over the floor (target ≤ {RSS_ABOVE_FLOOR_MIB:g} MiB "
            f"over and ≤ {RSS_LIMIT_MIB:g} MiB: "
            f"{verdict(rss - floor <= RSS_ABOVE_FLOOR_MIB and rss <= RSS_LIMIT_MIB)})"
        )
        with_webhook = at_memory_size("alarminati-webhook")
        if with_webhook:
            rss = statistics.median(r["rss_mib"] for r in with_webhook)
            lines.append(
                f"- the same agent with a webhook receiver, which loads httpx: {rss:.1f} MiB, "
                f"{rss - floor:+.1f} MiB over the floor (≤ {RSS_ABOVE_FLOOR_MIB:g} MiB over: "
                f"{verdict(rss - floor <= RSS_ABOVE_FLOOR_MIB)}, ≤ {RSS_LIMIT_MIB:g} MiB: "
                f"{verdict(rss <= RSS_LIMIT_MIB)})"
            )
        lines.append(
            f"- idle CPU at N = 20: {cpu:.2f} % of a core "
            f"({verdict(cpu < IDLE_CPU_PERCENT)} < {IDLE_CPU_PERCENT:g} %)"
        )
    return "\n".join(lines)


def summarize_loss(results: list[dict]) -> str:
    lines = [
        "| kind | members | loss | seconds | suspicions raised | failure declarations | members declared failed |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['kind']} | {r['members']} | {r['loss']} | - | {r['error']} | - | - |")
            continue
        lines.append(
            f"| {r['kind']} | {r['members']} | {r['loss']} | {r['seconds']:g} | "
            f"{r['suspicions_raised']} | {r['false_dead_declarations']} | "
            f"{len(r['members_declared_dead'])} |"
        )
    return "\n".join(lines)


def machine() -> str:
    model = ""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    load = os.getloadavg()
    return (
        f"{os.cpu_count()} cores ({model or platform.processor()}), Linux "
        f"{platform.release()}, Python {platform.python_version()}, "
        f"load average at start {load[0]:.1f}"
    )


def serf_version() -> str:
    try:
        return subprocess.run(["serf", "version"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        return "serf not found"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5,20,50", help="mesh sizes, comma-separated")
    parser.add_argument("--kinds", default="alarminati,serf", help="agent kinds to run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per size and kind")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds between convergence and the idle window")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of the idle window")
    parser.add_argument("--converge-timeout", type=float, default=90.0, help="seconds to wait for convergence")
    parser.add_argument("--detect-timeout", type=float, default=90.0, help="seconds to wait for every survivor")
    parser.add_argument("--loss", type=float, default=0.1, help="packet loss of the lossy run")
    parser.add_argument("--loss-members", type=int, default=100, help="agents in the lossy run")
    parser.add_argument("--loss-duration", type=float, default=600.0, help="seconds of the lossy run")
    parser.add_argument("--loss-kinds", default="serf", help="kinds run under loss (Alarminati's comes from the simulator)")
    parser.add_argument("--skip-loss", action="store_true", help="skip the lossy run")
    parser.add_argument(
        "--skip-receiver", action="store_true",
        help=f"skip the run at N = {MEMORY_SIZE} with a webhook receiver configured",
    )
    parser.add_argument("--json", help="write every run's figures to this file")
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.kinds = args.kinds.split(",")
    args.loss_kinds = [k for k in args.loss_kinds.split(",") if k]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench-detect: network namespaces need root", file=sys.stderr)
        return 2
    command = "python bench/detect.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    header = [f"Machine: {machine()}", f"Serf: {serf_version()}", f"Command: `{command.strip()}`"]
    floor = import_floor_mib()
    log(f"import floor {floor:.1f} MiB")

    results = []
    for repetition in range(args.repeats):
        for count in args.sizes:
            for kind in args.kinds:
                log(f"run {repetition + 1}/{args.repeats}: {kind} N={count}")
                result = detection_run(kind, count, repetition, args)
                log(f"  {json.dumps(result)}")
                results.append(result)
        if "alarminati" in args.kinds and MEMORY_SIZE in args.sizes and not args.skip_receiver:
            log(f"run {repetition + 1}/{args.repeats}: alarminati-webhook N={MEMORY_SIZE}")
            result = detection_run("alarminati-webhook", MEMORY_SIZE, repetition, args)
            log(f"  {json.dumps(result)}")
            results.append(result)

    loss_results = []
    if not args.skip_loss:
        for kind in args.loss_kinds:
            log(f"lossy run: {kind} N={args.loss_members} for {args.loss_duration:g}s")
            result = loss_run(kind, args.loss_members, args)
            log(f"  {json.dumps(result)}")
            loss_results.append(result)

    report = "\n".join(header) + "\n\n" + summarize(results, floor, args)
    if loss_results:
        report += "\n\nLossy mesh, false positives (agents never crashed):\n\n" + summarize_loss(loss_results)
    print(report)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"floor_mib": floor, "runs": results, "loss": loss_results}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
