"""The tcp and dns checks on loopback and the local resolver."""

from __future__ import annotations

import socket
from typing import Any

import trio

from mesh.checks.config import parse_check_config
from mesh.checks.observation import CheckReason
from mesh.checks.runner import run_check


def make_check(kind: str, **keys: Any) -> Any:
    return parse_check_config(0, {"name": "net", "kind": kind, "timeout": 5, **keys})


def closed_port() -> int:
    """Return a loopback port that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_tcp_connect_to_listening_port() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    try:
        observation = await run_check(make_check("tcp", host="127.0.0.1", port=port))
    finally:
        await listeners[0].aclose()

    assert observation.ok, observation.summary
    assert observation.reason == CheckReason.OK
    assert observation.summary.startswith(f"TCP connect to 127.0.0.1:{port} in ")
    assert observation.latency is not None


async def test_tcp_connect_to_closed_port() -> None:
    port = closed_port()
    observation = await run_check(make_check("tcp", host="127.0.0.1", port=port))

    assert observation.ok is False
    assert observation.reason == CheckReason.CONNECT_FAILED
    assert observation.summary == (
        f"TCP connect to 127.0.0.1:{port} failed: Connection refused"
    )
    assert observation.latency is None


async def test_tcp_unresolvable_host() -> None:
    observation = await run_check(make_check("tcp", host="db.invalid", port=5432))

    assert observation.ok is False
    assert observation.reason == CheckReason.DNS_FAILED
    assert observation.summary.startswith(
        "TCP connect to db.invalid:5432 failed: name not resolved: "
    )


async def test_dns_localhost() -> None:
    observation = await run_check(make_check("dns", host="localhost"))

    assert observation.ok, observation.summary
    assert observation.summary.startswith("localhost resolved to ")
    assert "127.0.0.1" in observation.summary


async def test_dns_localhost_expected_address() -> None:
    check = make_check("dns", host="localhost", expect=["127.0.0.1"])
    observation = await run_check(check)

    assert observation.ok, observation.summary


async def test_dns_missing_expected_address() -> None:
    check = make_check("dns", host="localhost", expect=["127.0.0.1", "192.0.2.7"])
    observation = await run_check(check)

    assert observation.ok is False
    assert observation.reason == CheckReason.DNS_MISMATCH
    assert observation.summary.endswith(", expected also 192.0.2.7")


async def test_dns_invalid_name_fails() -> None:
    # RFC 6761 reserves .invalid: resolution always fails.
    observation = await run_check(make_check("dns", host="shop.invalid"))

    assert observation.ok is False
    assert observation.reason == CheckReason.DNS_FAILED
    assert observation.summary.startswith(
        "DNS lookup of shop.invalid failed: name not resolved: "
    )


async def test_dns_numeric_address() -> None:
    observation = await run_check(make_check("dns", host="::1", expect=["::1"]))

    assert observation.ok, observation.summary
    assert observation.summary.startswith("::1 resolved to ::1 in ")
