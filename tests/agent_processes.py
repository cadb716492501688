"""Real agent processes on loopback for end-to-end tests.

Each agent is ``python -m mesh.cli agent`` in its own process with its own key,
configuration and data folder under the test's tmp_path, on a free port.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import trio
import yaml

from mesh.keys import Keyring, encode_public_key, generate_key_files

# Timing for tests: the local profile, with a shorter hand-off so that a test
# that waits for a duplicate waits less.
TEST_TIMING = {"handoff_delay": 2.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AgentProcesses:
    """A mesh of agent processes; stops every process it started."""

    def __init__(
        self, root: Path, names: list[str], *, sinks: list[dict], env: dict | None = None
    ) -> None:
        self.root = root
        # Extra environment of the agent processes, e.g. receiver secrets, and
        # of single members by name.
        self.env = env or {}
        self.member_env: dict[str, dict[str, str]] = {}
        self.names = names
        self.sinks = sinks
        self.addresses = {name: f"127.0.0.1:{free_port()}" for name in names}
        self.processes: dict[str, subprocess.Popen] = {}
        public = {}
        for name in names:
            public[name] = generate_key_files(root / "keys" / f"{name}.key").verify_key
        self.keyring = Keyring(public)
        self.archive = root / "archive"
        for name in names:
            self.write_config(name)

    def config_path(self, name: str) -> Path:
        return self.root / f"{name}.yaml"

    def write_config(self, name: str, **changes) -> None:
        config = {
            "name": name,
            "listen": self.addresses[name],
            "peers": [self.addresses[n] for n in self.names if n != name],
            "key_file": f"keys/{name}.key",
            "trusted_keys": {
                n: encode_public_key(self.keyring.get(n)) for n in self.names if n != name
            },
            "profile": "local",
            "timing": dict(TEST_TIMING),
            "data_dir": f"data/{name}",
            "archive": "archive",
            "sinks": self.sinks,
        }
        config.update(changes)
        self.config_path(name).write_text(yaml.safe_dump(config))

    def start(self, name: str) -> None:
        log = open(self.root / f"{name}.log", "ab")
        command = [sys.executable, "-m", "mesh.cli", "--log-level", "debug", "agent"]
        command += ["--config", str(self.config_path(name))]
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        env.update(self.member_env.get(name, {}))
        self.processes[name] = subprocess.Popen(
            command, cwd=self.root, stdout=log, stderr=subprocess.STDOUT, env=env
        )
        log.close()

    def start_all(self) -> None:
        for name in self.names:
            self.start(name)

    def kill(self, name: str) -> None:
        process = self.processes.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait()

    def terminate(self, name: str, timeout: float = 10.0) -> int:
        process = self.processes.pop(name)
        process.send_signal(signal.SIGTERM)
        return process.wait(timeout)

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in self.processes.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    async def peers(self, name: str) -> dict[str, str] | None:
        try:
            async with httpx.AsyncClient() as client:
                response = await client.get(f"http://{self.addresses[name]}/peers", timeout=2)
            return {m["name"]: m["state"] for m in response.json()["members"]}
        except (httpx.HTTPError, ValueError):
            return None

    async def wait_for(self, condition, timeout: float, what: str) -> None:
        """Poll the async ``condition`` until it holds; fail the test otherwise."""
        with trio.move_on_after(timeout):
            while not await condition():
                await trio.sleep(0.2)
            return
        logs = "\n".join(f"--- {n}\n{self.log(n)[-3000:]}" for n in self.names)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs}")

    async def wait_states(self, observers, expected: dict[str, str], timeout=30.0) -> None:
        async def holds() -> bool:
            for name in observers:
                view = await self.peers(name)
                if view is None:
                    return False
                if any(view.get(m) != s for m, s in expected.items()):
                    return False
            return True

        await self.wait_for(holds, timeout, f"{list(observers)} to see {expected}")
