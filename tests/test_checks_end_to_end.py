"""Checks on real agents: local checks, a shared domain check, and hand-offs.

The checked "domain" is a local HTTP server on 127.0.0.2 whose answer the test
switches. One agent's broken egress is an HTTP proxy that does not answer:
that agent's process gets ``HTTP_PROXY`` pointing at a closed port, with
``NO_PROXY=127.0.0.1`` so that its traffic to the other agents stays direct.
"""

import contextlib
import functools
import socket

import hypercorn.config
import hypercorn.trio
import pytest
import trio

from agent_processes import AgentProcesses
from mesh.election import rank_members
from mesh.incidents import member_incident_id
from receivers import WebhookReceiver, serve_receiver

pytestmark = pytest.mark.slow

SETTLE = 6.0


class Domain:
    """An HTTP endpoint that answers 200 or 503 as the test decides."""

    def __init__(self):
        self.healthy = True

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                event = await receive()
                if event["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif event["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        status = 200 if self.healthy else 503
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"shop"})


@contextlib.asynccontextmanager
async def serve_domain(app):
    """Serve ``app`` on 127.0.0.2 and a free port; yield its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        port = s.getsockname()[1]
    config = hypercorn.config.Config()
    config.bind = [f"127.0.0.2:{port}"]
    config.accesslog = None
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        serve = functools.partial(hypercorn.trio.serve, shutdown_trigger=shutdown.wait)
        await nursery.start(serve, app, config)
        try:
            yield f"http://127.0.0.2:{port}/"
        finally:
            shutdown.set()


def alarms(receiver, **match):
    found = []
    for request in receiver.requests:
        alarm = request.json
        if request.status == 200 and all(alarm.get(k) == v for k, v in match.items()):
            found.append(alarm)
    return found


async def wait_alarms(receiver, count, timeout, **match):
    with trio.move_on_after(timeout):
        await receiver.wait_until(lambda: len(alarms(receiver, **match)) >= count)
    return alarms(receiver, **match)


def http_check(url, *, shared=False):
    check = {
        "name": "shop",
        "kind": "http",
        "url": url,
        # A generous timeout: a slow answer on a busy machine must not look
        # like an outage.
        "interval": 2,
        "timeout": 1.5,
        "resolve_for": 3,
        "min_alarm_interval": 1,
    }
    if shared:
        check["shared"] = True
    return check


async def test_local_http_check_fires_once_and_resolves(tmp_path):
    domain = Domain()
    receiver = WebhookReceiver()
    async with serve_domain(domain) as url, serve_receiver(receiver) as hook:
        sink = {"name": "hook", "type": "webhook", "url": f"{hook}/alarms"}
        mesh = AgentProcesses(tmp_path, ["seoul", "busan"], sinks=[sink])
        mesh.write_config("seoul", checks=[http_check(url)])
        try:
            mesh.start_all()
            await mesh.wait_states(mesh.names, {"seoul": "alive", "busan": "alive"})
            await trio.sleep(2)
            assert receiver.requests == []

            domain.healthy = False
            firing = await wait_alarms(receiver, 1, 20, status="firing")
            await trio.sleep(SETTLE)
            firing = alarms(receiver, status="firing")
            assert len(firing) == 1
            assert firing[0]["subject"] == url
            assert firing[0]["reporter"] == "seoul"
            assert "503" in firing[0]["summary"]

            domain.healthy = True
            await wait_alarms(receiver, 1, 20, status="resolved")
            await trio.sleep(SETTLE)
            resolved = alarms(receiver, status="resolved")
            assert len(resolved) == 1
            assert resolved[0]["incident"] == firing[0]["incident"]
        finally:
            mesh.stop_all()


async def test_shared_check_egress_cut_then_real_outage(tmp_path):
    domain = Domain()
    receiver = WebhookReceiver()
    names = ["seoul", "busan", "daegu"]
    async with serve_domain(domain) as url, serve_receiver(receiver) as hook:
        sink = {"name": "hook", "type": "webhook", "url": f"{hook}/alarms"}
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead_proxy = f"http://127.0.0.1:{s.getsockname()[1]}"
        mesh = AgentProcesses(tmp_path, names, sinks=[sink])
        mesh.member_env["daegu"] = {"HTTP_PROXY": dead_proxy, "NO_PROXY": "127.0.0.1"}
        for name in names:
            mesh.write_config(name, checks=[http_check(url, shared=True)])
        try:
            mesh.start_all()
            await mesh.wait_states(names, {n: "alive" for n in names})

            # Only daegu fails the check: its egress is cut, the domain is fine.
            egress = await wait_alarms(receiver, 1, 30, status="firing")
            await trio.sleep(SETTLE)
            firing = alarms(receiver, status="firing")
            assert len(firing) == 1
            assert egress[0]["subject"] == "cluster/daegu"
            assert egress[0]["reporter"] in ("seoul", "busan")
            assert alarms(receiver, subject=url) == []

            # Now the domain itself fails: a quorum sees it, one observer pages.
            domain.healthy = False
            await wait_alarms(receiver, 1, 30, subject=url, status="firing")
            await trio.sleep(SETTLE)
            outage = alarms(receiver, subject=url, status="firing")
            assert len(outage) == 1
            assert outage[0]["reporter"] in names

            domain.healthy = True
            await wait_alarms(receiver, 1, 30, subject=url, status="resolved")
            await trio.sleep(SETTLE)
            assert len(alarms(receiver, subject=url, status="resolved")) == 1
        finally:
            mesh.stop_all()


async def test_restart_during_handoff_reports_once(tmp_path):
    receiver = WebhookReceiver()
    names = ["seoul", "busan", "daegu", "jeju"]
    async with serve_receiver(receiver) as hook:
        sink = {"name": "hook", "type": "webhook", "url": f"{hook}/alarms"}
        mesh = AgentProcesses(tmp_path, names, sinks=[sink])
        for name in names:
            # Grouping off: two members down at once are two incidents here.
            mesh.write_config(name, timing={"handoff_delay": 2.0, "group_wait": 0})
        try:
            mesh.start_all()
            await mesh.wait_states(names, {n: "alive" for n in names})

            # The victim and its first-ranked reporter die together, so the
            # second rank must take over; then both come back.
            victim = "jeju"
            others = [n for n in names if n != victim]
            first = rank_members(member_incident_id(victim, 0), others)[0]
            mesh.kill(victim)
            mesh.kill(first)
            await wait_alarms(receiver, 1, 30, subject=f"member/{victim}", status="firing")
            await wait_alarms(receiver, 1, 30, subject=f"member/{first}", status="firing")

            mesh.start(first)
            mesh.start(victim)
            survivors = [n for n in names if n not in (victim, first)]
            await mesh.wait_states(survivors, {victim: "alive", first: "alive"})
            await wait_alarms(receiver, 2, 30, status="resolved")
            await trio.sleep(SETTLE)

            for member in (victim, first):
                statuses = [a["status"] for a in alarms(receiver, subject=f"member/{member}")]
                assert statuses == ["firing", "resolved"], member
            victim_alarm = alarms(receiver, subject=f"member/{victim}", status="firing")[0]
            assert victim_alarm["reporter"] != first
        finally:
            mesh.stop_all()

