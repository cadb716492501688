"""The agents' HTTP client for frames to each other: one TCP segment per request.

Agents POST signed frames to each other's ``/healthz`` every probe interval,
so this path is small, fixed and hot: plain HTTP/1.1, no TLS, no proxies, no
redirects, no default headers. It is written on h11 (which hypercorn already
loads) rather than on httpx for two reasons:

* httpx (through httpcore) writes a request's headers and its body with two
  writes, so a 100-byte ping leaves as two TCP segments. The server sends an
  extra ACK between them, and those packets are a third of a probe's bytes on
  the wire. Here the whole request goes out in one write on a socket with
  TCP_NODELAY (trio's default).
* httpx costs about 3.5 MiB of RSS to import, a tenth of an idle agent. The
  agent loads it only when a receiver or a check needs it.

Connections are kept alive per peer and reused most recently used first.
"""

from __future__ import annotations

import socket
import time
from typing import Self

import h11
import trio

__all__ = ["FrameClient", "FrameResponse", "PeerError", "PeerTimeout", "PeerUnreachable"]

# Bytes read from the socket at a time. A push-pull of 1,000 members is
# about 60 KiB, and most frames are a few hundred bytes.
RECEIVE_SIZE = 65536


class PeerError(Exception):
    """A frame could not be exchanged with a peer."""


class PeerTimeout(PeerError):
    """The peer did not accept the connection in time."""


class PeerUnreachable(PeerError):
    """The connection was refused or broke, or the response was not valid HTTP."""


class FrameResponse:
    """A peer's response: the HTTP status and the whole body."""

    __slots__ = ("content", "status_code")

    def __init__(self, status_code: int, content: bytes) -> None:
        self.status_code = status_code
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


class _Connection:
    __slots__ = ("h11", "idle_since", "stream")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)
        # Monotonic time the connection was returned to the pool.
        self.idle_since = time.monotonic()

    def close(self) -> None:
        # Closing the socket is synchronous, so it also works while cancelled.
        self.stream.socket.close()

    def closed_by_peer(self) -> bool:
        """Return whether the peer closed this idle connection or sent unrequested bytes."""
        # trio's socket only receives asynchronously; peek through a stdlib
        # socket object on the same descriptor, detached so it closes nothing.
        peek = socket.socket(fileno=self.stream.socket.fileno())
        try:
            peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            return True
        finally:
            peek.detach()
        # End of file or unrequested bytes: the connection is unusable either way.
        return True


class _StaleConnection(Exception):
    """The connection closed before any byte of the response arrived."""


class FrameClient:
    """Keep-alive HTTP/1.1 POSTs over TCP, each request sent in one write.

    Args:
        keepalive_expiry: seconds an idle connection is kept for reuse.
        max_idle_per_host: idle connections kept per peer at most.
    """

    def __init__(self, *, keepalive_expiry: float, max_idle_per_host: int = 4) -> None:
        self._keepalive_expiry = keepalive_expiry
        self._max_idle_per_host = max_idle_per_host
        # Idle connections by (host, port), most recently used last.
        self._idle: dict[tuple[str, int], list[_Connection]] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    async def post(
        self, address: str, path: str, body: bytes, *, connect_timeout: float
    ) -> FrameResponse:
        """POST ``body`` to ``http://{address}{path}`` and return the response.

        The caller bounds the whole exchange with its own cancel scope.
        ``connect_timeout`` bounds only the TCP connect, so that a peer that
        does not accept a connection is distinguished from one that accepts
        and responds late.

        Raises:
            PeerTimeout: the connect took longer than ``connect_timeout``.
            PeerUnreachable: the connect was refused, the connection broke, or
                the answer was not valid HTTP/1.1.
            ValueError: ``address`` is not ``host:port``.
        """
        key = split_address(address)
        # The peer may close a reused connection just as we send on it, which
        # is no sign of trouble at the peer, so try once more on a new
        # connection before reporting a failure.
        connection = self._take_idle(key)
        if connection is not None:
            try:
                return await self._exchange(key, connection, path, body)
            except _StaleConnection:
                pass
        connection = await self._connect(key, connect_timeout)
        try:
            return await self._exchange(key, connection, path, body)
        except _StaleConnection as exc:
            raise PeerUnreachable(
                f"{address} closed the connection without a response"
            ) from exc.__cause__

    def _take_idle(self, key: tuple[str, int]) -> _Connection | None:
        connections = self._idle.get(key, [])
        now = time.monotonic()
        while connections:
            connection = connections.pop()
            expired = now - connection.idle_since > self._keepalive_expiry
            if expired or connection.closed_by_peer():
                connection.close()
                continue
            return connection
        return None

    def _put_idle(self, key: tuple[str, int], connection: _Connection) -> None:
        connections = self._idle.setdefault(key, [])
        if len(connections) >= self._max_idle_per_host:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        connections.append(connection)

    async def _connect(self, key: tuple[str, int], timeout: float) -> _Connection:
        try:
            with trio.fail_after(timeout):
                stream = await trio.open_tcp_stream(*key)
        except trio.TooSlowError as exc:
            raise PeerTimeout(f"connect to {key[0]}:{key[1]} timed out after {timeout}s") from exc
        except OSError as exc:
            raise PeerUnreachable(f"connect to {key[0]}:{key[1]} failed: {exc}") from exc
        return _Connection(stream)

    async def _exchange(
        self, key: tuple[str, int], connection: _Connection, path: str, body: bytes
    ) -> FrameResponse:
        done = False
        try:
            response = await self._send_and_receive(key, connection, path, body)
            done = True
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            if connection.h11.their_state is h11.IDLE:
                raise _StaleConnection() from exc
            raise PeerUnreachable(f"connection to {key[0]}:{key[1]} broke: {exc}") from exc
        except h11.RemoteProtocolError as exc:
            raise PeerUnreachable(f"{key[0]}:{key[1]} sent an invalid HTTP response: {exc}") from exc
        finally:
            if not done:
                connection.close()
        reusable = connection.h11.our_state is h11.DONE and connection.h11.their_state is h11.DONE
        if reusable:
            connection.h11.start_next_cycle()
            self._put_idle(key, connection)
        else:
            connection.close()
        return response

    async def _send_and_receive(
        self, key: tuple[str, int], connection: _Connection, path: str, body: bytes
    ) -> FrameResponse:
        conn = connection.h11
        # Host is the only header HTTP/1.1 requires. No content-type: the
        # endpoint takes frames only and each frame names its version.
        host = f"[{key[0]}]" if ":" in key[0] else key[0]
        headers = [(b"host", f"{host}:{key[1]}".encode()), (b"content-length", b"%d" % len(body))]
        data = conn.send(h11.Request(method="POST", target=path, headers=headers))
        data += conn.send(h11.Data(data=body)) if body else b""
        data += conn.send(h11.EndOfMessage())
        await connection.stream.send_all(data)

        status, chunks = 0, []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                received = await connection.stream.receive_some(RECEIVE_SIZE)
                if not received and conn.their_state is h11.IDLE:
                    raise _StaleConnection()
                conn.receive_data(received)
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        return FrameResponse(status, b"".join(chunks))


def split_address(address: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6) into its parts.

    Raises:
        ValueError: the address has no port or the port is not a number.
    """
    host, separator, port = address.rpartition(":")
    if not separator or not host or not port.isdigit():
        raise ValueError(f"peer address {address!r} is not host:port")
    return host.strip("[]"), int(port)
