"""Alarminati: 3 agent processes on loopback running the same shared HTTP checks.

Each agent runs one shared check per target (1 s interval, no ``for`` delay),
so an incident is seen by all three members when the targets start returning
503. The quorum (more than half of the members that run the check) fails at
the second failing member. The failing members rank themselves for the
incident by rendezvous hashing (:func:`mesh.election.rank_members`), and the
rank-k member waits k hand-off delays for a ``reported`` record before it sends.

A member killed before the event never fails the check, so it is not among
the ranked members. The incidents it would have ranked first (over all three
members) show what its death costs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import trio
import yaml

from dedup_http import BenchServer, Delivery
from dedup_outcome import RoundOutcome, free_port, wait_for_deliveries
from mesh.election import rank_members
from mesh.keys import encode_public_key, generate_key_files

__all__ = ["AgentMesh", "run_alarminati"]

MEMBERS = ["seoul", "tokyo", "busan"]
# Seconds between two runs of a check, and the deadline of one run.
CHECK_INTERVAL = 1.0
CHECK_TIMEOUT = 0.5
# Seconds a check must pass again before its incident resolves.
RESOLVE_FOR = 1.0
CHECK_PREFIX = "check/site-"


class AgentMesh:
    """Agent processes with their keys, configs and logs; stops what it started."""

    def __init__(
        self, root: Path, base_url: str, *, incidents: int, handoff_delay: float
    ) -> None:
        self.root = root
        self.addresses = {name: f"127.0.0.1:{free_port()}" for name in MEMBERS}
        # Running processes by member; a killed member is removed.
        self.processes: dict[str, subprocess.Popen] = {}
        keys = {
            name: generate_key_files(root / "keys" / f"{name}.key") for name in MEMBERS
        }
        checks = [
            {
                "name": f"site-{n:02d}",
                "kind": "http",
                "url": f"{base_url}/target/{n}",
                "interval": CHECK_INTERVAL,
                "timeout": CHECK_TIMEOUT,
                "for": 0,
                "resolve_for": RESOLVE_FOR,
                # Rounds follow each other within seconds; no flap limit.
                "min_alarm_interval": 0,
                "shared": True,
            }
            for n in range(incidents)
        ]
        sink = {"name": "bench", "type": "webhook", "url": f"{base_url}/alarminati"}
        for name in MEMBERS:
            config = {
                "name": name,
                "listen": self.addresses[name],
                "peers": [self.addresses[n] for n in MEMBERS if n != name],
                "key_file": f"keys/{name}.key",
                "trusted_keys": {
                    n: encode_public_key(keys[n].verify_key)
                    for n in MEMBERS
                    if n != name
                },
                "profile": "local",
                "timing": {"handoff_delay": handoff_delay},
                "data_dir": f"data/{name}",
                "archive": "archive",
                "sinks": [sink],
                "checks": checks,
            }
            (root / f"{name}.yaml").write_text(yaml.safe_dump(config))

    def start(self, name: str) -> None:
        command = [sys.executable, "-m", "mesh.cli", "--log-level", "info", "agent"]
        command += ["--config", str(self.root / f"{name}.yaml")]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.root / f"{name}.log", "ab") as log:
            # A session of its own keeps Ctrl-C from reaching the agents
            # directly; stop_all ends them instead.
            self.processes[name] = subprocess.Popen(
                command,
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def kill(self, name: str) -> None:
        process = self.processes.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait()

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in self.processes.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
                process.wait()
        self.processes.clear()

    async def wait_all_alive(self, client: httpx.AsyncClient, timeout: float) -> None:
        """Wait until every member sees every member alive.

        Raises:
            RuntimeError: that did not happen within ``timeout`` seconds.
        """
        with trio.move_on_after(timeout):
            while not await self._all_alive(client):
                await trio.sleep(0.2)
            return
        raise RuntimeError(
            f"agents did not all see each other alive within {timeout:g}s; "
            f"see the logs in {self.root}"
        )

    async def _all_alive(self, client: httpx.AsyncClient) -> bool:
        for name in MEMBERS:
            try:
                url = f"http://{self.addresses[name]}/peers"
                response = await client.get(url, timeout=2)
                states = {m["name"]: m["state"] for m in response.json()["members"]}
            except (httpx.HTTPError, ValueError, KeyError):
                return False
            if any(states.get(member) != "alive" for member in MEMBERS):
                return False
        return True


async def run_alarminati(
    server: BenchServer,
    base_url: str,
    root: Path,
    *,
    incidents: int,
    rounds: int,
    killed_rounds: int,
    handoff_delay: float,
) -> list[RoundOutcome]:
    """Run the plain rounds, then the rounds with one agent killed first.

    The killed agent rotates over the members and is restarted after its round.
    """
    root.mkdir(parents=True)
    mesh = AgentMesh(root, base_url, incidents=incidents, handoff_delay=handoff_delay)
    outcomes = []
    try:
        for name in MEMBERS:
            mesh.start(name)
        async with httpx.AsyncClient() as client:
            await mesh.wait_all_alive(client, timeout=60)
            await _wait_checks_running(server, runs=2)
            for _ in range(rounds):
                outcomes.append(await _round(server, None, incidents, handoff_delay))

            for number in range(killed_rounds):
                victim = MEMBERS[number % len(MEMBERS)]
                mesh.kill(victim)
                outcomes.append(await _round(server, victim, incidents, handoff_delay))
                mesh.start(victim)
                await mesh.wait_all_alive(client, timeout=60)
                await _wait_checks_running(server, runs=2)
    finally:
        mesh.stop_all()
    return outcomes


async def _wait_checks_running(server: BenchServer, runs: int) -> None:
    # Every agent has checked every target ``runs`` more times, so all of them
    # have published a passing verdict before the next event.
    goal = [hits + runs * len(MEMBERS) for hits in server.target_hits]
    reached = await wait_for_deliveries(
        lambda: all(h >= g for h, g in zip(server.target_hits, goal)),
        timeout=runs * CHECK_INTERVAL * 5,
    )
    if not reached:
        raise RuntimeError("the agents stopped checking the targets")


async def _round(
    server: BenchServer, killed: str | None, incidents: int, handoff_delay: float
) -> RoundOutcome:
    """Flip the targets to 503, collect the alarms, and flip them back."""
    event = server.flip(503)
    await wait_for_deliveries(
        lambda: len(_targets(server, event, "firing")) >= incidents, timeout=20
    )
    # The last rank's turn comes 2 hand-off delays after the first: a duplicate
    # would arrive by then.
    await trio.sleep(2 * handoff_delay + 1)
    firing = _firing(server, event)

    server.flip(200)
    recovered = time.monotonic()
    fired = {_target(d.incident) for d in firing}
    await wait_for_deliveries(
        lambda: fired <= _targets(server, recovered, "resolved"), timeout=20
    )
    await trio.sleep(2 * handoff_delay + 1)
    resolved = {n: [] for n in range(incidents)}
    for delivery in server.received("alarminati", recovered):
        if delivery.status == "resolved" and delivery.incident.startswith(CHECK_PREFIX):
            resolved[_target(delivery.incident)].append(delivery)

    deliveries = {n: [] for n in range(incidents)}
    first_rank_killed = set()
    for delivery in firing:
        number = _target(delivery.incident)
        if not deliveries[number] and killed is not None:
            if rank_members(delivery.incident, MEMBERS)[0] == killed:
                first_rank_killed.add(number)
        deliveries[number].append(delivery)
    return RoundOutcome(killed, event, deliveries, first_rank_killed, resolved)


def _firing(server: BenchServer, since: float) -> list[Delivery]:
    return [
        d
        for d in server.received("alarminati", since)
        if d.status == "firing" and d.incident.startswith(CHECK_PREFIX)
    ]


def _targets(server: BenchServer, since: float, status: str) -> set[int]:
    """Return the targets with a ``status`` alarm since ``since``."""
    return {
        _target(d.incident)
        for d in server.received("alarminati", since)
        if d.status == status and d.incident.startswith(CHECK_PREFIX)
    }


def _target(incident: str) -> int:
    # check/site-07@1714564710 -> 7
    return int(incident.removeprefix(CHECK_PREFIX).partition("@")[0])
