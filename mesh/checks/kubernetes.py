"""The ``apiserver`` and ``nodes`` checks against the Kubernetes API.

``/readyz`` and ``/livez`` return 200 with the body ``ok`` when every internal
check of the API server passes. Otherwise they return 500 and list each check
on its own line, ``[+]ping ok`` or ``[-]etcd failed: reason withheld``; the
failed names go into the summary.

A node is NotReady when its ``Ready`` condition is missing or its status is
anything but ``"True"`` (``"False"``, or ``"Unknown"`` once the node stopped
posting status), as ``kubectl get nodes`` shows it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import httpx
import trio

from .client import CheckFileError
from .config import ApiServerCheck, KubeSource, NodesCheck
from .observation import CheckReason, Observation

__all__ = ["run_apiserver_check", "run_nodes_check", "HEALTH_PATHS", "NODE_PAGE_SIZE"]

HEALTH_PATHS = ("/readyz", "/livez")
# Nodes per list request; larger clusters are read in pages, as kubectl does.
NODE_PAGE_SIZE = 500
# NotReady node names listed in a summary; the rest are counted.
MAX_NAMED_NODES = 10
FAILED_CHECK = re.compile(r"^\[-\]([^\s]+) failed", re.MULTILINE)
# Statuses with which the API server rejects the credentials, and what to fix.
_AUTH_HINTS = {
    401: "the token or client certificate was rejected",
    403: "the user lacks the RBAC permission (see docs/checks.md)",
}
AUTH_STATUSES = tuple(_AUTH_HINTS)


class InvalidResponse(Exception):
    """A response that does not follow the Kubernetes API."""


async def run_apiserver_check(
    check: ApiServerCheck, client: httpx.AsyncClient
) -> Observation:
    """Request ``/readyz`` and ``/livez`` and judge both.

    Raises:
        httpx.HTTPError: a request failed; the runner turns it into a reason.
        CheckFileError: the token file cannot be read.
    """
    headers = await _auth_headers(check.source)
    started = trio.current_time()
    failures = []
    reason = CheckReason.OK
    for path in HEALTH_PATHS:
        response = await _get(client, check.source, path, headers)
        if response.status_code == 200 and response.text.strip() == "ok":
            continue
        failures.append(_describe_health(path, response))
        if response.status_code in AUTH_STATUSES:
            reason = CheckReason.UNAUTHORIZED
        elif reason is CheckReason.OK:
            reason = CheckReason.UNHEALTHY
    latency = trio.current_time() - started

    server = check.source.server
    if failures:
        summary = f"API server {server}: " + "; ".join(failures)
    else:
        summary = f"API server {server}: readyz and livez ok in {latency:.2f}s"
    return Observation(
        check=check.name,
        ok=not failures,
        summary=summary,
        latency=latency,
        reason=reason,
    )


async def run_nodes_check(check: NodesCheck, client: httpx.AsyncClient) -> Observation:
    """List the nodes and count those that are not Ready.

    Raises:
        httpx.HTTPError: a request failed; the runner turns it into a reason.
        CheckFileError: the token file cannot be read.
        InvalidResponse: the node list is not a NodeList.
    """
    headers = await _auth_headers(check.source)
    started = trio.current_time()
    nodes: list[Any] = []
    token = ""
    while True:
        params = {"limit": str(NODE_PAGE_SIZE)}
        if token:
            params["continue"] = token
        response = await _get(client, check.source, "/api/v1/nodes", headers, params)
        if response.status_code != 200:
            return _node_list_failed(check, response, trio.current_time() - started)
        items, token = _parse_node_list(response)
        nodes.extend(items)
        if not token:
            break
    latency = trio.current_time() - started

    not_ready = sorted(_node_name(node) for node in nodes if not _is_ready(node))
    ok = len(not_ready) <= check.max_not_ready
    if not not_ready:
        summary = f"{len(nodes)} of {len(nodes)} nodes Ready"
    else:
        summary = f"{len(not_ready)} of {len(nodes)} nodes NotReady: "
        summary += _name_nodes(not_ready)
        if ok:
            summary += f" (max_not_ready {check.max_not_ready})"
    return Observation(
        check=check.name,
        ok=ok,
        summary=summary,
        latency=latency,
        reason=CheckReason.OK if ok else CheckReason.NOT_READY,
    )


async def _auth_headers(source: KubeSource) -> dict[str, str]:
    token = source.token.reveal() if source.token else None
    if source.token_file is not None:
        # Read on every run: the kubelet replaces the token before it expires.
        try:
            token = (await trio.Path(source.token_file).read_text("utf-8")).strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise CheckFileError(
                f"cannot read token file {str(source.token_file)!r}: {reason}"
            ) from None
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


async def _get(
    client: httpx.AsyncClient,
    source: KubeSource,
    path: str,
    headers: Mapping[str, str],
    params: Mapping[str, str] | None = None,
) -> httpx.Response:
    extensions = {}
    if source.tls_server_name:
        extensions["sni_hostname"] = source.tls_server_name
    return await client.get(
        source.server + path, headers=headers, params=params, extensions=extensions
    )


def _describe_health(path: str, response: httpx.Response) -> str:
    text = f"{path} returned {response.status_code}"
    if response.status_code in AUTH_STATUSES:
        return f"{text}, {_AUTH_HINTS[response.status_code]}"
    failed = FAILED_CHECK.findall(response.text)
    if failed:
        return f"{text}, failed checks: {', '.join(failed)}"
    return text


def _node_list_failed(
    check: NodesCheck, response: httpx.Response, latency: float
) -> Observation:
    status = response.status_code
    summary = f"listing nodes at {check.source.server} returned {status}"
    reason = CheckReason.STATUS
    if status in AUTH_STATUSES:
        summary += f", {_AUTH_HINTS[status]}"
        reason = CheckReason.UNAUTHORIZED
    return Observation(
        check=check.name, ok=False, summary=summary, latency=latency, reason=reason
    )


def _parse_node_list(response: httpx.Response) -> tuple[list[Any], str]:
    try:
        document = response.json()
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        raise InvalidResponse("the node list is not JSON") from None
    if not isinstance(document, Mapping) or document.get("kind") != "NodeList":
        raise InvalidResponse("the node list is not a NodeList")
    items = document.get("items") or []
    metadata = document.get("metadata") or {}
    if not isinstance(items, list) or not isinstance(metadata, Mapping):
        raise InvalidResponse("the NodeList has no list of items")
    return items, str(metadata.get("continue") or "")


def _node_name(node: Any) -> str:
    metadata = node.get("metadata") if isinstance(node, Mapping) else None
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    return str(name) if name else "(unnamed)"


def _is_ready(node: Any) -> bool:
    status = node.get("status") if isinstance(node, Mapping) else None
    conditions = status.get("conditions") if isinstance(status, Mapping) else None
    for condition in conditions or ():
        if isinstance(condition, Mapping) and condition.get("type") == "Ready":
            return condition.get("status") == "True"
    return False


def _name_nodes(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_NAMED_NODES])
    hidden = len(names) - MAX_NAMED_NODES
    return f"{shown} and {hidden} more" if hidden > 0 else shown
