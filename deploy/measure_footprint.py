"""Measure an idle agent's memory and CPU, to size the pod's resources.

Starts a mesh of real agent processes on loopback (the same processes the
end-to-end tests run), lets it settle, then samples each agent's resident
memory and CPU time from /proc for a while, with Prometheus-like scrapes of
/metrics and /peers every few seconds so that the handlers' cost is counted.

    .venv/bin/python deploy/measure_footprint.py [--agents 3] [--seconds 60]
        [--profile lan]

Prints one line per agent and a summary; docs/operations.md quotes the numbers
that the Deployment's requests and limits come from.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.agent_processes import AgentProcesses  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_bytes(pid: int) -> tuple[int, int]:
    """Return the resident set size now and at its peak, in bytes."""
    status = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        status[key] = value.split()
    return int(status["VmRSS"][0]) * 1024, int(status["VmHWM"][0]) * 1024


async def measure(agents: int, seconds: float, profile: str) -> None:
    names = [f"agent-{i}" for i in range(agents)]
    with tempfile.TemporaryDirectory() as root:
        mesh = AgentProcesses(Path(root), names, sinks=[{"name": "log", "type": "log"}])
        for name in names:
            mesh.write_config(name, profile=profile, timing={})
        mesh.start_all()
        try:
            alive = {n: "alive" for n in names}
            await mesh.wait_states(names, alive, timeout=60)
            await trio.sleep(5)
            pids = {n: mesh.processes[n].pid for n in names}
            start = {n: cpu_seconds(pid) for n, pid in pids.items()}
            began = time.monotonic()
            async with httpx.AsyncClient() as client:
                while time.monotonic() - began < seconds:
                    for name in names:
                        base = f"http://{mesh.addresses[name]}"
                        await client.get(f"{base}/metrics")
                        await client.get(f"{base}/peers")
                    await trio.sleep(5)
            elapsed = time.monotonic() - began
            print(
                f"{agents} agents, profile {profile}, {elapsed:.0f} s idle, "
                f"scraped every 5 s; python {sys.version.split()[0]}"
            )
            cpus, rss = [], []
            for name, pid in pids.items():
                used = cpu_seconds(pid) - start[name]
                now, peak = memory_bytes(pid)
                cpus.append(1000 * used / elapsed)
                rss.append(now)
                print(
                    f"  {name}: cpu {1000 * used / elapsed:.1f} millicores, "
                    f"rss {now / 2**20:.1f} MiB (peak {peak / 2**20:.1f} MiB)"
                )
            print(
                f"mean: cpu {sum(cpus) / len(cpus):.1f} millicores, "
                f"rss {sum(rss) / len(rss) / 2**20:.1f} MiB"
            )
        finally:
            mesh.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--profile", default="lan", choices=["local", "lan", "wan"])
    args = parser.parse_args()
    trio.run(measure, args.agents, args.seconds, args.profile)


if __name__ == "__main__":
    main()
