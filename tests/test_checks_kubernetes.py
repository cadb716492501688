"""The apiserver and nodes checks against a local HTTPS server that responds like
the Kubernetes API server, through each source: service account, kubeconfig, URL.
"""

from __future__ import annotations

import base64
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mesh.checks.config import parse_check_config
from mesh.checks.observation import CheckReason, Observation
from mesh.checks.runner import run_check

from certificates import CertificateAuthority
from kube_api import KubeApiServer, Node, serve_https

TOKEN = "eyJhbGciOiJSUzI1NiJ9.service-account-token.sig"


class Cluster:
    """A fake API server on loopback and the files a client needs to reach it."""

    def __init__(
        self, api: KubeApiServer, url: str, folder: Path, ca: CertificateAuthority
    ) -> None:
        self.api = api
        self.url = url
        self.folder = folder
        self.ca = ca
        self.port = url.rsplit(":", 1)[1]
        self.environ = {
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": self.port,
        }
        # A pod's service account folder: token and the cluster CA.
        self.service_account = folder / "serviceaccount"
        self.service_account.mkdir()
        (self.service_account / "token").write_text(TOKEN + "\n")
        ca.write(self.service_account)

    def check(self, kind: str = "apiserver", **keys: Any) -> Any:
        """Parse a check of ``kind``; by default it uses the service account."""
        raw = {"name": "k8s", "kind": kind, "timeout": 5, **keys}
        if not {"in_cluster", "kubeconfig", "url"} & keys.keys():
            raw["in_cluster"] = True
            raw["service_account_dir"] = str(self.service_account)
        return parse_check_config(
            0, raw, cluster="seoul", base_dir=self.folder, environ=self.environ
        )


@pytest.fixture
def ca() -> CertificateAuthority:
    return CertificateAuthority()


@pytest.fixture
async def cluster(tmp_path: Path, ca: CertificateAuthority) -> AsyncIterator[Cluster]:
    cert_file, key_file = ca.issue_server().write(tmp_path, "apiserver")
    api = KubeApiServer(token=TOKEN, nodes=[Node("node-a"), Node("node-b")])
    async with serve_https(api, cert_file, key_file) as url:
        yield Cluster(api, url, tmp_path, ca)


def base64_text(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def assert_failed(observation: Observation, reason: CheckReason) -> None:
    assert observation.ok is False, observation.summary
    assert observation.reason == reason, observation.summary


# The service account source.


async def test_apiserver_healthy_in_cluster(cluster: Cluster) -> None:
    observation = await run_check(cluster.check())

    assert observation.ok, observation.summary
    assert observation.reason == CheckReason.OK
    assert observation.check == "k8s"
    assert observation.latency is not None and observation.latency > 0
    assert "readyz and livez ok" in observation.summary
    paths = [path for path, _, _ in cluster.api.requests]
    assert paths == ["/readyz", "/livez"]
    assert {auth for _, _, auth in cluster.api.requests} == {f"Bearer {TOKEN}"}


async def test_apiserver_unhealthy_names_failed_checks(cluster: Cluster) -> None:
    cluster.api.failing = {"etcd"}
    observation = await run_check(cluster.check())

    assert_failed(observation, CheckReason.UNHEALTHY)
    assert "/readyz returned 500, failed checks: etcd" in observation.summary
    assert "/livez returned 500, failed checks: etcd" in observation.summary


async def test_apiserver_not_ready_but_live(cluster: Cluster) -> None:
    cluster.api.failing = {"informer-sync", "shutdown"}
    observation = await run_check(cluster.check())

    assert_failed(observation, CheckReason.UNHEALTHY)
    assert "/readyz returned 500, failed checks: informer-sync, shutdown" in (
        observation.summary
    )
    assert "/livez" not in observation.summary


async def test_service_account_token_reread_each_run(cluster: Cluster) -> None:
    check = cluster.check()
    first = await run_check(check)
    # The kubelet rotates the projected token in place.
    cluster.api.token = "rotated-token"
    (cluster.service_account / "token").write_text("rotated-token")
    second = await run_check(check)

    assert first.ok, first.summary
    assert second.ok, second.summary
    assert cluster.api.requests[-1][2] == "Bearer rotated-token"


async def test_bad_token_is_unauthorized(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cluster.api.token = "another-token"
    apiserver = await run_check(cluster.check())
    nodes = await run_check(cluster.check("nodes"))

    assert_failed(apiserver, CheckReason.UNAUTHORIZED)
    assert "/readyz returned 401, the token or client certificate was rejected" in (
        apiserver.summary
    )
    assert_failed(nodes, CheckReason.UNAUTHORIZED)
    assert nodes.summary == (
        f"listing nodes at {cluster.url} returned 401, the token or client "
        "certificate was rejected"
    )
    for text in (apiserver.summary, nodes.summary, caplog.text):
        assert TOKEN not in text
        assert "service-account-token" not in text


async def test_token_file_removed_is_config_error(cluster: Cluster) -> None:
    check = cluster.check()
    (cluster.service_account / "token").unlink()
    observation = await run_check(check)

    assert_failed(observation, CheckReason.CONFIG_ERROR)
    assert "cannot read token file" in observation.summary
    assert "No such file or directory" in observation.summary


async def test_wrong_ca_is_tls_error(cluster: Cluster) -> None:
    CertificateAuthority("another CA").write(cluster.service_account)
    observation = await run_check(cluster.check())

    assert_failed(observation, CheckReason.TLS_ERROR)
    assert "certificate verify failed" in observation.summary
    # The handshake failed, so the server never saw the token.
    assert cluster.api.requests == []


async def test_unreadable_ca_is_config_error(cluster: Cluster) -> None:
    check = cluster.check()
    (cluster.service_account / "ca.crt").write_text("not a certificate")
    observation = await run_check(check)

    assert_failed(observation, CheckReason.CONFIG_ERROR)
    assert "cannot load CA file" in observation.summary


# Nodes.


async def test_nodes_all_ready(cluster: Cluster) -> None:
    observation = await run_check(cluster.check("nodes"))

    assert observation.ok, observation.summary
    assert observation.summary == "2 of 2 nodes Ready"


async def test_nodes_not_ready_named(cluster: Cluster) -> None:
    cluster.api.nodes = [
        Node("node-a"),
        Node("node-d", ready="Unknown"),
        Node("node-c"),
        Node("node-b", ready="False"),
        Node("node-e", ready=None),
    ]
    observation = await run_check(cluster.check("nodes"))

    assert_failed(observation, CheckReason.NOT_READY)
    assert observation.summary == "3 of 5 nodes NotReady: node-b, node-d, node-e"


async def test_nodes_within_max_not_ready(cluster: Cluster) -> None:
    cluster.api.nodes = [Node("node-a"), Node("node-b", ready="False")]
    observation = await run_check(cluster.check("nodes", max_not_ready=1))

    assert observation.ok, observation.summary
    assert observation.summary == "1 of 2 nodes NotReady: node-b (max_not_ready 1)"


async def test_nodes_listed_in_pages(cluster: Cluster) -> None:
    cluster.api.nodes = [Node(f"node-{i:04}") for i in range(1100)]
    cluster.api.nodes[7].ready = "False"
    cluster.api.nodes[1099].ready = "False"
    observation = await run_check(cluster.check("nodes"))

    assert_failed(observation, CheckReason.NOT_READY)
    assert observation.summary == "2 of 1100 nodes NotReady: node-0007, node-1099"
    queries = [query for _, query, _ in cluster.api.requests]
    assert [q.get("limit") for q in queries] == ["500", "500", "500"]
    assert "continue" not in queries[0]
    assert "continue" in queries[1]


async def test_nodes_summary_caps_names(cluster: Cluster) -> None:
    cluster.api.nodes = [Node(f"node-{i:02}", ready="False") for i in range(25)]
    observation = await run_check(cluster.check("nodes"))

    assert observation.summary == (
        "25 of 25 nodes NotReady: node-00, node-01, node-02, node-03, node-04, "
        "node-05, node-06, node-07, node-08, node-09 and 15 more"
    )


async def test_nodes_not_a_node_list(cluster: Cluster) -> None:
    cluster.api.node_list_body = b"<html>proxy error</html>"
    observation = await run_check(cluster.check("nodes"))

    assert_failed(observation, CheckReason.INVALID_RESPONSE)
    assert "the node list is not JSON" in observation.summary


# The kubeconfig source.


def write_kubeconfig(cluster: Cluster, user: dict[str, Any], **extra: Any) -> Path:
    ca_data = base64_text(cluster.ca.cert_pem)
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "admin@local",
        "contexts": [
            {"name": "admin@local", "context": {"cluster": "local", "user": "admin"}}
        ],
        "clusters": [
            {
                "name": "local",
                "cluster": {
                    "server": cluster.url,
                    "certificate-authority-data": ca_data,
                    **extra,
                },
            }
        ],
        "users": [{"name": "admin", "user": user}],
    }
    file = cluster.folder / "kubeconfig"
    file.write_text(yaml.safe_dump(document))
    return file


async def test_kubeconfig_with_token(cluster: Cluster) -> None:
    write_kubeconfig(cluster, {"token": TOKEN})
    check = cluster.check("nodes", kubeconfig="kubeconfig")
    observation = await run_check(check)

    assert observation.ok, observation.summary
    assert check.subject == "nodes/seoul"


async def test_kubeconfig_tls_server_name(cluster: Cluster) -> None:
    # The certificate names "localhost", the URL 127.0.0.1's other name.
    write_kubeconfig(cluster, {"token": TOKEN}, **{"tls-server-name": "localhost"})
    observation = await run_check(cluster.check(kubeconfig="kubeconfig"))

    assert observation.ok, observation.summary


async def test_kubeconfig_wrong_tls_server_name(cluster: Cluster) -> None:
    write_kubeconfig(cluster, {"token": TOKEN}, **{"tls-server-name": "api.other"})
    observation = await run_check(cluster.check(kubeconfig="kubeconfig"))

    assert_failed(observation, CheckReason.TLS_ERROR)


async def test_kubeconfig_client_certificate(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    # kube-apiserver with --client-ca-file: the certificate authenticates.
    cert_file, key_file = ca.issue_server().write(tmp_path, "apiserver")
    client_ca = CertificateAuthority("client CA")
    client = client_ca.issue_client("system:admin")
    api = KubeApiServer(client_cert_auth=True, nodes=[Node("node-a")])
    client_ca_file = client_ca.write(tmp_path, "client-ca.crt")
    async with serve_https(
        api, cert_file, key_file, client_ca_file=client_ca_file
    ) as url:
        cluster = Cluster(api, url, tmp_path, ca)
        user = {
            "client-certificate-data": base64_text(client.cert_pem),
            "client-key-data": base64_text(client.key_pem),
        }
        write_kubeconfig(cluster, user)
        observation = await run_check(cluster.check("nodes", kubeconfig="kubeconfig"))

        # The same, with the certificate and key in files.
        client.write(tmp_path, "client")
        user = {"client-certificate": "client.crt", "client-key": "client.key"}
        write_kubeconfig(cluster, user)
        from_files = await run_check(cluster.check("nodes", kubeconfig="kubeconfig"))

    assert observation.ok, observation.summary
    assert observation.summary == "1 of 1 nodes Ready"
    assert from_files.ok, from_files.summary


# The url source.


async def test_url_with_token_file_and_ca_file(cluster: Cluster) -> None:
    (cluster.folder / "token").write_text(TOKEN)
    check = cluster.check(
        "nodes",
        url=cluster.url,
        ca_file=str(cluster.service_account / "ca.crt"),
        token_file="token",
    )
    observation = await run_check(check)

    assert observation.ok, observation.summary


async def test_url_insecure_skip_verify(cluster: Cluster) -> None:
    check = cluster.check(url=cluster.url, insecure_skip_verify=True)
    observation = await run_check(check)

    assert observation.ok, observation.summary


async def test_url_without_ca_uses_system_trust(cluster: Cluster) -> None:
    observation = await run_check(cluster.check(url=cluster.url))

    assert_failed(observation, CheckReason.TLS_ERROR)


async def test_anonymous_cannot_list_nodes(cluster: Cluster) -> None:
    # Without a token the API server treats the request as system:anonymous,
    # which the default RBAC lets read /readyz and /livez but not nodes.
    check = {"url": cluster.url, "insecure_skip_verify": True}
    apiserver = await run_check(cluster.check(**check))
    nodes = await run_check(cluster.check("nodes", **check))

    assert apiserver.ok, apiserver.summary
    assert_failed(nodes, CheckReason.UNAUTHORIZED)
    assert "returned 403, the user lacks the RBAC permission" in nodes.summary


async def test_connection_refused(cluster: Cluster) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    check = cluster.check(url=f"https://127.0.0.1:{port}", insecure_skip_verify=True)
    observation = await run_check(check)

    assert_failed(observation, CheckReason.CONNECT_FAILED)
    assert observation.summary == (
        f"API server https://127.0.0.1:{port} failed: Connection refused"
    )


@pytest.mark.slow
async def test_slow_server_times_out(cluster: Cluster) -> None:
    cluster.api.delay = 0.6
    check = cluster.check(timeout=0.2, interval=1)
    observation = await run_check(check)

    assert_failed(observation, CheckReason.TIMEOUT)
    assert observation.summary == (
        f"API server {cluster.url} failed: no result within 0.2s"
    )
    assert observation.latency is None
