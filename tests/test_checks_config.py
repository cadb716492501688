"""Parsing of the ``checks`` list: defaults, every kind, and exact error messages."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from mesh.alarm import Severity
from mesh.checks.config import (
    ApiServerCheck,
    DnsCheck,
    HttpCheck,
    NodesCheck,
    TcpCheck,
    parse_check_config,
    parse_checks,
)
from mesh.errors import ConfigError

CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY_PEM = (
    "-----BEGIN PRIVATE KEY-----\nsecret-key-material\n-----END PRIVATE KEY-----\n"
)
ENVIRON = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}


@pytest.fixture
def service_account(tmp_path: Path) -> Path:
    folder = tmp_path / "serviceaccount"
    folder.mkdir()
    (folder / "token").write_text("eyJhbGciOi.service-account-token\n")
    (folder / "ca.crt").write_text(CA_PEM)
    return folder


def write_kubeconfig(folder: Path, **user: Any) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "admin@prod",
        "contexts": [
            {"name": "admin@prod", "context": {"cluster": "prod", "user": "admin"}},
            {"name": "view@dev", "context": {"cluster": "dev", "user": "admin"}},
        ],
        "clusters": [
            {
                "name": "prod",
                "cluster": {
                    "server": "https://10.0.0.1:6443",
                    "certificate-authority-data": base64.b64encode(
                        CA_PEM.encode()
                    ).decode(),
                },
            },
            {
                "name": "dev",
                "cluster": {
                    "server": "https://dev.example:6443",
                    "certificate-authority": "dev-ca.crt",
                    "tls-server-name": "kubernetes",
                },
            },
        ],
        "users": [{"name": "admin", "user": user or {"token": "static-token"}}],
    }
    (folder / "dev-ca.crt").write_text(CA_PEM)
    file = folder / "kubeconfig"
    file.write_text(yaml.safe_dump(config))
    return file


def parse(raw: Any, **options: Any) -> Any:
    options.setdefault("environ", ENVIRON)
    return parse_check_config(0, raw, **options)


def error_of(raw: Any, **options: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse(raw, **options)
    return str(info.value)


# Valid configurations.


def test_http_defaults() -> None:
    check = parse({"name": "shop", "kind": "http", "url": "https://shop.example.com/"})

    assert isinstance(check, HttpCheck)
    assert check.kind == "http"
    assert check.interval == 30.0
    assert check.timeout == 10.0
    assert check.fail_for == 0.0
    assert check.resolve_for == 60.0
    assert check.min_alarm_interval == 300.0
    assert check.shared is False
    assert check.quorum == 0.5
    assert check.severity is Severity.CRITICAL
    assert check.project is None
    assert check.method == "GET"
    assert check.accepts_status(200)
    assert check.accepts_status(399)
    assert not check.accepts_status(400)
    assert check.subject == "https://shop.example.com/"


def test_http_all_keys() -> None:
    raw = yaml.safe_load(
        """
        name: shop
        kind: http
        url: https://shop.example.com/cart?session=abc
        method: head
        expect_status: [200, 204]
        max_latency: 1.5
        tls_min_days: 14
        headers: {Authorization: Bearer header-secret}
        interval: 60
        timeout: 5
        for: 120
        resolve_for: 0
        min_alarm_interval: 900
        shared: true
        quorum: 2
        severity: warning
        project: web-shop
        """
    )
    check = parse(raw)

    assert check.method == "HEAD"
    assert check.expect_status == frozenset({200, 204})
    assert not check.accepts_status(301)
    assert check.max_latency == 1.5
    assert check.tls_min_days == 14.0
    assert check.fail_for == 120.0
    assert check.resolve_for == 0.0
    assert check.min_alarm_interval == 900.0
    assert check.quorum == 2
    assert check.severity is Severity.WARNING
    assert check.project == "web-shop"
    # The query may carry a credential, so it is not part of the subject.
    assert check.subject == "https://shop.example.com/cart"


def test_http_secrets_stay_out_of_repr() -> None:
    raw = {
        "name": "shop",
        "kind": "http",
        "url": "https://user:url-password@shop.example.com/?token=query-secret",
        "headers": {"Authorization": "Bearer header-secret"},
    }
    check = parse(raw)
    text = repr(check)

    assert "header-secret" not in text
    assert "url-password" not in text
    assert "query-secret" not in text
    assert check.subject == "https://shop.example.com/"
    assert check.headers[0][1].reveal() == "Bearer header-secret"


def test_tcp_and_dns() -> None:
    checks = parse_checks(
        [
            {"name": "db", "kind": "tcp", "host": "db.internal", "port": 5432},
            {"name": "v6", "kind": "tcp", "host": "::1", "port": 80},
            {"name": "dns", "kind": "dns", "host": "example.com", "expect": ["::0:1"]},
        ]
    )

    assert isinstance(checks[0], TcpCheck)
    assert checks[0].subject == "tcp/db.internal:5432"
    assert checks[1].subject == "tcp/[::1]:80"
    assert isinstance(checks[2], DnsCheck)
    assert checks[2].subject == "dns/example.com"
    # Addresses are kept in canonical form.
    assert checks[2].expect == ("::1",)


def test_in_cluster_source(service_account: Path) -> None:
    raw = {
        "name": "api",
        "kind": "apiserver",
        "in_cluster": True,
        "service_account_dir": str(service_account),
    }
    check = parse(raw, cluster="seoul")

    assert isinstance(check, ApiServerCheck)
    assert check.subject == "apiserver/seoul"
    assert check.source.origin == "in_cluster"
    assert check.source.server == "https://10.96.0.1:443"
    assert check.source.token_file == service_account / "token"
    assert check.source.ca_file == service_account / "ca.crt"
    assert "service-account-token" not in repr(check)


def test_in_cluster_ipv6_service_host(service_account: Path) -> None:
    environ = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    raw = {"name": "api", "kind": "apiserver", "in_cluster": True}
    raw["service_account_dir"] = str(service_account)
    check = parse(raw, environ=environ)

    assert check.source.server == "https://[fd00::1]:443"


def test_kubeconfig_current_context(tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(tmp_path)
    raw = {"name": "nodes", "kind": "nodes", "kubeconfig": str(kubeconfig)}
    check = parse(raw)

    assert isinstance(check, NodesCheck)
    assert check.max_not_ready == 0
    # Without an agent cluster, the kubeconfig's cluster name is the subject.
    assert check.subject == "nodes/prod"
    assert check.source.server == "https://10.0.0.1:6443"
    assert check.source.ca_data == CA_PEM
    assert check.source.token.reveal() == "static-token"
    assert "static-token" not in repr(check)


def test_kubeconfig_named_context_relative_paths(tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(tmp_path, tokenFile="token")
    (tmp_path / "token").write_text("file-token")
    raw = {
        "name": "api",
        "kind": "apiserver",
        "kubeconfig": "kubeconfig",
        "context": "view@dev",
        "cluster": "dev-eu",
    }
    check = parse(raw, base_dir=tmp_path, cluster="seoul")

    # The check's own cluster key wins over the agent's cluster.
    assert check.subject == "apiserver/dev-eu"
    assert check.source.ca_file == tmp_path / "dev-ca.crt"
    assert check.source.token_file == tmp_path / "token"
    assert check.source.tls_server_name == "kubernetes"


def test_kubeconfig_client_certificate_data(tmp_path: Path) -> None:
    user = {
        "client-certificate-data": base64.b64encode(CA_PEM.encode()).decode(),
        "client-key-data": base64.b64encode(KEY_PEM.encode()).decode(),
    }
    raw = {"name": "api", "kind": "apiserver"}
    raw["kubeconfig"] = str(write_kubeconfig(tmp_path, **user))
    check = parse(raw)

    assert check.source.client_cert_data == CA_PEM
    assert check.source.client_key_data.reveal() == KEY_PEM
    assert "secret-key-material" not in repr(check)


def test_url_source(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text(CA_PEM)
    (tmp_path / "token").write_text("t")
    raw = {
        "name": "api",
        "kind": "apiserver",
        "url": "https://api.prod.example:6443/",
        "ca_file": "ca.crt",
        "token_file": "token",
    }
    check = parse(raw, base_dir=tmp_path)

    assert check.source.server == "https://api.prod.example:6443"
    assert check.source.ca_file == tmp_path / "ca.crt"
    assert check.subject == "apiserver/api.prod.example:6443"


def test_shared_kubernetes_subject_same_on_every_member(tmp_path: Path) -> None:
    raw = {"name": "api", "kind": "apiserver", "url": "https://10.0.0.1:6443"}
    raw["shared"] = True
    seoul = parse(raw, cluster="seoul")
    tokyo = parse(raw, cluster="tokyo")

    assert seoul.subject == "apiserver/10.0.0.1:6443"
    assert tokyo.subject == seoul.subject


def test_shared_in_cluster_rejected(service_account: Path) -> None:
    raw = {"name": "api", "kind": "apiserver", "in_cluster": True, "shared": True}
    raw["service_account_dir"] = str(service_account)

    assert error_of(raw) == (
        "checks[0].shared: not valid with in_cluster, because each member would "
        "watch its own cluster; use kubeconfig or url to watch one cluster from "
        "every member"
    )


def test_parse_checks_empty() -> None:
    assert parse_checks(None) == ()
    assert parse_checks([]) == ()


# Invalid configurations: each message names the key.


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            "http://x",
            "checks[0]: invalid value 'http://x', expected a mapping with keys name "
            "and kind",
        ),
        ({"name": "a"}, "checks[0].kind: missing, expected one of apiserver, nodes, "
         "http, tcp, dns"),
        ({"name": "a", "kind": "ping"}, "checks[0].kind: invalid value 'ping', expected "
         "one of apiserver, nodes, http, tcp, dns"),
        ({"kind": "tcp", "host": "h", "port": 1}, "checks[0].name: missing, expected "
         "lowercase letters, digits and '-', at most 63 characters"),
        ({"name": "Shop", "kind": "tcp", "host": "h", "port": 1}, "checks[0].name: "
         "invalid value 'Shop', expected lowercase letters, digits and '-', at most 63 "
         "characters"),
        ({"name": "a", "kind": "http", "url": "ftp://x"},
         "checks[0].url: invalid value 'ftp://x', expected an http or https URL"),
        ({"name": "a", "kind": "http"},
         "checks[0].url: missing, expected an http or https URL"),
        ({"name": "a", "kind": "http", "url": "https://x:99999/"},
         "checks[0].url: invalid value 'https://x:99999/', expected an http or https URL"),
        ({"name": "a", "kind": "http", "url": "https://x/", "method": "FETCH"},
         "checks[0].method: invalid value 'FETCH', expected one of GET, HEAD, POST, "
         "PUT, PATCH, DELETE, OPTIONS"),
        ({"name": "a", "kind": "http", "url": "https://x/", "expect_status": 42},
         "checks[0].expect_status: invalid value 42, expected a status code or a list "
         "of status codes"),
        ({"name": "a", "kind": "http", "url": "https://x/", "expect_status": []},
         "checks[0].expect_status: invalid value [], expected a status code or a list "
         "of status codes"),
        ({"name": "a", "kind": "http", "url": "https://x/", "body_match": "(ok"},
         "checks[0].body_match: invalid value '(ok', expected a regular expression "
         "(missing ), unterminated subpattern at position 0)"),
        ({"name": "a", "kind": "http", "url": "https://x/", "method": "HEAD",
          "body_match": "ok"}, "checks[0].body_match: a HEAD response has no body"),
        ({"name": "a", "kind": "http", "url": "http://x/", "tls_min_days": 14},
         "checks[0].tls_min_days: only valid with an https URL"),
        ({"name": "a", "kind": "http", "url": "https://x/", "tls_min_days": -1},
         "checks[0].tls_min_days: invalid value -1, expected a number of days > 0"),
        ({"name": "a", "kind": "http", "url": "https://x/", "headers": ["X: 1"]},
         "checks[0].headers: invalid value of type list, expected a mapping"),
        ({"name": "a", "kind": "http", "url": "https://x/", "headers": {"X Y": "1"}},
         "checks[0].headers: invalid header name 'X Y'"),
        ({"name": "a", "kind": "http", "url": "https://x/", "headers": {"X-Key": 123}},
         "checks[0].headers.X-Key: invalid value of type int, expected a string"),
        ({"name": "a", "kind": "http", "url": "https://x/", "verify": False},
         "checks[0].verify: unknown key for kind 'http', expected one of name, kind, "
         "interval, timeout, for, resolve_for, min_alarm_interval, shared, quorum, "
         "severity, project, url, method, expect_status, max_latency, body_match, "
         "tls_min_days, headers, ca_file"),
        ({"name": "a", "kind": "tcp", "host": "h", "port": 1, "interval": 0},
         "checks[0].interval: invalid value 0, expected a number of seconds > 0"),
        ({"name": "a", "kind": "tcp", "host": "h", "port": 1, "interval": True},
         "checks[0].interval: invalid value True, expected a number of seconds > 0"),
        ({"name": "a", "kind": "tcp", "host": "h", "port": 1, "timeout": 30},
         "checks[0].timeout: 30.0 must be shorter than interval (30.0)"),
        ({"name": "a", "kind": "tcp", "host": "h", "port": 1, "for": -5},
         "checks[0].for: invalid value -5, expected a number of seconds >= 0"),
        ({"name": "a", "kind": "tcp", "host": "h", "port": 1, "resolve_for": "1m"},
         "checks[0].resolve_for: invalid value '1m', expected a number of seconds >= 0"),
        ({"name": "a", "kind": "tcp", "host": "h", "port": 1, "shared": "yes"},
         "checks[0].shared: invalid value 'yes', expected true or false"),
        ({"name": "a", "kind": "tcp", "host": "h", "port": 1, "quorum": 2},
         "checks[0].quorum: only valid with shared: true"),
        ({"name": "a", "kind": "tcp", "host": "h", "port": 1, "shared": True,
          "quorum": 1.0}, "checks[0].quorum: invalid value 1.0, expected a share "
         "between 0 and 1 such as 0.5 (more than half) or a member count such as 2"),
        ({"name": "a", "kind": "tcp", "host": "h", "port": 1, "shared": True,
          "quorum": 0}, "checks[0].quorum: invalid value 0, expected a share between "
         "0 and 1 such as 0.5 (more than half) or a member count such as 2"),
        ({"name": "a", "kind": "tcp", "host": "h", "port": 1, "severity": "page"},
         "checks[0].severity: invalid value 'page', expected one of critical, warning, "
         "info"),
        ({"name": "a", "kind": "tcp", "host": "h", "port": 1, "project": "Web Shop"},
         "checks[0].project: invalid value 'Web Shop', expected lowercase letters, "
         "digits and '-', at most 63 characters"),
        ({"name": "a", "kind": "tcp", "host": "h"},
         "checks[0].port: invalid value None, expected a port in 1..65535"),
        ({"name": "a", "kind": "tcp", "host": "h", "port": 70000},
         "checks[0].port: invalid value 70000, expected a port in 1..65535"),
        ({"name": "a", "kind": "tcp", "port": 1},
         "checks[0].host: missing, expected a host name or IP address"),
        ({"name": "a", "kind": "tcp", "host": "h/x", "port": 1},
         "checks[0].host: invalid value 'h/x', expected a host name or IP address"),
        ({"name": "a", "kind": "dns", "host": "h", "expect": ["10.0.0.300"]},
         "checks[0].expect: invalid value '10.0.0.300', expected a list of IP "
         "addresses"),
        ({"name": "a", "kind": "dns", "host": "h", "port": 53},
         "checks[0].port: unknown key for kind 'dns', expected one of name, kind, "
         "interval, timeout, for, resolve_for, min_alarm_interval, shared, quorum, "
         "severity, project, host, expect"),
        ({"name": "a", "kind": "nodes"},
         "checks[0]: expected exactly one of in_cluster, kubeconfig or url, found none"),
        ({"name": "a", "kind": "nodes", "url": "https://k:6443", "in_cluster": True},
         "checks[0]: expected exactly one of in_cluster, kubeconfig or url, found "
         "in_cluster and url"),
        ({"name": "a", "kind": "nodes", "url": "http://k:6443"},
         "checks[0].url: invalid value 'http://k:6443', expected an https URL such as "
         "https://10.0.0.1:6443"),
        ({"name": "a", "kind": "nodes", "url": "https://k:6443", "max_not_ready": -1},
         "checks[0].max_not_ready: invalid value -1, expected an integer >= 0"),
        ({"name": "a", "kind": "apiserver", "url": "https://k:6443",
          "max_not_ready": 1}, "checks[0].max_not_ready: unknown key for kind "
         "'apiserver', expected one of name, kind, interval, timeout, for, "
         "resolve_for, min_alarm_interval, shared, quorum, severity, project, "
         "cluster, in_cluster, service_account_dir, kubeconfig, context, url, "
         "ca_file, token_file, insecure_skip_verify"),
        ({"name": "a", "kind": "apiserver", "in_cluster": False},
         "checks[0].in_cluster: invalid value False, expected true, or kubeconfig or "
         "url instead"),
        ({"name": "a", "kind": "apiserver", "in_cluster": True, "ca_file": "ca.crt"},
         "checks[0].ca_file: only valid with url, not with in_cluster"),
        ({"name": "a", "kind": "apiserver", "url": "https://k", "context": "x"},
         "checks[0].context: only valid with kubeconfig, not with url"),
        ({"name": "a", "kind": "apiserver", "url": "https://k",
          "insecure_skip_verify": "no"}, "checks[0].insecure_skip_verify: invalid "
         "value 'no', expected true or false"),
    ],
)
def test_invalid_check(raw: Any, message: str) -> None:
    assert error_of(raw) == message


def test_in_cluster_outside_pod(service_account: Path) -> None:
    raw = {"name": "a", "kind": "apiserver", "in_cluster": True}
    raw["service_account_dir"] = str(service_account)

    assert error_of(raw, environ={}) == (
        "checks[0].in_cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT "
        "must be set, as they are inside a pod; use kubeconfig or url outside a "
        "cluster"
    )


def test_in_cluster_without_token(service_account: Path) -> None:
    (service_account / "token").unlink()
    raw = {"name": "a", "kind": "apiserver", "in_cluster": True}
    raw["service_account_dir"] = str(service_account)

    assert error_of(raw) == (
        f"checks[0].in_cluster: cannot read '{service_account}/token': "
        "No such file or directory"
    )


def test_url_token_file_missing(tmp_path: Path) -> None:
    raw = {"name": "a", "kind": "apiserver", "url": "https://k:6443"}
    raw["token_file"] = "missing-token"

    assert error_of(raw, base_dir=tmp_path) == (
        f"checks[0].token_file: cannot read '{tmp_path}/missing-token': "
        "No such file or directory"
    )


def test_kubeconfig_missing(tmp_path: Path) -> None:
    raw = {"name": "a", "kind": "nodes", "kubeconfig": str(tmp_path / "none")}

    assert error_of(raw) == (
        f"checks[0].kubeconfig: cannot read '{tmp_path}/none': No such file or "
        "directory"
    )


def test_kubeconfig_unknown_context(tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(tmp_path)
    raw = {"name": "a", "kind": "nodes", "kubeconfig": str(kubeconfig)}
    raw["context"] = "staging"

    assert error_of(raw) == (
        f"checks[0].kubeconfig: '{kubeconfig}': context 'staging' not found in "
        "contexts"
    )


def test_kubeconfig_exec_plugin_rejected(tmp_path: Path) -> None:
    exec_plugin = {"apiVersion": "client.authentication.k8s.io/v1", "command": "aws"}
    kubeconfig = write_kubeconfig(tmp_path, exec=exec_plugin)
    raw = {"name": "a", "kind": "nodes", "kubeconfig": str(kubeconfig)}

    assert error_of(raw) == (
        f"checks[0].kubeconfig: '{kubeconfig}': user 'admin': 'exec' is not "
        "supported, expected token, tokenFile or a client certificate"
    )


def test_kubeconfig_key_without_certificate(tmp_path: Path) -> None:
    key_data = base64.b64encode(KEY_PEM.encode()).decode()
    kubeconfig = write_kubeconfig(tmp_path, **{"client-key-data": key_data})
    raw = {"name": "a", "kind": "nodes", "kubeconfig": str(kubeconfig)}

    assert error_of(raw) == (
        f"checks[0].kubeconfig: '{kubeconfig}': user 'admin': a client certificate "
        "needs both a certificate and a key"
    )


def test_kubeconfig_bad_key_data_not_quoted(tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(
        tmp_path, **{"client-certificate-data": "bm90", "client-key-data": "%%secret%%"}
    )
    raw = {"name": "a", "kind": "nodes", "kubeconfig": str(kubeconfig)}
    message = error_of(raw)

    assert message == (
        f"checks[0].kubeconfig: '{kubeconfig}': client-key-data: invalid value, "
        "expected base64 PEM"
    )
    assert "secret" not in message


def test_kubeconfig_not_yaml(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("users: [token: {")
    raw = {"name": "a", "kind": "nodes", "kubeconfig": str(kubeconfig)}

    assert error_of(raw) == f"checks[0].kubeconfig: '{kubeconfig}' is not valid YAML"


def test_kubeconfig_plain_http_server_rejected(tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(tmp_path)
    text = kubeconfig.read_text()
    kubeconfig.write_text(text.replace("https://10.0.0.1:6443", "http://10.0.0.1:8080"))
    raw = {"name": "a", "kind": "nodes", "kubeconfig": str(kubeconfig)}

    assert error_of(raw) == (
        f"checks[0].kubeconfig: '{kubeconfig}': cluster 'prod': invalid server "
        "'http://10.0.0.1:8080', expected an https URL"
    )


def test_duplicate_names() -> None:
    raw = [
        {"name": "db", "kind": "tcp", "host": "a", "port": 1},
        {"name": "web", "kind": "http", "url": "https://x/"},
        {"name": "db", "kind": "dns", "host": "a"},
    ]
    with pytest.raises(ConfigError) as info:
        parse_checks(raw)

    assert str(info.value) == (
        "checks[2].name: duplicate name 'db', already used by checks[0]"
    )


def test_checks_not_a_list() -> None:
    with pytest.raises(ConfigError, match=re.escape("checks: invalid value {'a': 1}")):
        parse_checks({"a": 1})


def test_error_index_counts_entries() -> None:
    raw = [{"name": "a", "kind": "dns", "host": "a"}, {"name": "b", "kind": "ping"}]
    with pytest.raises(ConfigError, match=r"^checks\[1\]\.kind: invalid value 'ping'"):
        parse_checks(raw)
