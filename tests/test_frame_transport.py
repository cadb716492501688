"""The agents' own HTTP transport, against a real hypercorn server on loopback."""

import socket

import httpx
import pytest
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from mesh.frame_transport import FrameTransport


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def echo_app(scope, receive, send):
    """Answer every POST with its body and the client's port."""
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
    port = str(scope["client"][1]).encode()
    headers = [(b"content-type", b"application/octet-stream"), (b"x-client-port", port)]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def start_server(nursery, port, keep_alive_timeout=60.0):
    config = HypercornConfig()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.keep_alive_timeout = keep_alive_timeout
    await nursery.start(lambda task_status: serve(echo_app, config, task_status=task_status))


def client():
    return httpx.AsyncClient(transport=FrameTransport(keepalive_expiry=30.0), timeout=5.0)


async def test_frame_transport_round_trip_and_reuse():
    port = free_port()
    async with trio.open_nursery() as nursery:
        await start_server(nursery, port)
        async with client() as c:
            first = await c.post(f"http://127.0.0.1:{port}/healthz", content=b"ping-1")
            second = await c.post(f"http://127.0.0.1:{port}/healthz", content=b"ping-2")
        nursery.cancel_scope.cancel()
    assert first.status_code == 200
    assert first.content == b"ping-1"
    assert second.content == b"ping-2"
    # The second request went over the first one's connection.
    assert first.headers["x-client-port"] == second.headers["x-client-port"]


async def test_frame_transport_large_body():
    port = free_port()
    payload = bytes(range(256)) * 1000
    async with trio.open_nursery() as nursery:
        await start_server(nursery, port)
        async with client() as c:
            response = await c.post(f"http://127.0.0.1:{port}/healthz", content=payload)
        nursery.cancel_scope.cancel()
    assert response.content == payload


async def test_frame_transport_refused_raises_connect_error():
    port = free_port()
    async with client() as c:
        with pytest.raises(httpx.ConnectError):
            await c.post(f"http://127.0.0.1:{port}/healthz", content=b"x")


async def test_frame_transport_retries_connection_closed_by_server():
    port = free_port()
    async with trio.open_nursery() as nursery:
        await start_server(nursery, port, keep_alive_timeout=0.2)
        async with client() as c:
            first = await c.post(f"http://127.0.0.1:{port}/healthz", content=b"a")
            # The server closes the idle connection; the next request must not
            # fail because of it.
            await trio.sleep(0.5)
            second = await c.post(f"http://127.0.0.1:{port}/healthz", content=b"b")
        nursery.cancel_scope.cancel()
    assert second.content == b"b"
    assert first.headers["x-client-port"] != second.headers["x-client-port"]


async def test_frame_transport_rejects_https():
    async with client() as c:
        with pytest.raises(httpx.UnsupportedProtocol, match="'https'"):
            await c.post("https://127.0.0.1:1/healthz", content=b"x")
