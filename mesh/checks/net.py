"""The ``tcp`` and ``dns`` checks.

Name resolution goes through the system resolver (``getaddrinfo`` in a
thread), so a check resolves what the agent's other connections resolve,
``/etc/hosts`` included.
"""

from __future__ import annotations

import ipaddress
import socket

import trio

from .config import DnsCheck, TcpCheck
from .observation import CheckReason, Observation

__all__ = ["run_tcp_check", "run_dns_check"]


async def run_tcp_check(check: TcpCheck) -> Observation:
    """Open a TCP connection to the check's host and port, then close it.

    Trio tries the resolved addresses in turn (happy eyeballs, RFC 8305).

    Raises:
        OSError: resolution or every connection attempt failed; the runner
            turns it into a reason.
    """
    started = trio.current_time()
    stream = await trio.open_tcp_stream(check.host, check.port)
    latency = trio.current_time() - started
    await stream.aclose()
    return Observation(
        check=check.name,
        ok=True,
        summary=f"TCP connect to {check.address} in {latency:.3f}s",
        latency=latency,
        reason=CheckReason.OK,
    )


async def run_dns_check(check: DnsCheck) -> Observation:
    """Resolve the check's host and compare the addresses with ``expect``.

    Raises:
        socket.gaierror: the name did not resolve; the runner turns it into a
            reason.
    """
    started = trio.current_time()
    answers = await trio.socket.getaddrinfo(check.host, None, type=socket.SOCK_STREAM)
    latency = trio.current_time() - started

    # An IPv6 link-local address carries a zone ("fe80::1%eth0"); expect has none.
    addresses = sorted({str(answer[4][0]).partition("%")[0] for answer in answers})
    resolved = {ipaddress.ip_address(a) for a in addresses}
    missing = [a for a in check.expect if ipaddress.ip_address(a) not in resolved]

    summary = f"{check.host} resolved to {', '.join(addresses)} in {latency:.3f}s"
    reason = CheckReason.OK
    if not addresses:
        summary = f"{check.host} resolved to no address"
        reason = CheckReason.DNS_FAILED
    elif missing:
        summary += f", expected also {', '.join(missing)}"
        reason = CheckReason.DNS_MISMATCH
    return Observation(
        check=check.name,
        ok=reason is CheckReason.OK,
        summary=summary,
        latency=latency,
        reason=reason,
    )
