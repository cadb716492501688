"""Real agents of both kinds inside a network namespace, for the benchmarks.

Each benchmark run creates its own network namespace with only ``lo`` in it, so
that agents bind 127.0.0.1 ports without touching the host's loopback, the
bytes they send can be read from that ``lo``'s counters, and packet loss can be
injected with iptables inside the namespace. The namespace is deleted when the
run ends, whatever happens.

Every agent's output is read by a thread that stamps each line with the
monotonic time it arrived, which is how detection times are measured for both
kinds alike: from the SIGKILL to the log line of each survivor.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mesh.keys import encode_public_key, generate_key_files  # noqa: E402

# Log lines that mark a member as joined, suspected and failed, by kind.
PATTERNS = {
    "alarminati": {
        "alive": re.compile(r"member alive member=(\S+)"),
        "suspect": re.compile(r"member suspect member=(\S+) .*source=local"),
        "dead": re.compile(r"member dead member=(\S+)"),
    },
    "serf": {
        "alive": re.compile(r"EventMemberJoin: (\S+)"),
        "suspect": re.compile(r"memberlist: Suspect (\S+) has failed"),
        "dead": re.compile(r"EventMemberFailed: (\S+)"),
    },
}
BASE_PORT = 7000
RPC_BASE_PORT = 8000
STOP_TIMEOUT = 10.0


def run(*command: str, check: bool = True) -> str:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()}")
    return result.stdout


class Namespace:
    """A network namespace with ``lo`` up; deleted on exit."""

    def __init__(self, name: str, *, loss: float = 0.0) -> None:
        self.name = name
        self.loss = loss

    def __enter__(self) -> Namespace:
        run("ip", "netns", "del", self.name, check=False)
        run("ip", "netns", "add", self.name)
        self.exec("ip", "link", "set", "lo", "up")
        if self.loss:
            # Each packet crosses lo once, so dropping at INPUT loses each
            # packet, UDP or TCP, with this probability.
            self.exec(
                "iptables", "-A", "INPUT", "-m", "statistic", "--mode", "random",
                "--probability", f"{self.loss}", "-j", "DROP",
            )
        return self

    def __exit__(self, *exc_info) -> None:
        run("ip", "netns", "del", self.name, check=False)

    def exec(self, *command: str) -> str:
        return run("ip", "netns", "exec", self.name, *command)

    def popen(self, command: list[str], **kwargs) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.name, *command], **kwargs)

    def tx_bytes(self) -> int:
        return int(self.exec("cat", "/sys/class/net/lo/statistics/tx_bytes"))


class Agent:
    """One agent process and the time-stamped lines of its output."""

    def __init__(self, kind: str, name: str, process: subprocess.Popen) -> None:
        self.kind = kind
        self.name = name
        self.process = process
        # (monotonic time, line) for every line printed so far.
        self.lines: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode("utf-8", "replace")
            with self._lock:
                self.lines.append((time.monotonic(), line))

    def events(self, event: str, since: float = 0.0) -> dict[str, float]:
        """Return member name to the first time this agent logged ``event`` of it."""
        pattern = PATTERNS[self.kind][event]
        found: dict[str, float] = {}
        with self._lock:
            lines = list(self.lines)
        for at, line in lines:
            if at < since:
                continue
            match = pattern.search(line)
            if match and match.group(1) not in found:
                found[match.group(1)] = at
        return found

    def count(self, event: str, since: float = 0.0) -> int:
        pattern = PATTERNS[self.kind][event]
        with self._lock:
            return sum(1 for at, line in self.lines if at >= since and pattern.search(line))

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signum)

    def stop(self) -> None:
        self.signal(signal.SIGTERM)


def stop_all(agents: list[Agent]) -> None:
    for agent in agents:
        agent.signal(signal.SIGCONT)
        agent.stop()
    deadline = time.monotonic() + STOP_TIMEOUT
    for agent in agents:
        try:
            agent.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            agent.process.kill()
            agent.process.wait()


def names(count: int) -> list[str]:
    return [f"node-{i}" for i in range(count)]


def start_serf(namespace: Namespace, count: int, workdir: Path) -> list[Agent]:
    """Start ``count`` Serf agents, each joining the first, with the lan profile."""
    agents = []
    for index, name in enumerate(names(count)):
        command = [
            "serf", "agent", "-node", name, "-profile", "lan", "-log-level", "info",
            "-bind", f"127.0.0.1:{BASE_PORT + index}",
            "-rpc-addr", f"127.0.0.1:{RPC_BASE_PORT + index}",
        ]
        if index:
            command += ["-join", f"127.0.0.1:{BASE_PORT}"]
        process = namespace.popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        agents.append(Agent("serf", name, process))
        if not index:
            time.sleep(0.3)
    return agents


def start_alarminati(
    namespace: Namespace, count: int, workdir: Path, *, sinks: list[dict] | None = None
) -> list[Agent]:
    """Start ``count`` agents on the lan profile, seeded by the first three.

    ``sinks`` is each agent's list of receivers; by default it has none.
    """
    members = names(count)
    addresses = {n: f"127.0.0.1:{BASE_PORT + i}" for i, n in enumerate(members)}
    public = {}
    for name in members:
        public[name] = generate_key_files(workdir / "keys" / f"{name}.key").verify_key
    seeds = [addresses[n] for n in members[:3]]
    agents = []
    for name in members:
        config = {
            "name": name,
            "listen": addresses[name],
            "peers": [s for s in seeds if s != addresses[name]],
            "key_file": f"keys/{name}.key",
            "trusted_keys": {n: encode_public_key(public[n]) for n in members if n != name},
            "profile": "lan",
            "data_dir": f"data/{name}",
            "archive": "archive",
        }
        if sinks:
            config["sinks"] = sinks
        path = workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        command = [sys.executable, "-m", "mesh.cli", "--log-level", "info", "agent", "--config", str(path)]
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
        process = namespace.popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=workdir, env=env
        )
        agents.append(Agent("alarminati", name, process))
    return agents


def wait_converged(agents: list[Agent], timeout: float) -> float | None:
    """Wait until every agent logged every other as joined; return seconds taken."""
    started = time.monotonic()
    everyone = {a.name for a in agents}
    while time.monotonic() - started < timeout:
        if all(everyone - {a.name} <= set(a.events("alive")) for a in agents):
            return time.monotonic() - started
        if any(a.process.poll() is not None for a in agents):
            return None
        time.sleep(0.2)
    return None


def start_alarminati_with_webhook(namespace: Namespace, count: int, workdir: Path) -> list[Agent]:
    """Start agents as :func:`start_alarminati` does, each with a webhook receiver.

    A receiver loads httpx and the receivers' modules, so this is the memory of
    an agent as deployed. Nothing listens on the webhook's port: the alarm about
    the killed agent is retried by the outbox, which the idle window precedes.
    """
    webhook = {"name": "ops", "type": "webhook", "url": "http://127.0.0.1:9/alarms"}
    return start_alarminati(namespace, count, workdir, sinks=[webhook])
