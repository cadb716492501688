"""The source of a Kubernetes check: the API server's address and credentials.

A check names exactly one source:

- ``in_cluster: true``: the pod's service account, as client-go's
  ``rest.InClusterConfig`` reads it: ``KUBERNETES_SERVICE_HOST`` and
  ``KUBERNETES_SERVICE_PORT`` from the environment, ``token`` and ``ca.crt``
  from ``/var/run/secrets/kubernetes.io/serviceaccount``
  (``service_account_dir`` overrides the folder);
- ``kubeconfig: PATH``: the server, CA and user of the current context (or of
  ``context``), with the kubeconfig's relative paths resolved against its
  folder, as kubectl does;
- ``url: https://HOST:PORT`` with optional ``ca_file``, ``token_file`` and
  ``insecure_skip_verify``.

Token files are re-read on every run, because the kubelet rotates projected
service account tokens (every hour by default) without restarting the pod.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from mesh.errors import ConfigError
from sinks.secret import Secret

from . import _fields as fields

__all__ = ["KubeSource", "SOURCE_KEYS", "SERVICE_ACCOUNT_DIR", "parse_kube_source"]

# Folder in which Kubernetes mounts a pod's service account token, CA and namespace.
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")

SOURCE_KEYS = (
    "in_cluster",
    "service_account_dir",
    "kubeconfig",
    "context",
    "url",
    "ca_file",
    "token_file",
    "insecure_skip_verify",
)

# Keys that belong to one source only; naming them with another is an error.
_ONLY_WITH = {
    "service_account_dir": "in_cluster",
    "context": "kubeconfig",
    "ca_file": "url",
    "token_file": "url",
    "insecure_skip_verify": "url",
}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class KubeSource:
    """The API server of a Kubernetes check and how to authenticate to it."""

    # "in_cluster", "kubeconfig" or "url": how the source was configured.
    origin: str
    # Base URL such as "https://10.96.0.1:443", without a trailing slash.
    server: str
    # CA bundle that signs the server's certificate: a PEM file or PEM text.
    # With neither, httpx's default CAs (certifi, or SSL_CERT_FILE) are used.
    ca_file: Path | None = None
    # PEM text is not secret but long, so reprs leave it out.
    ca_data: str | None = dataclasses.field(default=None, repr=False)
    # Skip verification of the server's certificate (a kubeconfig or url option).
    insecure_skip_verify: bool = False
    # Name expected in the server's certificate when it differs from the host.
    tls_server_name: str | None = None
    # Bearer token: either static, or a file read again on every run.
    token: Secret | None = None
    token_file: Path | None = None
    # Client certificate and key (PEM) for x509 authentication.
    client_cert_file: Path | None = None
    client_cert_data: str | None = dataclasses.field(default=None, repr=False)
    client_key_file: Path | None = None
    client_key_data: Secret | None = None


def parse_kube_source(
    raw: Mapping[str, Any],
    where: str,
    *,
    base_dir: Path,
    environ: Mapping[str, str],
) -> tuple[KubeSource, str | None]:
    """Read the source keys of a Kubernetes check.

    Args:
        raw: the check's mapping.
        where: the check's position, such as ``checks[0]``.
        base_dir: folder that relative paths are resolved against.
        environ: environment to read ``KUBERNETES_SERVICE_*`` from.

    Returns:
        The source, and the cluster name the kubeconfig gives it (None for the
        other sources).

    Raises:
        ConfigError: none or several sources are set, a key belongs to another
            source, or a file cannot be read.
    """
    chosen = [key for key in ("in_cluster", "kubeconfig", "url") if key in raw]
    if len(chosen) != 1:
        found = " and ".join(chosen) if chosen else "none"
        raise ConfigError(
            f"{where}: expected exactly one of in_cluster, kubeconfig or url, "
            f"found {found}"
        )
    origin = chosen[0]
    for key, owner in _ONLY_WITH.items():
        if key in raw and owner != origin:
            raise fields.fail(where, key, f"only valid with {owner}, not with {origin}")

    if origin == "in_cluster":
        return _parse_in_cluster(raw, where, base_dir, environ), None
    if origin == "kubeconfig":
        return _parse_kubeconfig_key(raw, where, base_dir)
    return _parse_url(raw, where, base_dir), None


def _parse_in_cluster(
    raw: Mapping[str, Any], where: str, base_dir: Path, environ: Mapping[str, str]
) -> KubeSource:
    if raw["in_cluster"] is not True:
        raise fields.invalid(
            where, "in_cluster", raw["in_cluster"], "true, or kubeconfig or url instead"
        )
    host = environ.get("KUBERNETES_SERVICE_HOST", "")
    port = environ.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise fields.fail(
            where,
            "in_cluster",
            "KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be set, "
            "as they are inside a pod; use kubeconfig or url outside a cluster",
        )
    folder = fields.path(raw, "service_account_dir", where, base_dir)
    folder = folder or SERVICE_ACCOUNT_DIR
    token_file = folder / "token"
    ca_file = folder / "ca.crt"
    fields.check_readable(where, "in_cluster", token_file)
    fields.check_readable(where, "in_cluster", ca_file)
    return KubeSource(
        origin="in_cluster",
        server=f"https://{_join_host_port(host, port)}",
        ca_file=ca_file,
        token_file=token_file,
    )


def _parse_url(raw: Mapping[str, Any], where: str, base_dir: Path) -> KubeSource:
    server = _parse_server(raw["url"], where, "url")
    ca_file = fields.path(raw, "ca_file", where, base_dir)
    token_file = fields.path(raw, "token_file", where, base_dir)
    for key, file in (("ca_file", ca_file), ("token_file", token_file)):
        if file is not None:
            fields.check_readable(where, key, file)
    return KubeSource(
        origin="url",
        server=server,
        ca_file=ca_file,
        token_file=token_file,
        insecure_skip_verify=fields.boolean(raw, "insecure_skip_verify", where, False),
    )


def _parse_server(value: Any, where: str, key: str) -> str:
    expected = "an https URL such as https://10.0.0.1:6443"
    if not isinstance(value, str):
        raise fields.invalid(where, key, value, expected)
    try:
        parts = urllib.parse.urlsplit(value.strip())
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        raise fields.invalid(where, key, value, expected) from None
    # Plain http would send the bearer token in clear text.
    if parts.scheme != "https" or not parts.hostname or parts.query or parts.username:
        raise fields.invalid(where, key, value, expected)
    # A path is kept (proxies such as Rancher serve clusters under one), and
    # the trailing slash dropped because request paths start with one.
    path = parts.path.rstrip("/")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _join_host_port(host: str, port: str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_kubeconfig_key(
    raw: Mapping[str, Any], where: str, base_dir: Path
) -> tuple[KubeSource, str]:
    file = fields.path(raw, "kubeconfig", where, base_dir)
    assert file is not None
    context = None
    if "context" in raw:
        context = fields.text(raw, "context", where, "a context name of the kubeconfig")
    try:
        document = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise fields.fail(
            where, "kubeconfig", f"cannot read {str(file)!r}: {exc.strerror}"
        ) from None
    except (yaml.YAMLError, UnicodeDecodeError):
        # Not chained or quoted: YAML errors quote lines, which may hold a token.
        problem = f"{str(file)!r} is not valid YAML"
        raise fields.fail(where, "kubeconfig", problem) from None
    try:
        return _read_kubeconfig(document, context, file.parent)
    except _KubeconfigError as exc:
        raise fields.fail(where, "kubeconfig", f"{str(file)!r}: {exc}") from None


class _KubeconfigError(Exception):
    pass


def _read_kubeconfig(
    document: Any, context: str | None, folder: Path
) -> tuple[KubeSource, str]:
    if not isinstance(document, Mapping):
        raise _KubeconfigError("not a kubeconfig mapping")
    context = context or document.get("current-context")
    if not context:
        raise _KubeconfigError("current-context is not set; set context")
    context_entry = _named(document, "contexts", "context", context)
    cluster_name = context_entry.get("cluster")
    user_name = context_entry.get("user")
    cluster = _named(document, "clusters", "cluster", cluster_name)
    user = _named(document, "users", "user", user_name) if user_name else {}

    # Authentication methods that run code or need a login flow.
    for key in ("exec", "auth-provider", "username", "password"):
        if key in user:
            raise _KubeconfigError(
                f"user {user_name!r}: {key!r} is not supported, "
                "expected token, tokenFile or a client certificate"
            )

    try:
        server = _parse_server(cluster.get("server"), "kubeconfig", "server")
    except ConfigError:
        raise _KubeconfigError(
            f"cluster {cluster_name!r}: invalid server {cluster.get('server')!r}, "
            "expected an https URL"
        ) from None
    source = KubeSource(
        origin="kubeconfig",
        server=server,
        ca_file=_file(cluster, "certificate-authority", folder),
        ca_data=_pem(cluster, "certificate-authority-data"),
        insecure_skip_verify=cluster.get("insecure-skip-tls-verify") is True,
        tls_server_name=cluster.get("tls-server-name") or None,
        token=Secret(user["token"]) if user.get("token") else None,
        token_file=_file(user, "tokenFile", folder),
        client_cert_file=_file(user, "client-certificate", folder),
        client_cert_data=_pem(user, "client-certificate-data"),
        client_key_file=_file(user, "client-key", folder),
        client_key_data=_secret_pem(user, "client-key-data"),
    )
    has_cert = source.client_cert_file or source.client_cert_data
    has_key = source.client_key_file or source.client_key_data
    if bool(has_cert) != bool(has_key):
        raise _KubeconfigError(
            f"user {user_name!r}: a client certificate needs both a certificate "
            "and a key"
        )
    return source, str(cluster_name)


def _named(document: Mapping[str, Any], section: str, field: str, name: Any) -> Any:
    for entry in document.get(section) or ():
        if isinstance(entry, Mapping) and entry.get("name") == name:
            value = entry.get(field)
            if not isinstance(value, Mapping):
                raise _KubeconfigError(f"{field} {name!r} has no {field!r} mapping")
            return value
    raise _KubeconfigError(f"{field} {name!r} not found in {section}")


def _file(entry: Mapping[str, Any], key: str, folder: Path) -> Path | None:
    value = entry.get(key)
    if not value:
        return None
    file = Path(str(value)).expanduser()
    file = file if file.is_absolute() else folder / file
    try:
        with file.open("rb"):
            pass
    except OSError as exc:
        raise _KubeconfigError(f"{key}: cannot read {str(file)!r}: {exc.strerror}")
    return file


def _pem(entry: Mapping[str, Any], key: str) -> str | None:
    value = entry.get(key)
    if not value:
        return None
    try:
        return base64.b64decode(str(value), validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        # The value itself is not quoted: for a key it is the secret.
        raise _KubeconfigError(f"{key}: invalid value, expected base64 PEM") from None


def _secret_pem(entry: Mapping[str, Any], key: str) -> Secret | None:
    value = _pem(entry, key)
    return Secret(value) if value is not None else None
