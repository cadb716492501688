"""A real agent rejects forged, replayed, stale, malformed and oversized frames.

Each rejection is answered with a 4xx, counted by reason in /metrics, and leaves
the agent serving: a valid ping sent afterwards is still acked.
"""

import time

import httpx
import pytest

from agent_processes import AgentProcesses
from mesh.errors import Reason
from mesh.keys import SigningKey, load_signing_key
from mesh.messages import Ack, Ping, decode_message, encode_message
from mesh.wire import MAX_FRAME_BYTES, open_frame, seal

pytestmark = pytest.mark.slow


def rejected_count(metrics_text: str, reason: str) -> float:
    prefix = f'alarminati_messages_rejected_total{{reason="{reason}"}} '
    for line in metrics_text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    return 0.0


def ping_frame(key, sender="busan", sent_at=None, seq=1):
    payload = [encode_message(Ping(seq, "seoul"))]
    return seal(key, sender, payload, time.time() if sent_at is None else sent_at)


async def test_agent_rejects_bad_frames_and_keeps_serving(tmp_path):
    # Only seoul runs; busan's key is in its keyring and the test signs as busan.
    mesh = AgentProcesses(tmp_path, ["seoul", "busan"], sinks=[])
    busan_key = load_signing_key(tmp_path / "keys" / "busan.key")
    mesh.start("seoul")
    url = f"http://{mesh.addresses['seoul']}"
    try:
        await mesh.wait_for(lambda: _is_up(url), 20, "seoul to serve /healthz")
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:

            async def post(body):
                # The agent answers an oversized body without reading it and
                # then closes the connection, so no request may reuse it.
                headers = {"connection": "close"} if len(body) > MAX_FRAME_BYTES else {}
                return await client.post("/healthz", content=body, headers=headers)

            valid = ping_frame(busan_key, seq=1)
            forger = SigningKey.generate()
            stale = ping_frame(busan_key, sent_at=time.time() - 600)
            not_a_list = seal(busan_key, "busan", {"x": 1}, time.time())
            unknown_type = seal(busan_key, "busan", [[99, 1]], time.time())
            cases = [
                ("forged", ping_frame(forger, seq=2), 401, Reason.BAD_SIGNATURE),
                ("unknown sender", ping_frame(forger, "mokpo"), 401, Reason.UNKNOWN_SENDER),
                ("stale", stale, 400, Reason.OUTSIDE_REPLAY_WINDOW),
                ("garbage", b"\x93not a frame" * 8, 400, Reason.MALFORMED),
                ("not messages", not_a_list, 400, Reason.MALFORMED),
                ("unknown message type", unknown_type, 400, Reason.MALFORMED),
                ("oversized", b"\0" * (MAX_FRAME_BYTES + 1), 413, Reason.OVERSIZED),
            ]

            first = await post(valid)
            assert first.status_code == 200
            replay = await post(valid)
            assert replay.status_code == 400
            assert "replayed" in replay.text

            for what, body, status, _ in cases:
                response = await post(body)
                assert response.status_code == status, what

            metrics = (await client.get("/metrics")).text
            assert rejected_count(metrics, Reason.REPLAYED.value) == 1
            for what, _, _, reason in cases:
                assert rejected_count(metrics, reason.value) >= 1, what

            # Still alive and still answering real pings with a signed ack.
            assert (await client.get("/healthz")).text == "ok\n"
            answer = await post(ping_frame(busan_key, seq=7))
            assert answer.status_code == 200
            frame = open_frame(answer.content, mesh.keyring)
            assert frame.sender == "seoul"
            messages = [decode_message(m) for m in frame.payload]
            assert isinstance(messages[0], Ack)
            assert messages[0].seq == 7
    finally:
        mesh.stop_all()


async def _is_up(url):
    try:
        async with httpx.AsyncClient() as client:
            return (await client.get(f"{url}/healthz", timeout=1)).status_code == 200
    except httpx.HTTPError:
        return False


async def test_peers_endpoint_json_and_text(tmp_path):
    mesh = AgentProcesses(tmp_path, ["seoul", "busan"], sinks=[])
    mesh.start_all()
    try:
        await mesh.wait_states(mesh.names, {"seoul": "alive", "busan": "alive"})
        async with httpx.AsyncClient(base_url=f"http://{mesh.addresses['seoul']}") as client:
            data = (await client.get("/peers")).json()
            members = {m["name"]: m for m in data["members"]}
            assert set(members) == {"seoul", "busan"}
            for member in members.values():
                assert set(member) >= {"name", "address", "state", "incarnation", "since"}
            assert members["busan"]["address"] == mesh.addresses["busan"]

            text = await client.get("/peers", headers={"accept": "text/plain"})
            assert text.headers["content-type"].startswith("text/plain")
            header = text.text.splitlines()[0].split()
            assert header == ["NAME", "ADDRESS", "STATE", "INCARNATION", "SINCE"]
    finally:
        mesh.stop_all()
