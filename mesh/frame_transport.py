"""An httpx transport for the agents' own POSTs: one TCP segment per request.

httpx (through httpcore) writes a request's headers and its body with two
writes, so a 100-byte ping leaves as two TCP segments, and the server sends an
extra ACK between them. Agents probe each other every second, so those two
packets are a third of a probe's bytes on the wire. This transport sends the
whole request with one write on a socket with TCP_NODELAY (trio's default), keeps
connections alive per peer, and otherwise behaves as an httpx transport: the
agent still calls ``client.post`` and handles httpx's exceptions.

It speaks plain HTTP/1.1 through h11 (which httpx and hypercorn already use) and
nothing else: no TLS, no proxies, no redirects. Sinks keep using httpx's own
transport.
"""

from __future__ import annotations

import socket
import time

import h11
import httpx
import trio

__all__ = ["FrameTransport"]

# Bytes read from the socket at a time; a push-pull of 1,000 members is
# about 60 KiB, most frames are a few hundred bytes.
RECEIVE_SIZE = 65536


class _Connection:
    __slots__ = ("stream", "h11", "idle_since")

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


class FrameTransport(httpx.AsyncBaseTransport):
    """Keep-alive HTTP/1.1 over TCP, each request sent in one write.

    Args:
        keepalive_expiry: seconds an idle connection is kept for reuse.
        max_idle_per_host: idle connections kept per peer at most.
    """

    def __init__(self, *, keepalive_expiry: float, max_idle_per_host: int = 4) -> None:
        self._keepalive_expiry = keepalive_expiry
        self._max_idle_per_host = max_idle_per_host
        # Idle connections by (host, port), most recently used last.
        self._idle: dict[tuple[str, int], list[_Connection]] = {}

    async def aclose(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

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

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "http":
            raise httpx.UnsupportedProtocol(
                f"unsupported scheme {request.url.scheme!r}, expected http", request=request
            )
        key = (request.url.host, request.url.port or 80)
        body = await request.aread()

        # The peer may close a reused connection just as we send on it, which
        # is no sign of trouble at the peer, so try once more on a new
        # connection before reporting a failure.
        connection = self._take_idle(key)
        if connection is not None:
            try:
                return await self._exchange(key, connection, request, body)
            except _StaleConnection:
                pass
        connection = await self._connect(key, request)
        try:
            return await self._exchange(key, connection, request, body)
        except _StaleConnection as exc:
            raise httpx.RemoteProtocolError(
                "server closed the connection without a response", request=request
            ) from exc.__cause__

    async def _connect(self, key: tuple[str, int], request: httpx.Request) -> _Connection:
        timeout = request.extensions.get("timeout", {}).get("connect")
        try:
            with trio.fail_after(timeout if timeout is not None else float("inf")):
                stream = await trio.open_tcp_stream(*key)
        except trio.TooSlowError as exc:
            raise httpx.ConnectTimeout(f"connect to {key[0]}:{key[1]} timed out", request=request) from exc
        except OSError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        return _Connection(stream)

    async def _exchange(
        self,
        key: tuple[str, int],
        connection: _Connection,
        request: httpx.Request,
        body: bytes,
    ) -> httpx.Response:
        done = False
        try:
            response = await self._send_and_receive(connection, request, body)
            done = True
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            if connection.h11.their_state is h11.IDLE:
                raise _StaleConnection() from exc
            raise httpx.ReadError(str(exc), request=request) from exc
        except h11.RemoteProtocolError as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
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
        self, connection: _Connection, request: httpx.Request, body: bytes
    ) -> httpx.Response:
        conn = connection.h11
        headers = [(k, v) for k, v in request.headers.raw if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        data = conn.send(
            h11.Request(method=request.method, target=request.url.raw_path, headers=headers)
        )
        data += conn.send(h11.Data(data=body)) if body else b""
        data += conn.send(h11.EndOfMessage())
        await connection.stream.send_all(data)

        status, response_headers, chunks = 0, [], []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                received = await connection.stream.receive_some(RECEIVE_SIZE)
                if not received and conn.their_state is h11.IDLE:
                    raise _StaleConnection()
                conn.receive_data(received)
            elif isinstance(event, h11.Response):
                status, response_headers = event.status_code, event.headers
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        return httpx.Response(
            status, headers=list(response_headers), content=b"".join(chunks), request=request
        )


class _StaleConnection(Exception):
    """The connection closed before any byte of the response arrived."""
