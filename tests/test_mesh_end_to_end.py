"""Real agents over real HTTP on loopback, reporting to a real local receiver."""

import json
import subprocess
import sys

import pytest
import trio

from agent_processes import AgentProcesses
from receivers import SlackWebhookReceiver, WebhookReceiver, serve_receiver

pytestmark = pytest.mark.slow

# Longer than detection (about 4 s under the local profile) plus every rank's
# hand-off delay in these small meshes: a duplicate would have arrived by then.
SETTLE = 8.0


class SwitchableReceiver(WebhookReceiver):
    """A webhook receiver that answers 503 while ``down`` is set."""

    def __init__(self):
        super().__init__()
        self.down = False

    async def handle(self, request):
        if self.down:
            return 503, [], b"receiver down"
        return await super().handle(request)


def alarms(receiver, status=None, subject=None):
    found = []
    for request in receiver.requests:
        if request.status != 200 or request.json is None:
            continue
        if status and request.json["status"] != status:
            continue
        if subject and request.json["subject"] != subject:
            continue
        found.append(request.json)
    return found


async def wait_alarms(receiver, count, timeout, **filters):
    with trio.move_on_after(timeout):
        await receiver.wait_until(lambda: len(alarms(receiver, **filters)) >= count)
    return alarms(receiver, **filters)


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "mesh.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


async def test_killed_agent_reported_once_and_resolved_once(tmp_path):
    receiver = WebhookReceiver()
    slack = SlackWebhookReceiver()
    async with serve_receiver(receiver) as url, serve_receiver(slack) as slack_url:
        hook = {"name": "hook", "type": "webhook", "url": f"{url}/alarms"}
        chat = {"name": "ops-slack", "type": "slack", "url_env": "SLACK_WEBHOOK_URL"}
        secret_url = slack_url + slack.path
        mesh = AgentProcesses(
            tmp_path,
            ["seoul", "busan", "daegu", "jeju"],
            sinks=[hook, chat],
            env={"SLACK_WEBHOOK_URL": secret_url},
        )
        try:
            mesh.start_all()
            everyone = {n: "alive" for n in mesh.names}
            await mesh.wait_states(mesh.names, everyone)

            mesh.kill("busan")
            survivors = ["seoul", "daegu", "jeju"]
            await mesh.wait_states(survivors, {"busan": "dead"})
            firing = await wait_alarms(receiver, 1, 20, status="firing")
            await trio.sleep(SETTLE)
            firing = alarms(receiver, status="firing")
            assert len(firing) == 1
            assert firing[0]["subject"] == "member/busan"
            assert firing[0]["reporter"] in survivors

            mesh.start("busan")
            await mesh.wait_states(survivors, {"busan": "alive"})
            await wait_alarms(receiver, 1, 20, status="resolved")
            await trio.sleep(SETTLE)
            resolved = alarms(receiver, status="resolved")
            assert len(resolved) == 1
            assert resolved[0]["incident"] == firing[0]["incident"]
            assert len(receiver.requests) == 2

            # Slack got the same two alarms, readable, and its URL leaked nowhere.
            await slack.wait_until(lambda: len(slack.messages) >= 2)
            texts = [m["text"] for m in slack.messages]
            assert len(texts) == 2
            assert "busan" in texts[0]
            assert slack.rejections == []
            for name in mesh.names:
                assert slack.path not in mesh.log(name)

            keys = [mesh.keyring.get(n) for n in mesh.names]
            for request in receiver.requests:
                assert WebhookReceiver.verify_signature(request, keys)

            table = run_cli("peers", f"http://{mesh.addresses['seoul']}")
            assert table.returncode == 0
            assert "busan" in table.stdout
            assert "alive" in table.stdout

            await trio.sleep(1.0)  # the archive copy is written beside the delivery
            logs = run_cli(
                "logs", "--archive", str(mesh.archive), "--since", "1h", "--json"
            )
            assert logs.returncode == 0
            records = [json.loads(line) for line in logs.stdout.splitlines()]
            assert [r["alarm"]["status"] for r in records] == ["firing", "resolved"]
            assert all(r["verified"] for r in records)
        finally:
            mesh.stop_all()


async def test_graceful_leave_raises_no_alarm(tmp_path):
    receiver = WebhookReceiver()
    async with serve_receiver(receiver) as url:
        sink = {"name": "hook", "type": "webhook", "url": f"{url}/alarms"}
        mesh = AgentProcesses(tmp_path, ["seoul", "busan", "daegu"], sinks=[sink])
        try:
            mesh.start_all()
            await mesh.wait_states(mesh.names, {n: "alive" for n in mesh.names})

            assert mesh.terminate("daegu") == 0
            await mesh.wait_states(["seoul", "busan"], {"daegu": "left"})
            await trio.sleep(SETTLE)
            assert receiver.requests == []
            assert "leaving the mesh" in mesh.log("daegu")
        finally:
            mesh.stop_all()


def pending_files(mesh, name):
    folder = mesh.root / "data" / name / "outbox" / "pending"
    return list(folder.iterdir()) if folder.exists() else []


async def test_delivery_survives_receiver_downtime_and_reporter_crash(tmp_path):
    receiver = SwitchableReceiver()
    receiver.down = True
    async with serve_receiver(receiver) as url:
        sink = {"name": "hook", "type": "webhook", "url": f"{url}/alarms"}
        mesh = AgentProcesses(tmp_path, ["seoul", "busan", "daegu"], sinks=[sink])
        try:
            mesh.start_all()
            await mesh.wait_states(mesh.names, {n: "alive" for n in mesh.names})

            # busan dies; its reporter queues the alarm, which the receiver
            # keeps refusing.
            mesh.kill("busan")

            async def queued():
                return any(pending_files(mesh, n) for n in ("seoul", "daegu"))

            await mesh.wait_for(queued, 20, "an alarm in an outbox")
            reporter = next(n for n in ("seoul", "daegu") if pending_files(mesh, n))
            survivor = "daegu" if reporter == "seoul" else "seoul"
            await receiver.wait_until(lambda: len(receiver.requests) >= 1)

            # The reporter crashes with the delivery still pending, and comes back.
            await trio.sleep(1.0)
            mesh.kill(reporter)
            await mesh.wait_states([survivor], {reporter: "dead"})

            # The survivor queues the reporter's death (the receiver still
            # refuses it) before the reporter comes back.
            async def survivor_reported():
                return f": reporting incident=member-down/{reporter}@" in mesh.log(survivor)

            await mesh.wait_for(survivor_reported, 20, "the survivor to report")
            mesh.start(reporter)
            await mesh.wait_states([survivor], {reporter: "alive"})

            receiver.down = False
            busan = await wait_alarms(receiver, 1, 60, subject="member/busan")
            await wait_alarms(receiver, 1, 30, subject=f"member/{reporter}", status="resolved")
            await trio.sleep(SETTLE)

            busan = alarms(receiver, subject="member/busan")
            assert [a["status"] for a in busan] == ["firing"]
            assert busan[0]["reporter"] == reporter
            statuses = [a["status"] for a in alarms(receiver, subject=f"member/{reporter}")]
            assert statuses == ["firing", "resolved"]
            assert pending_files(mesh, reporter) == []
        finally:
            mesh.stop_all()


async def test_demo_runs_to_completion(tmp_path):
    result = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [sys.executable, "-m", "mesh.cli", "demo", "--workdir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "alarms received: 1 firing, 1 resolved" in result.stdout
    assert result.stdout.count(">> receiver got FIRING") == 1
    assert result.stdout.count(">> receiver got RESOLVED") == 1
    assert "VERIFIED" in result.stdout
