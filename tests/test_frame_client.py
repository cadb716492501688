"""The agents' own HTTP client for frames, against a real hypercorn server on loopback."""

import functools
import socket

import pytest
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from mesh.frame_client import FrameClient, PeerUnreachable, split_address


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def echo_app(scope, receive, send):
    """Respond to every POST with its body and the client's port."""
    if scope["type"] == "lifespan":
        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif event["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        event = await receive()
        body += event.get("body", b"")
        if not event.get("more_body"):
            break
    # The body comes back prefixed with the client's port, to tell connections apart.
    port = str(scope["client"][1]).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": port + b" " + body})


async def start_server(nursery, port, keep_alive_timeout=60.0):
    config = HypercornConfig()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.keep_alive_timeout = keep_alive_timeout
    await nursery.start(lambda task_status: serve(echo_app, config, task_status=task_status))


def client():
    return FrameClient(keepalive_expiry=30.0)


async def post(c, port, body):
    response = await c.post(f"127.0.0.1:{port}", "/healthz", body, connect_timeout=5.0)
    client_port, _, content = response.content.partition(b" ")
    return response.status_code, client_port, content


async def test_round_trip_reuses_the_connection():
    port = free_port()
    async with trio.open_nursery() as nursery:
        await start_server(nursery, port)
        async with client() as c:
            first = await post(c, port, b"ping-1")
            second = await post(c, port, b"ping-2")
        nursery.cancel_scope.cancel()
    assert first[0] == 200
    assert first[2] == b"ping-1"
    assert second[2] == b"ping-2"
    # The second request went over the first one's connection.
    assert first[1] == second[1]


async def test_large_body_round_trip():
    port = free_port()
    payload = bytes(range(256)) * 1000
    async with trio.open_nursery() as nursery:
        await start_server(nursery, port)
        async with client() as c:
            _, _, content = await post(c, port, payload)
        nursery.cancel_scope.cancel()
    assert content == payload


async def test_refused_connection_raises_peer_unreachable():
    port = free_port()
    async with client() as c:
        with pytest.raises(PeerUnreachable, match=f"127.0.0.1:{port}"):
            await post(c, port, b"x")


async def test_connection_closed_by_server_is_replaced():
    port = free_port()
    async with trio.open_nursery() as nursery:
        await start_server(nursery, port, keep_alive_timeout=0.2)
        async with client() as c:
            first = await post(c, port, b"a")
            # The server closes the idle connection; the next request must not
            # fail because of it.
            await trio.sleep(0.5)
            second = await post(c, port, b"b")
        nursery.cancel_scope.cancel()
    assert second[2] == b"b"
    assert first[1] != second[1]


async def test_request_is_one_write():
    """The whole request is one send, with only the host and length headers."""
    received = []

    async def handler(stream):
        received.append(await stream.receive_some(65536))
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        async with client() as c:
            response = await c.post(f"127.0.0.1:{port}", "/healthz", b"frame", connect_timeout=5.0)
        nursery.cancel_scope.cancel()
    assert response.content == b"ok"
    head, _, body = received[0].partition(b"\r\n\r\n")
    assert body == b"frame"
    lines = head.lower().split(b"\r\n")
    assert lines[0] == b"post /healthz http/1.1"
    assert sorted(lines[1:]) == [b"content-length: 5", f"host: 127.0.0.1:{port}".encode()]


@pytest.mark.parametrize(
    "address, expected",
    [("127.0.0.1:7946", ("127.0.0.1", 7946)), ("[::1]:80", ("::1", 80)), ("seed.local:1", ("seed.local", 1))],
)
def test_split_address(address, expected):
    assert split_address(address) == expected


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.1:", ":80", "host:http"])
def test_split_address_rejects(address):
    with pytest.raises(ValueError, match="host:port"):
        split_address(address)
