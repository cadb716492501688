"""A local HTTPS server that responds like the Kubernetes API server.

It serves what the ``apiserver`` and ``nodes`` checks read, the way
kube-apiserver (v1.30) does:

- ``GET /readyz`` and ``GET /livez``: 200 with the body ``ok``, or 500 with one
  line per internal check (``[+]ping ok``, ``[-]etcd failed: reason withheld``)
  and a last line ``readyz check failed``;
- ``GET /api/v1/nodes``: a ``NodeList`` in pages of ``limit`` items, linked by
  ``metadata.continue``;
- authentication: a wrong bearer token gets 401 with a ``Status`` object on
  every path. A request without a token is ``system:anonymous``, which the
  default RBAC lets read the health paths but not the nodes (403). With
  ``client_ca`` the server verifies client certificates during the TLS
  handshake, and a request that passed it is authenticated.

Serve it on 127.0.0.1::

    api = KubeApiServer(token="s3cret", nodes=[Node("node-a")])
    async with serve_https(api, cert_file, key_file) as base_url:
        ...  # https://127.0.0.1:PORT
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import ssl
import urllib.parse
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import hypercorn.config
import hypercorn.trio
import trio

__all__ = ["Node", "KubeApiServer", "serve_https"]

logger = logging.getLogger(__name__)

# Internal checks of kube-apiserver's /readyz and /livez (a subset, in order).
READYZ_CHECKS = ("ping", "log", "etcd", "etcd-readiness", "informer-sync", "shutdown")
LIVEZ_CHECKS = ("ping", "log", "etcd")
# The page size kube-apiserver uses when a list request has no limit: all items.
UNLIMITED = 0


@dataclasses.dataclass
class Node:
    name: str
    # Status of the Ready condition: "True", "False", "Unknown", or None for a
    # node that has no Ready condition yet.
    ready: str | None = "True"

    def to_json(self) -> dict[str, Any]:
        conditions = [
            {
                "type": "MemoryPressure",
                "status": "False",
                "reason": "KubeletHasSufficientMemory",
            },
            {
                "type": "DiskPressure",
                "status": "False",
                "reason": "KubeletHasNoDiskPressure",
            },
        ]
        if self.ready is not None:
            reason = "KubeletReady" if self.ready == "True" else "KubeletNotReady"
            conditions.append({"type": "Ready", "status": self.ready, "reason": reason})
        return {
            "metadata": {
                "name": self.name,
                "labels": {"kubernetes.io/hostname": self.name},
            },
            "spec": {},
            "status": {"conditions": conditions},
        }


@dataclasses.dataclass
class KubeApiServer:
    """The ASGI app. Change its fields between requests to change its responses."""

    # Bearer token that authenticates a request, or None to accept none.
    token: str | None = None
    nodes: list[Node] = dataclasses.field(default_factory=list)
    # Internal checks that fail in /readyz and /livez, such as {"etcd"}.
    failing: set[str] = dataclasses.field(default_factory=set)
    # Whether a client certificate verified in the TLS handshake authenticates.
    client_cert_auth: bool = False
    # Seconds to wait before responding, to make a check time out.
    delay: float = 0.0
    # Body served for /api/v1/nodes instead of the NodeList, to break the API.
    node_list_body: bytes | None = None
    # Every request as (path, query mapping, authorization header or None).
    requests: list[tuple[str, dict[str, str], str | None]] = dataclasses.field(
        default_factory=list
    )

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _run_lifespan(receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        query = dict(urllib.parse.parse_qsl(scope["query_string"].decode()))
        authorization = headers.get("authorization")
        self.requests.append((scope["path"], query, authorization))
        if self.delay:
            await trio.sleep(self.delay)
        status, content_type, body = self._respond(scope, query, authorization)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", content_type.encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _respond(
        self, scope: dict[str, Any], query: dict[str, str], authorization: str | None
    ) -> tuple[int, str, bytes]:
        user = self._authenticate(authorization)
        if user is None:
            return _status(401, "Unauthorized", "Unauthorized")
        path = scope["path"]
        if scope["method"] != "GET":
            message = "the server does not allow this method on the requested resource"
            return _status(405, "MethodNotAllowed", message)
        if path in ("/readyz", "/livez"):
            return self._health(path)
        if path == "/api/v1/nodes":
            if user == "system:anonymous":
                message = (
                    'nodes is forbidden: User "system:anonymous" cannot list resource '
                    '"nodes" in API group "" at the cluster scope'
                )
                return _status(403, "Forbidden", message)
            return self._node_list(query)
        message = "the server could not find the requested resource"
        return _status(404, "NotFound", message)

    def _authenticate(self, authorization: str | None) -> str | None:
        """Return the user name, or None when the credentials are invalid."""
        if self.client_cert_auth:
            # Only clients with a verified certificate got past the handshake.
            return "client-certificate"
        if authorization is None:
            return "system:anonymous"
        if self.token is not None and authorization == f"Bearer {self.token}":
            return "service-account"
        return None

    def _health(self, path: str) -> tuple[int, str, bytes]:
        name = path.lstrip("/")
        checks = READYZ_CHECKS if name == "readyz" else LIVEZ_CHECKS
        if not self.failing.intersection(checks):
            return 200, "text/plain; charset=utf-8", b"ok"
        lines = []
        for check in checks:
            if check in self.failing:
                lines.append(f"[-]{check} failed: reason withheld")
            else:
                lines.append(f"[+]{check} ok")
        lines.append(f"{name} check failed")
        return 500, "text/plain; charset=utf-8", ("\n".join(lines) + "\n").encode()

    def _node_list(self, query: dict[str, str]) -> tuple[int, str, bytes]:
        if self.node_list_body is not None:
            return 200, "application/json", self.node_list_body
        limit = int(query.get("limit", UNLIMITED))
        start = int(base64.b64decode(query["continue"])) if "continue" in query else 0
        end = len(self.nodes) if limit == UNLIMITED else start + limit
        metadata: dict[str, Any] = {"resourceVersion": "4242"}
        if end < len(self.nodes):
            metadata["continue"] = base64.b64encode(str(end).encode()).decode()
            metadata["remainingItemCount"] = len(self.nodes) - end
        document = {
            "kind": "NodeList",
            "apiVersion": "v1",
            "metadata": metadata,
            "items": [node.to_json() for node in self.nodes[start:end]],
        }
        return 200, "application/json", json.dumps(document).encode()


def _status(code: int, reason: str, message: str) -> tuple[int, str, bytes]:
    document = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return code, "application/json", json.dumps(document).encode()


async def _run_lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


@contextlib.asynccontextmanager
async def serve_https(
    app: Any,
    cert_file: Path,
    key_file: Path,
    *,
    client_ca_file: Path | None = None,
) -> AsyncIterator[str]:
    """Serve the ASGI ``app`` over HTTPS on 127.0.0.1; yield its base URL.

    Args:
        client_ca_file: when set, the server requires a client certificate
            signed by this CA, as kube-apiserver's ``--client-ca-file`` does
            for x509 authentication.
    """
    config = hypercorn.config.Config()
    config.bind = ["127.0.0.1:0"]
    config.certfile = str(cert_file)
    config.keyfile = str(key_file)
    if client_ca_file is not None:
        config.ca_certs = str(client_ca_file)
        config.verify_mode = ssl.CERT_REQUIRED
    config.graceful_timeout = 1.0
    config.accesslog = None
    config.errorlog = logger
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        serve = partial(
            hypercorn.trio.serve, app, config, shutdown_trigger=shutdown.wait
        )
        binds = await nursery.start(serve)
        try:
            yield binds[0]
        finally:
            shutdown.set()
