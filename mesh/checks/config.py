"""The ``checks`` list of the agent's configuration: one frozen class per kind.

Each entry is a mapping with a ``name``, a ``kind`` and the keys of that kind::

    checks:
      - {name: api, kind: apiserver, in_cluster: true}
      - {name: nodes, kind: nodes, in_cluster: true, max_not_ready: 1}
      - {name: shop, kind: http, url: "https://shop.example.com/", shared: true}
      - {name: db, kind: tcp, host: db.internal, port: 5432}
      - {name: resolver, kind: dns, host: example.com}

Durations are in seconds. Errors raise :class:`~mesh.errors.ConfigError` naming
the key, such as ``checks[2].url: invalid value 'ftp://x', expected an http or
https URL``. docs/checks.md documents every key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from mesh.alarm import Severity
from mesh.errors import ConfigError
from sinks.secret import Secret

from . import _fields as fields
from ._http_keys import parse_http_keys
from ._kube_source import SOURCE_KEYS, KubeSource, parse_kube_source

__all__ = [
    "CheckConfig",
    "ApiServerCheck",
    "NodesCheck",
    "HttpCheck",
    "TcpCheck",
    "DnsCheck",
    "KubeSource",
    "CHECK_KINDS",
    "parse_check_config",
    "parse_checks",
]

SECONDS = 1.0
MINUTES = 60 * SECONDS

DEFAULT_INTERVAL = 30 * SECONDS
DEFAULT_TIMEOUT = 10 * SECONDS
DEFAULT_RESOLVE_FOR = 1 * MINUTES
DEFAULT_MIN_ALARM_INTERVAL = 5 * MINUTES
# More than half of the members that run a shared check must see it fail.
DEFAULT_QUORUM = 0.5
# Status codes an http check accepts when ``expect_status`` is not set.
DEFAULT_EXPECT_STATUS = range(200, 400)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CheckBase:
    """Fields every kind of check has. Durations are in seconds."""

    kind: ClassVar[str]
    # Unique within the agent: lowercase letters, digits and '-'.
    name: str
    # Time between the starts of two runs. Lower finds failures sooner and
    # costs the target one request per interval per member.
    interval: float = DEFAULT_INTERVAL
    # Deadline of one run, shorter than ``interval``; a run past it fails.
    timeout: float = DEFAULT_TIMEOUT
    # How long the check must keep failing before it opens an incident.
    # Raising it hides short blips and delays real alarms by as much.
    fail_for: float = 0.0
    # How long it must keep passing before its incident resolves.
    resolve_for: float = DEFAULT_RESOLVE_FOR
    # A flapping check raises at most one alarm per this interval.
    min_alarm_interval: float = DEFAULT_MIN_ALARM_INTERVAL
    # Whether every member runs the check and a quorum of them decides.
    shared: bool = False
    # For shared checks, the failing members needed. A float is a share of the
    # members running the check, exclusive: 0.5 means more than half. An int is
    # a count: 2 means at least two.
    quorum: float | int = DEFAULT_QUORUM
    severity: Severity = Severity.CRITICAL
    # Project whose channels receive the alarms, or None for the default route.
    project: str | None = None

    @property
    def subject(self) -> str:
        """The stable name of what the check watches, e.g. ``tcp/db:5432``."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ApiServerCheck(CheckBase):
    """Kubernetes API server health: ``/readyz`` and ``/livez`` return 200 ``ok``."""

    kind: ClassVar[str] = "apiserver"
    # Cluster name used in the subject.
    cluster: str
    source: KubeSource

    @property
    def subject(self) -> str:
        return f"apiserver/{self.cluster}"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NodesCheck(CheckBase):
    """Node readiness: fails when more than ``max_not_ready`` nodes are not Ready."""

    kind: ClassVar[str] = "nodes"
    cluster: str
    source: KubeSource
    # NotReady nodes tolerated, e.g. 1 while nodes are replaced one at a time.
    max_not_ready: int = 0

    @property
    def subject(self) -> str:
        return f"nodes/{self.cluster}"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class HttpCheck(CheckBase):
    """An HTTP or HTTPS request whose status, latency, body and certificate pass."""

    kind: ClassVar[str] = "http"
    # Left out of the repr, because user info or query may carry credentials.
    url: str = dataclasses.field(repr=False)
    method: str = "GET"
    # Accepted status codes; None accepts 200-399.
    expect_status: frozenset[int] | None = None
    # Seconds the whole response may take before the check fails as slow.
    max_latency: float | None = None
    # Regular expression searched for in the first bytes of the body.
    body_match: re.Pattern[str] | None = None
    # Days of certificate validity that must remain (https only).
    tls_min_days: float | None = None
    # Extra request headers; the values may be credentials, so they are Secrets.
    headers: tuple[tuple[str, Secret], ...] = ()
    # CA bundle (PEM) to verify the server with instead of the default CAs.
    ca_file: Path | None = None

    @property
    def subject(self) -> str:
        # Query, fragment and user info are left out: they may carry credentials.
        parts = urllib.parse.urlsplit(self.url)
        host = parts.netloc.rpartition("@")[2]
        return urllib.parse.urlunsplit((parts.scheme, host, parts.path or "/", "", ""))

    def accepts_status(self, status: int) -> bool:
        expected = self.expect_status or DEFAULT_EXPECT_STATUS
        return status in expected


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TcpCheck(CheckBase):
    """A TCP connection to ``host``:``port`` opens within the timeout."""

    kind: ClassVar[str] = "tcp"
    host: str
    port: int

    @property
    def address(self) -> str:
        """``host:port``, with an IPv6 address in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def subject(self) -> str:
        return f"tcp/{self.address}"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DnsCheck(CheckBase):
    """``host`` resolves to at least one address, and to every one in ``expect``."""

    kind: ClassVar[str] = "dns"
    host: str
    # Addresses that must all be among the resolved ones, in canonical form.
    expect: tuple[str, ...] = ()

    @property
    def subject(self) -> str:
        return f"dns/{self.host}"


CheckConfig = ApiServerCheck | NodesCheck | HttpCheck | TcpCheck | DnsCheck

_COMMON_KEYS = (
    "name",
    "kind",
    "interval",
    "timeout",
    "for",
    "resolve_for",
    "min_alarm_interval",
    "shared",
    "quorum",
    "severity",
    "project",
)
_KIND_KEYS = {
    "apiserver": ("cluster", *SOURCE_KEYS),
    "nodes": ("cluster", *SOURCE_KEYS, "max_not_ready"),
    "http": (
        "url",
        "method",
        "expect_status",
        "max_latency",
        "body_match",
        "tls_min_days",
        "headers",
        "ca_file",
    ),
    "tcp": ("host", "port"),
    "dns": ("host", "expect"),
}
CHECK_KINDS = tuple(_KIND_KEYS)


def parse_check_config(
    index: int,
    raw: Any,
    *,
    cluster: str | None = None,
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> CheckConfig:
    """Validate one entry of the ``checks`` list and build its config.

    Args:
        index: the entry's position in the list, for error messages.
        raw: the entry as loaded from YAML.
        cluster: the agent's cluster, the default cluster name in the subject of
            Kubernetes checks.
        base_dir: folder that relative paths are resolved against, normally the
            configuration file's folder; the working folder when None.
        environ: environment for ``in_cluster``; ``os.environ`` when None.

    Raises:
        ConfigError: the entry is invalid. The message names the key.
    """
    where = f"checks[{index}]"
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{where}: invalid value {raw!r}, expected a mapping with keys name "
            "and kind"
        )
    kind = _parse_kind(raw, where)
    allowed = _COMMON_KEYS + _KIND_KEYS[kind]
    for key in raw:
        if key not in allowed:
            raise fields.fail(
                where,
                str(key),
                f"unknown key for kind {kind!r}, expected one of {', '.join(allowed)}",
            )

    common = _parse_common(raw, where)
    base_dir = base_dir if base_dir is not None else Path.cwd()
    environ = environ if environ is not None else os.environ
    if kind in ("apiserver", "nodes"):
        return _parse_kubernetes(raw, where, kind, common, cluster, base_dir, environ)
    if kind == "http":
        return HttpCheck(**common, **parse_http_keys(raw, where, base_dir))
    if kind == "tcp":
        port = fields.integer(raw, "port", where, None, minimum=1)
        if port is None or port > 65535:
            raise fields.invalid(where, "port", raw.get("port"), "a port in 1..65535")
        return TcpCheck(**common, host=_parse_host(raw, where), port=port)
    return DnsCheck(
        **common, host=_parse_host(raw, where), expect=_parse_expect(raw, where)
    )


def parse_checks(
    raw: Any,
    *,
    cluster: str | None = None,
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[CheckConfig, ...]:
    """Validate the whole ``checks`` list and check that the names are unique.

    ``None`` (the key left out or empty) gives no checks. The keyword arguments
    are those of :func:`parse_check_config`.

    Raises:
        ConfigError: the list or one of its entries is invalid.
    """
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"checks: invalid value {raw!r}, expected a list of checks")
    checks: list[CheckConfig] = []
    first_index: dict[str, int] = {}
    for index, entry in enumerate(raw):
        check = parse_check_config(
            index, entry, cluster=cluster, base_dir=base_dir, environ=environ
        )
        if check.name in first_index:
            raise ConfigError(
                f"checks[{index}].name: duplicate name {check.name!r}, "
                f"already used by checks[{first_index[check.name]}]"
            )
        first_index[check.name] = index
        checks.append(check)
    return tuple(checks)


def _parse_kind(raw: Mapping[str, Any], where: str) -> str:
    expected = f"expected one of {', '.join(CHECK_KINDS)}"
    if "kind" not in raw:
        raise fields.fail(where, "kind", f"missing, {expected}")
    kind = raw["kind"]
    if not isinstance(kind, str) or kind not in _KIND_KEYS:
        raise fields.fail(where, "kind", f"invalid value {kind!r}, {expected}")
    return kind


def _parse_common(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    interval = fields.seconds(raw, "interval", where, DEFAULT_INTERVAL)
    timeout = fields.seconds(raw, "timeout", where, DEFAULT_TIMEOUT)
    if timeout >= interval:
        # Runs of one check never overlap, so a longer run would skip intervals.
        raise fields.fail(
            where,
            "timeout",
            f"{timeout!r} must be shorter than interval ({interval!r})",
        )

    shared = fields.boolean(raw, "shared", where, False)
    if "quorum" in raw and not shared:
        raise fields.fail(where, "quorum", "only valid with shared: true")

    severity = raw.get("severity", Severity.CRITICAL.value)
    if not isinstance(severity, str) or severity not in {s.value for s in Severity}:
        raise fields.invalid(
            where, "severity", severity, "one of critical, warning, info"
        )

    return {
        "name": fields.name(raw, "name", where, required=True),
        "interval": interval,
        "timeout": timeout,
        "fail_for": fields.seconds(raw, "for", where, 0.0, allow_zero=True),
        "resolve_for": fields.seconds(
            raw, "resolve_for", where, DEFAULT_RESOLVE_FOR, allow_zero=True
        ),
        "min_alarm_interval": fields.seconds(
            raw,
            "min_alarm_interval",
            where,
            DEFAULT_MIN_ALARM_INTERVAL,
            allow_zero=True,
        ),
        "shared": shared,
        "quorum": _parse_quorum(raw, where),
        "severity": Severity(severity),
        "project": fields.name(raw, "project", where, required=False),
    }


def _parse_quorum(raw: Mapping[str, Any], where: str) -> float | int:
    value = raw.get("quorum", DEFAULT_QUORUM)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    if isinstance(value, float) and 0 < value < 1:
        return value
    raise fields.invalid(
        where,
        "quorum",
        value,
        "a share between 0 and 1 such as 0.5 (more than half) or a member count "
        "such as 2",
    )


def _parse_kubernetes(
    raw: Mapping[str, Any],
    where: str,
    kind: str,
    common: dict[str, Any],
    cluster: str | None,
    base_dir: Path,
    environ: Mapping[str, str],
) -> ApiServerCheck | NodesCheck:
    source, kubeconfig_cluster = parse_kube_source(
        raw, where, base_dir=base_dir, environ=environ
    )
    if common["shared"] and source.origin == "in_cluster":
        raise fields.fail(
            where,
            "shared",
            "not valid with in_cluster, because each member would watch its own "
            "cluster; use kubeconfig or url to watch one cluster from every member",
        )

    # The subject names the cluster: the check's own key, else the agent's
    # cluster, else what the kubeconfig calls it, else the server's address.
    # A shared check skips the agent's cluster, which differs between members.
    if "cluster" in raw:
        cluster = fields.text(raw, "cluster", where, "a cluster name")
    elif common["shared"]:
        cluster = None
    cluster = cluster or kubeconfig_cluster
    cluster = cluster or urllib.parse.urlsplit(source.server).netloc
    if kind == "apiserver":
        return ApiServerCheck(**common, cluster=cluster, source=source)
    max_not_ready = fields.integer(raw, "max_not_ready", where, 0, minimum=0)
    return NodesCheck(
        **common, cluster=cluster, source=source, max_not_ready=max_not_ready
    )


def _parse_host(raw: Mapping[str, Any], where: str) -> str:
    host = fields.text(raw, "host", where, "a host name or IP address")
    if any(c.isspace() or c in "/@" for c in host):
        raise fields.invalid(where, "host", raw["host"], "a host name or IP address")
    return host.strip("[]")


def _parse_expect(raw: Mapping[str, Any], where: str) -> tuple[str, ...]:
    value = raw.get("expect", [])
    expected = "a list of IP addresses"
    if not isinstance(value, list):
        raise fields.invalid(where, "expect", value, expected)
    addresses = []
    for item in value:
        try:
            addresses.append(str(ipaddress.ip_address(item)))
        except ValueError:
            raise fields.invalid(where, "expect", item, expected) from None
    return tuple(addresses)
