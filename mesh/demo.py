"""``alarminati demo``: the main job on one machine.

Three agents (seoul, busan, daegu) run as separate processes on loopback with
freshly generated keys and the ``local`` timing profile. A webhook receiver in
this process prints every alarm it gets after verifying its signature. Once the
mesh has converged the demo kills busan with SIGKILL, waits for the one firing
alarm, restarts busan, waits for the one resolved alarm, lists the archive, and
stops the agents with SIGTERM (a graceful leave, which raises no alarm).

The exit code is 0 when exactly one firing and one resolved alarm arrived.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio
import yaml
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from .keys import Keyring, encode_public_key, generate_key_files
from .peers_table import format_peers

__all__ = ["run_demo"]

MEMBERS = ("seoul", "busan", "daegu")
VICTIM = "busan"
# Seconds to wait for convergence, an alarm, or a process to exit.
CONVERGE_TIMEOUT = 30.0
ALARM_TIMEOUT = 40.0
STOP_TIMEOUT = 10.0
# After an alarm, watch this long for a duplicate: longer than every rank's
# hand-off delay in a 2-member mesh under the local profile.
SETTLE_TIME = 6.0


def say(text: str = "") -> None:
    print(text, flush=True)


def free_ports(count: int) -> list[int]:
    sockets = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class Receiver:
    """A webhook receiver that verifies and prints each alarm."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self.alarms: list[dict] = []

    async def app(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                event = await receive()
                if event["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif event["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.accept(body, headers)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def accept(self, body: bytes, headers: dict[str, str]) -> None:
        alarm = json.loads(body)
        signer = headers.get("x-alarminati-signer", "")
        signature = base64.b64decode(headers.get("x-alarminati-signature", ""))
        verified = self.keyring.verify(signer, body, signature)
        self.alarms.append(alarm)
        mark = "signature verified" if verified else "SIGNATURE FAILED"
        say(
            f"  >> receiver got {alarm['status'].upper()} {alarm['subject']} "
            f"from {alarm['reporter']} ({mark}): {alarm['summary']}"
        )

    def count(self, status: str) -> int:
        return sum(1 for a in self.alarms if a["status"] == status)


class Mesh:
    """The demo's agent processes and their files."""

    def __init__(self, workdir: Path, ports: list[int], receiver_port: int) -> None:
        self.workdir = workdir
        self.addresses = {m: f"127.0.0.1:{p}" for m, p in zip(MEMBERS, ports)}
        self.processes: dict[str, subprocess.Popen] = {}
        self.archive = workdir / "archive"
        self.receiver_url = f"http://127.0.0.1:{receiver_port}/alarms"

    def write_files(self) -> Keyring:
        public = {}
        for member in MEMBERS:
            key_path = self.workdir / "keys" / f"{member}.key"
            public[member] = generate_key_files(key_path).verify_key
        for member in MEMBERS:
            config = {
                "name": member,
                "listen": self.addresses[member],
                "peers": [self.addresses[m] for m in MEMBERS if m != member],
                "key_file": f"keys/{member}.key",
                "trusted_keys": {
                    m: encode_public_key(k) for m, k in public.items() if m != member
                },
                "profile": "local",
                "data_dir": f"data/{member}",
                "archive": "archive",
                "sinks": [{"name": "demo-hook", "type": "webhook", "url": self.receiver_url}],
            }
            path = self.workdir / f"{member}.yaml"
            path.write_text(yaml.safe_dump(config, sort_keys=False))
        return Keyring(public)

    def start(self, member: str) -> None:
        log = open(self.workdir / f"{member}.log", "ab")
        command = [sys.executable, "-m", "mesh.cli", "agent", "--config", f"{member}.yaml"]
        self.processes[member] = subprocess.Popen(
            command, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

    def kill(self, member: str) -> None:
        process = self.processes.pop(member)
        process.send_signal(signal.SIGKILL)
        process.wait()

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for process in self.processes.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


async def fetch_peers(client: httpx.AsyncClient, address: str) -> list[dict] | None:
    try:
        response = await client.get(f"http://{address}/peers", timeout=1.0)
        return response.json()["members"]
    except (httpx.HTTPError, ValueError, KeyError):
        return None


async def watch(client, mesh: Mesh, last: dict, done, timeout: float) -> bool:
    """Print the membership table whenever it changes until ``done()`` holds."""
    deadline = trio.current_time() + timeout
    while trio.current_time() < deadline:
        views = {}
        for member in mesh.processes:
            views[member] = await fetch_peers(client, mesh.addresses[member])
        observer = next(iter(views), None)
        table = views.get(observer)
        if table is not None:
            summary = [(m["name"], m["state"], m["incarnation"]) for m in table]
            if summary != last.get("summary"):
                last["summary"] = summary
                say(f"\nmembership as {observer} sees it:")
                say(format_peers(table).rstrip())
        if done(views):
            return True
        await trio.sleep(0.3)
    return False


def states(view: list[dict] | None) -> dict[str, str]:
    return {m["name"]: m["state"] for m in view or []}


async def run_demo(base_port: int | None = None, workdir: str | None = None) -> int:
    if workdir is None:
        folder = Path(tempfile.mkdtemp(prefix="alarminati-demo-"))
    else:
        folder = Path(workdir)
        folder.mkdir(parents=True, exist_ok=True)
    ports = list(range(base_port, base_port + 4)) if base_port else free_ports(4)
    mesh = Mesh(folder, ports[:3], ports[3])
    keyring = mesh.write_files()
    receiver = Receiver(keyring)

    say(f"alarminati demo in {folder}")
    say(f"agents: {', '.join(f'{m} at {a}' for m, a in mesh.addresses.items())}")
    say(f"webhook receiver at {mesh.receiver_url}; agent logs in {folder}/*.log")

    hypercorn_config = HypercornConfig()
    hypercorn_config.bind = [f"127.0.0.1:{ports[3]}"]
    hypercorn_config.accesslog = None
    hypercorn_config.errorlog = None
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        async with trio.open_nursery() as nursery, httpx.AsyncClient() as client:
            await nursery.start(serve, receiver.app, hypercorn_config)
            ok = await _scenario(client, mesh, receiver)
            if ok:
                await _list_archive(mesh, keyring)
            nursery.cancel_scope.cancel()
    finally:
        say("\nstopping the agents with SIGTERM (graceful leave)")
        mesh.stop_all()

    fired, resolved = receiver.count("firing"), receiver.count("resolved")
    say(f"\nalarms received: {fired} firing, {resolved} resolved (expected 1 and 1)")
    return 0 if (fired, resolved) == (1, 1) else 1


async def _scenario(client, mesh: Mesh, receiver: Receiver) -> bool:
    for member in MEMBERS:
        mesh.start(member)
    say("\nstarted 3 agents; waiting for the mesh to converge")
    last: dict = {}

    def converged(views) -> bool:
        return all(
            states(v) == {m: "alive" for m in MEMBERS} for v in views.values()
        ) and len(views) == len(MEMBERS)

    if not await watch(client, mesh, last, converged, CONVERGE_TIMEOUT):
        say("the mesh did not converge; see the agent logs")
        return False
    say("\nall agents see each other alive")

    say(f"\nkilling {VICTIM} with SIGKILL")
    mesh.kill(VICTIM)
    fired = lambda views: receiver.count("firing") >= 1  # noqa: E731
    if not await watch(client, mesh, last, fired, ALARM_TIMEOUT):
        say("no firing alarm arrived; see the agent logs")
        return False
    say(f"\nwatching {SETTLE_TIME:.0f}s for a duplicate alarm")
    await watch(client, mesh, last, lambda views: False, SETTLE_TIME)

    say(f"\nrestarting {VICTIM}")
    mesh.start(VICTIM)
    resolved = lambda views: receiver.count("resolved") >= 1  # noqa: E731
    if not await watch(client, mesh, last, resolved, ALARM_TIMEOUT):
        say("no resolved alarm arrived; see the agent logs")
        return False
    say(f"\nwatching {SETTLE_TIME:.0f}s for a duplicate alarm")
    await watch(client, mesh, last, lambda views: False, SETTLE_TIME)
    return True


async def _list_archive(mesh: Mesh, keyring: Keyring) -> None:
    from storage import open_archive
    from storage.query import format_table, query_alarms

    # The outbox writes the archive copy beside the webhook delivery; give it
    # a moment to land.
    await trio.sleep(1.0)
    now = time.time()
    archive = open_archive(str(mesh.archive))
    results = await query_alarms(archive, keyring, since=now - 3600, until=now + 60)
    say(f"\narchive {mesh.archive} (alarminati logs --archive {mesh.archive} --since 1h):")
    say(format_table(results).rstrip())
