"""Alertmanager in HA mode: 3 clustered replicas on loopback, fired at like Prometheus.

Alertmanager deduplicates across replicas through its gossiped notification
log. Every replica that receives an alert runs the notification pipeline. The
replica at cluster position p (its name's index among the sorted names of the
live members) first waits p times ``--cluster.peer-timeout``, 15 s by default.
Then it sends only if the notification log has no entry for the group yet.
The position is read when the wait starts, so a replica whose lower-positioned
peer died a moment earlier still waits its full turn (measured with 0.25).

Replica names are ULIDs chosen at start, so a restarted replica sorts after
the others: the "first peer" is whichever live replica sorts first, read from
``/api/v2/status``.
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import trio
import yaml

from dedup_http import BenchServer
from dedup_outcome import RoundOutcome, free_port, wait_for_deliveries

__all__ = [
    "ALERTMANAGER",
    "ensure_alertmanager",
    "AlertmanagerCluster",
    "run_alertmanager",
]

logger = logging.getLogger(__name__)

# Debian's prometheus-alertmanager installs the binary under this name.
ALERTMANAGER = "prometheus-alertmanager"
APT_PACKAGE = "prometheus-alertmanager"
# Alertmanager's default --cluster.peer-timeout, kept so the comparison is
# with the wait a default HA setup has.
PEER_TIMEOUT = 15.0
ALERT_NAME = "DedupBench"


def ensure_alertmanager() -> str:
    """Return the Alertmanager binary, installing Debian's package if it is missing.

    Raises:
        RuntimeError: the binary is missing and this process cannot install it.
    """
    found = shutil.which(ALERTMANAGER)
    if found:
        return found
    if os.geteuid() != 0:
        raise RuntimeError(
            f"{ALERTMANAGER} not found: install it with 'apt-get install {APT_PACKAGE}'"
        )
    print(f"installing {APT_PACKAGE} with apt-get", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", APT_PACKAGE], check=True, env=env
    )
    found = shutil.which(ALERTMANAGER)
    if not found:
        raise RuntimeError(
            f"{APT_PACKAGE} is installed but {ALERTMANAGER} is not on PATH"
        )
    return found


class AlertmanagerCluster:
    """Three Alertmanager processes clustered on loopback; stops what it started."""

    def __init__(
        self, binary: str, root: Path, webhook_url: str, replicas: int = 3
    ) -> None:
        self.binary = binary
        self.root = root
        root.mkdir(parents=True)
        self.names = [f"am-{n}" for n in range(replicas)]
        # Web (API) and cluster (gossip) address of each replica, fixed for a run.
        self.web = {name: f"127.0.0.1:{free_port()}" for name in self.names}
        self.gossip = {name: f"127.0.0.1:{free_port()}" for name in self.names}
        # Running processes by replica; a killed replica is removed.
        self.processes: dict[str, subprocess.Popen] = {}
        # Starts of each replica, so that a restart gets a fresh storage folder.
        self.generation = {name: 0 for name in self.names}
        self.config = root / "alertmanager.yml"
        self.config.write_text(yaml.safe_dump(_config(webhook_url)))

    def start(self, name: str) -> None:
        self.generation[name] += 1
        storage = self.root / f"{name}-{self.generation[name]}"
        storage.mkdir(parents=True)
        command = [
            self.binary,
            f"--config.file={self.config}",
            f"--storage.path={storage}",
            f"--web.listen-address={self.web[name]}",
            f"--cluster.listen-address={self.gossip[name]}",
            f"--cluster.peer-timeout={PEER_TIMEOUT:g}s",
            "--log.level=warn",
        ]
        command += [f"--cluster.peer={self.gossip[n]}" for n in self.names if n != name]
        with open(self.root / f"{name}.log", "ab") as log:
            # A session of its own keeps Ctrl-C from reaching the replicas
            # directly; stop_all ends them instead.
            self.processes[name] = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
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

    async def status(self, client: httpx.AsyncClient, name: str) -> dict | None:
        try:
            response = await client.get(
                f"http://{self.web[name]}/api/v2/status", timeout=2
            )
            return response.json()["cluster"]
        except (httpx.HTTPError, ValueError, KeyError):
            return None

    async def wait_ready(self, client: httpx.AsyncClient, timeout: float) -> list[str]:
        """Wait until every running replica is settled and sees exactly the others.

        Returns:
            The running replicas ordered by cluster position.

        Raises:
            RuntimeError: the cluster did not form within ``timeout`` seconds.
        """
        with trio.move_on_after(timeout):
            while True:
                order = await self._positions(client)
                if order is not None:
                    return order
                await trio.sleep(0.25)
        raise RuntimeError(
            f"alertmanager cluster not ready after {timeout:g}s; "
            f"see the logs in {self.root}"
        )

    async def _positions(self, client: httpx.AsyncClient) -> list[str] | None:
        own_names = {}
        views = []
        for name in self.processes:
            cluster = await self.status(client, name)
            if cluster is None or cluster.get("status") != "ready":
                return None
            own_names[cluster["name"]] = name
            views.append({peer["name"] for peer in cluster.get("peers", [])})
        if any(view != set(own_names) for view in views):
            return None
        return [own_names[peer] for peer in sorted(own_names)]


def _config(webhook_url: str) -> dict:
    return {
        "route": {
            "receiver": "bench",
            # One notification per incident, sent as soon as the group forms.
            "group_by": ["alertname", "incident"],
            "group_wait": "0s",
            "group_interval": "5m",
            "repeat_interval": "1h",
        },
        "receivers": [
            {
                "name": "bench",
                "webhook_configs": [{"url": webhook_url, "send_resolved": False}],
            }
        ],
    }


async def fire(
    client: httpx.AsyncClient, cluster: AlertmanagerCluster, labels: list[str]
) -> float:
    """POST one alert per incident label to every replica at once, like HA Prometheus.

    A stopped replica refuses the connection, which is ignored, as Prometheus
    ignores an unreachable Alertmanager. Returns the moment before the first
    request (monotonic).
    """
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    alerts = [
        {
            "labels": {
                "alertname": ALERT_NAME,
                "incident": label,
                "severity": "critical",
            },
            "annotations": {"summary": f"benchmark incident {label}"},
            "startsAt": now,
        }
        for label in labels
    ]

    async def post(name: str) -> None:
        try:
            url = f"http://{cluster.web[name]}/api/v2/alerts"
            response = await client.post(url, json=alerts, timeout=5)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            logger.debug("alert post failed replica=%s error=%s", name, exc)

    event = time.monotonic()
    async with trio.open_nursery() as nursery:
        for name in cluster.names:
            nursery.start_soon(post, name)
    return event


async def run_alertmanager(
    server: BenchServer,
    binary: str,
    webhook_url: str,
    root: Path,
    *,
    incidents: int,
    rounds: int,
    killed_rounds: int,
) -> list[RoundOutcome]:
    """Run the plain and the killed-first-peer rounds against a fresh cluster.

    Each round fires ``incidents`` new incidents at once. A round waits for one
    delivery per incident, but duplicates may arrive up to two peer timeouts
    after the event, so every outcome is read only after that tail.
    """
    cluster = AlertmanagerCluster(binary, root, webhook_url)
    pending: list[tuple[str | None, float, dict[int, str]]] = []
    try:
        for name in cluster.names:
            cluster.start(name)
        async with httpx.AsyncClient() as client:
            await cluster.wait_ready(client, timeout=90)
            for number in range(rounds):
                labels = {n: f"plain{number}-{n:02d}" for n in range(incidents)}
                event = await fire(client, cluster, list(labels.values()))
                pending.append((None, event, labels))
                await _wait_first(server, event, labels, PEER_TIMEOUT + 10)
                await trio.sleep(1)

            for number in range(killed_rounds):
                order = await cluster.wait_ready(client, timeout=90)
                victim = order[0]
                labels = {n: f"killed{number}-{n:02d}" for n in range(incidents)}
                # Kill the first peer just before the alerts arrive.
                cluster.kill(victim)
                event = await fire(client, cluster, list(labels.values()))
                pending.append((victim, event, labels))
                await _wait_first(server, event, labels, 2 * PEER_TIMEOUT + 10)
                if number + 1 < killed_rounds:
                    cluster.start(victim)

            # Replicas further down wait up to two peer timeouts before their
            # dedup check; wait them out so that every duplicate is counted.
            last_event = pending[-1][1] if pending else time.monotonic()
            await trio.sleep_until(_trio_time(last_event + 2 * PEER_TIMEOUT + 5))
    finally:
        cluster.stop_all()
    return [
        _outcome(server, killed, event, labels) for killed, event, labels in pending
    ]


async def _wait_first(
    server: BenchServer, event: float, labels: dict[int, str], timeout: float
) -> None:
    wanted = set(labels.values())
    await wait_for_deliveries(
        lambda: wanted <= {d.incident for d in server.received("alertmanager", event)},
        timeout,
    )


def _outcome(
    server: BenchServer, killed: str | None, event: float, labels: dict[int, str]
) -> RoundOutcome:
    by_label = {label: n for n, label in labels.items()}
    deliveries = {n: [] for n in labels}
    for delivery in server.received("alertmanager", event):
        if delivery.status == "firing" and delivery.incident in by_label:
            deliveries[by_label[delivery.incident]].append(delivery)
    # Every incident's first rank is the killed peer: it held position 0.
    first_rank_killed = set(labels) if killed else set()
    return RoundOutcome(killed, event, deliveries, first_rank_killed)


def _trio_time(monotonic: float) -> float:
    return trio.current_time() + (monotonic - time.monotonic())
