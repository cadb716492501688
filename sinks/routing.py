"""Routing: which team's channels an alarm goes to, and why.

Projects own domains and may own clusters. An alarm goes to the route of the
project that owns its subject, otherwise to the ``default`` route::

    routes:
      default:  {receivers: [ops-slack]}
      payments:
        receivers: [pay-telegram]
        severities: [critical, warning]   # others are archived only
        group_window: 30s                 # alarms within 30 s: one message
        repeat_interval: 4h               # re-send a firing alarm every 4 h
        fallback: [ops-slack]             # when pay-telegram fails for...
        fallback_after: 10m
    projects:
      payments:
        domains: [pay.example.com, "*.pay.example.com"]
        clusters: [busan]
        route: payments

The owner of an alarm is found in this order, and the first match wins:

1. the project that lists the subject's domain exactly;
2. the project with the longest wildcard that covers it: ``*.pay.example.com``
   covers ``shop.pay.example.com`` and ``a.shop.pay.example.com`` but not
   ``pay.example.com`` itself;
3. the project that lists the alarm's cluster;
4. the default route.

The domain of a subject is the host of a URL (``https://shop.pay.example.com/``)
or of ``domain/<host>``, ``dns/<host>``, ``tls/<host>[:port]``,
``tcp/<host>:<port>``, ``http/<host>`` and ``https/<host>``. Other subjects, such
as ``member/<name>``, have no domain and match by cluster only. Two projects may
not own the same domain, wildcard or cluster, so the order above never has to
break a tie. The archive gets every alarm whatever the route.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

from mesh.alarm import Severity

from .errors import SinkConfigError

__all__ = [
    "DEFAULT_ROUTE",
    "Route",
    "Project",
    "MatchReason",
    "RouteDecision",
    "Router",
    "parse_routing",
    "parse_duration",
    "subject_host",
]

DEFAULT_ROUTE = "default"

# Kinds of subject whose rest is a host, optionally with a port and a path.
HOST_KINDS = ("domain", "dns", "tls", "tcp", "http", "https")

# Default wait before a failing receiver's alarms go to the fallback receivers.
DEFAULT_FALLBACK_AFTER = 5 * 60.0

_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}

ROUTE_KEYS = (
    "receivers",
    "severities",
    "group_window",
    "repeat_interval",
    "fallback",
    "fallback_after",
)
PROJECT_KEYS = ("domains", "clusters", "route")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """Where the alarms of one project (or of nobody) go, and how often."""

    name: str
    # Sink names that get each alarm; empty means the archive only.
    receivers: tuple[str, ...]
    # Severities that are sent; alarms of other severities are archived only.
    severities: frozenset[Severity] = frozenset(Severity)
    # Seconds that a receiver waits after an alarm of this route for more to
    # put in the same message; 0 sends each at once. Longer means fewer
    # messages in a storm, and a later first page.
    group_window: float = 0.0
    # Seconds between re-sends of an alarm whose incident still fires; 0 never
    # re-sends. Shorter keeps an incident in view, and makes the channel noisier.
    repeat_interval: float = 0.0
    # Sink names that get the alarms of a receiver that has failed for
    # fallback_after seconds, or that gave up on them.
    fallbacks: tuple[str, ...] = ()
    fallback_after: float = DEFAULT_FALLBACK_AFTER


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Project:
    """A team's share of the fleet: its domains and clusters, and its route."""

    name: str
    # Lowercase domain names, and wildcards written "*.<suffix>".
    domains: tuple[str, ...]
    clusters: tuple[str, ...]
    route: str


class MatchReason(enum.Enum):
    """Why a route was chosen. The value is shown by ``route --explain``."""

    DOMAIN = "domain"
    WILDCARD_DOMAIN = "wildcard_domain"
    CLUSTER = "cluster"
    DEFAULT = "default"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RouteDecision:
    """The route an alarm takes, the receivers it reaches, and why."""

    route: Route
    # Owning project, or None for the default route.
    project: str | None
    reason: MatchReason
    # The domain, wildcard or cluster of the project that matched.
    matched: str | None
    # The domain read from the subject, or None when it names no host.
    host: str | None
    severity: Severity
    # Whether the route's severity filter lets the alarm through.
    passes_filter: bool

    @property
    def receivers(self) -> tuple[str, ...]:
        """The sinks that get the alarm: none when the filter stops it."""
        return self.route.receivers if self.passes_filter else ()

    def explain(self) -> list[str]:
        """Describe the decision in lines for an operator."""
        route = self.route
        lines = [f"domain:    {self.host or '-'}" + _host_note(self.host)]
        if self.project is None:
            lines.append("project:   none owns the domain or the cluster")
        else:
            how = {
                MatchReason.DOMAIN: "owns the domain",
                MatchReason.WILDCARD_DOMAIN: "owns the wildcard",
                MatchReason.CLUSTER: "owns the cluster",
            }[self.reason]
            lines.append(f"project:   {self.project} ({how} {self.matched})")
        lines.append(f"route:     {route.name} (reason: {self.reason.value})")
        allowed = ", ".join(s.value for s in Severity if s in route.severities)
        verdict = "passes" if self.passes_filter else "is stopped by"
        lines.append(
            f"severity:  {self.severity.value} {verdict} the filter [{allowed}]"
        )
        lines.append(f"receivers: {', '.join(self.receivers) or '-'}")
        if route.fallbacks and self.receivers:
            lines.append(
                f"fallback:  {', '.join(route.fallbacks)} after "
                f"{format_duration(route.fallback_after)} of failures"
            )
        if route.group_window > 0 and self.receivers:
            lines.append(
                f"grouping:  alarms within {format_duration(route.group_window)} "
                "go out in one message"
            )
        if route.repeat_interval > 0 and self.receivers:
            lines.append(
                f"repeat:    every {format_duration(route.repeat_interval)} "
                "while the incident fires"
            )
        lines.append("archive:   always")
        return lines


def _host_note(host: str | None) -> str:
    return " (from the subject)" if host else " (the subject names no host)"


class Router:
    """Chooses the route of each alarm from its subject, cluster and severity.

    Args:
        routes: every route by name; ``default`` must be among them.
        projects: the projects; their domains, wildcards and clusters must not
            overlap.

    Raises:
        ValueError: there is no default route, a project names an unknown
            route, or two projects own the same domain, wildcard or cluster.
    """

    def __init__(self, routes: Mapping[str, Route], projects: Iterable[Project] = ()):
        if DEFAULT_ROUTE not in routes:
            raise ValueError("no route named 'default'")
        self.routes = dict(routes)
        self.projects = tuple(projects)
        # Exact domain, wildcard suffix (without "*.") and cluster to project.
        self._domains: dict[str, Project] = {}
        self._wildcards: dict[str, Project] = {}
        self._clusters: dict[str, Project] = {}
        for project in self.projects:
            if project.route not in self.routes:
                raise ValueError(
                    f"project {project.name!r} names unknown route {project.route!r}"
                )
            for domain in project.domains:
                if domain.startswith("*."):
                    _claim(self._wildcards, domain[2:], project, "wildcard")
                else:
                    _claim(self._domains, domain, project, "domain")
            for cluster in project.clusters:
                _claim(self._clusters, cluster, project, "cluster")

    @classmethod
    def broadcast(cls, receivers: Iterable[str]) -> Router:
        """Return a router that sends every alarm to every one of ``receivers``."""
        return cls(
            {DEFAULT_ROUTE: Route(name=DEFAULT_ROUTE, receivers=tuple(receivers))}
        )

    def decide(
        self, *, subject: str, cluster: str, severity: Severity
    ) -> RouteDecision:
        """Return the route of an alarm with this subject, cluster and severity."""
        host = subject_host(subject)
        project, reason, matched = self._owner(host, cluster)
        route = self.routes[project.route if project else DEFAULT_ROUTE]
        return RouteDecision(
            route=route,
            project=project.name if project else None,
            reason=reason,
            matched=matched,
            host=host,
            severity=severity,
            passes_filter=severity in route.severities,
        )

    def _owner(
        self, host: str | None, cluster: str
    ) -> tuple[Project | None, MatchReason, str | None]:
        if host is not None:
            if host in self._domains:
                return self._domains[host], MatchReason.DOMAIN, host
            # Longest suffix first, so the most specific wildcard wins.
            labels = host.split(".")
            for start in range(1, len(labels)):
                suffix = ".".join(labels[start:])
                if suffix in self._wildcards:
                    wildcard = f"*.{suffix}"
                    return (
                        self._wildcards[suffix],
                        MatchReason.WILDCARD_DOMAIN,
                        wildcard,
                    )
        if cluster in self._clusters:
            return self._clusters[cluster], MatchReason.CLUSTER, cluster
        return None, MatchReason.DEFAULT, None


def _claim(table: dict[str, Project], name: str, project: Project, kind: str) -> None:
    other = table.get(name)
    if other is not None and other.name != project.name:
        shown = f"*.{name}" if kind == "wildcard" else name
        raise ValueError(
            f"{kind} {shown!r} is owned by both {other.name!r} and {project.name!r}"
        )
    table[name] = project


# ---------------------------------------------------------------------- subjects


def subject_host(subject: str) -> str | None:
    """Return the domain name that ``subject`` is about, or None.

    >>> subject_host("https://Shop.Pay.example.com:8443/health")
    'shop.pay.example.com'
    >>> subject_host("tcp/db.example.com:5432")
    'db.example.com'
    >>> subject_host("member/busan") is None
    True
    """
    if "://" in subject:
        try:
            host = urllib.parse.urlsplit(subject).hostname
        except ValueError:
            return None
        return normalize_domain(host) if host else None
    kind, separator, rest = subject.partition("/")
    if not separator or kind.lower() not in HOST_KINDS:
        return None
    authority = rest.split("/", 1)[0]
    if authority.startswith("["):
        # An IPv6 literal: "[2001:db8::1]:443".
        host = authority[1 : authority.find("]")] if "]" in authority else ""
    else:
        host = authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority
    return normalize_domain(host) if host else None


def normalize_domain(name: str) -> str:
    """Lowercase ``name``, drop a final dot, and spell it in ASCII (IDNA)."""
    name = name.strip().rstrip(".").lower()
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            pass  # Left as it is; it can then match only itself.
    return name


# ---------------------------------------------------------------------- config


def parse_duration(value: Any, where: str) -> float:
    """Read a duration: seconds as a number, or a string such as ``90s``, ``1h30m``.

    Raises:
        SinkConfigError: the value is neither, or is negative.
    """
    expected = "expected seconds, or a duration such as 30s, 10m, 4h, 1d"
    if isinstance(value, bool):
        raise SinkConfigError(f"{where}: invalid value {value!r}, {expected}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and _DURATION.fullmatch(value.strip()):
        parts = _DURATION_PART.findall(value.strip())
        seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
    else:
        raise SinkConfigError(f"{where}: invalid value {value!r}, {expected}")
    if not math.isfinite(seconds) or seconds < 0:
        raise SinkConfigError(f"{where}: invalid value {value!r}, {expected}")
    return seconds


def format_duration(seconds: float) -> str:
    """Write ``seconds`` in the largest unit that divides it, such as ``4h``."""
    for unit in ("d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def parse_routing(
    routes_raw: Any, projects_raw: Any, sink_names: Iterable[str]
) -> Router:
    """Validate the ``routes`` and ``projects`` keys and build the router.

    Without ``routes``, every alarm goes to every sink, as before routing
    existed; ``projects`` then needs ``routes``.

    Raises:
        SinkConfigError: names the key, the bad value and what is expected.
    """
    sinks = tuple(sink_names)
    if routes_raw is None:
        if projects_raw:
            raise SinkConfigError(
                "projects: set, but routes is missing, expected routes with a "
                "'default' route and the routes the projects name"
            )
        return Router.broadcast(sinks)

    routes = _parse_routes(routes_raw, sinks)
    projects = _parse_projects(projects_raw, routes)
    try:
        return Router(routes, projects)
    except ValueError as exc:
        raise SinkConfigError(f"projects: {exc}, expected each owned once") from None


def _mapping(raw: Any, where: str, expected: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise SinkConfigError(
            f"{where}: invalid value of type {type(raw).__name__}, expected {expected}"
        )
    for key in raw:
        if not isinstance(key, str):
            raise SinkConfigError(f"{where}: invalid key {key!r}, expected a string")
    return raw


def _check_keys(raw: Mapping[str, Any], where: str, allowed: tuple[str, ...]) -> None:
    for key in raw:
        if key not in allowed:
            raise SinkConfigError(
                f"{where}.{key}: unknown key, expected one of {', '.join(allowed)}"
            )


def _check_name(name: str, where: str) -> None:
    if not _NAME.fullmatch(name):
        raise SinkConfigError(
            f"{where}: invalid name {name!r}, expected lowercase letters, digits "
            "and '-', starting with a letter or digit"
        )


def _string_list(raw: Any, where: str, expected: str) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
        raise SinkConfigError(f"{where}: invalid value {raw!r}, expected {expected}")
    return raw


def _parse_routes(raw: Any, sinks: tuple[str, ...]) -> dict[str, Route]:
    raw = _mapping(raw, "routes", "a mapping of route name to route")
    if DEFAULT_ROUTE not in raw:
        raise SinkConfigError(
            "routes.default: missing, expected the route of alarms that no "
            "project owns, such as {receivers: [ops-slack]}"
        )
    return {name: _parse_route(name, value, sinks) for name, value in raw.items()}


def _parse_route(name: str, raw: Any, sinks: tuple[str, ...]) -> Route:
    where = f"routes.{name}"
    _check_name(name, where)
    raw = _mapping(raw, where, "a mapping with receivers")
    _check_keys(raw, where, ROUTE_KEYS)
    if "receivers" not in raw:
        raise SinkConfigError(
            f"{where}.receivers: missing, expected a list of sink names "
            "(an empty list archives only)"
        )
    receivers = _sink_list(raw["receivers"], f"{where}.receivers", sinks)
    fallbacks = _sink_list(raw.get("fallback", []), f"{where}.fallback", sinks)
    for fallback in fallbacks:
        if fallback in receivers:
            raise SinkConfigError(
                f"{where}.fallback: invalid value {fallback!r}, already a receiver "
                "of this route, expected another sink"
            )

    options: dict[str, Any] = {}
    if "severities" in raw:
        options["severities"] = _parse_severities(raw["severities"], where)
    for key in ("group_window", "repeat_interval", "fallback_after"):
        if key in raw:
            options[key] = parse_duration(raw[key], f"{where}.{key}")
    if fallbacks and options.get("fallback_after", 1.0) <= 0:
        raise SinkConfigError(
            f"{where}.fallback_after: invalid value {raw['fallback_after']!r}, "
            "expected a duration above 0"
        )
    return Route(
        name=name, receivers=tuple(receivers), fallbacks=tuple(fallbacks), **options
    )


def _sink_list(raw: Any, where: str, sinks: tuple[str, ...]) -> list[str]:
    names = _string_list(raw, where, "a list of sink names")
    for name in names:
        if name not in sinks:
            known = ", ".join(sinks) or "none are configured"
            raise SinkConfigError(
                f"{where}: unknown sink {name!r}, expected one of the sinks ({known})"
            )
    if len(set(names)) != len(names):
        raise SinkConfigError(f"{where}: invalid value {raw!r}, a sink is listed twice")
    return names


def _parse_severities(raw: Any, where: str) -> frozenset[Severity]:
    expected = f"expected a list of {', '.join(s.value for s in Severity)}"
    values = _string_list(raw, f"{where}.severities", expected)
    try:
        severities = frozenset(Severity(value) for value in values)
    except ValueError:
        raise SinkConfigError(
            f"{where}.severities: invalid value {raw!r}, {expected}"
        ) from None
    if not severities:
        raise SinkConfigError(f"{where}.severities: empty list, {expected}")
    return severities


def _parse_projects(raw: Any, routes: Mapping[str, Route]) -> list[Project]:
    if raw is None:
        return []
    raw = _mapping(raw, "projects", "a mapping of project name to project")
    projects = []
    for name, value in raw.items():
        where = f"projects.{name}"
        _check_name(name, where)
        value = _mapping(value, where, "a mapping with domains, clusters and route")
        _check_keys(value, where, PROJECT_KEYS)
        domains = _string_list(
            value.get("domains", []), f"{where}.domains", "a list of domain names"
        )
        domains = [
            _parse_domain(d, f"{where}.domains[{i}]") for i, d in enumerate(domains)
        ]
        clusters = _string_list(
            value.get("clusters", []), f"{where}.clusters", "a list of cluster names"
        )
        if not domains and not clusters:
            raise SinkConfigError(
                f"{where}: owns nothing, expected domains or clusters"
            )
        route = value.get("route")
        if route not in routes:
            raise SinkConfigError(
                f"{where}.route: invalid value {route!r}, expected one of the "
                f"routes ({', '.join(routes)})"
            )
        projects.append(
            Project(
                name=name, domains=tuple(domains), clusters=tuple(clusters), route=route
            )
        )
    return projects


def _parse_domain(raw: str, where: str) -> str:
    expected = "expected a domain such as pay.example.com or *.pay.example.com"
    wildcard = raw.startswith("*.")
    name = normalize_domain(raw[2:] if wildcard else raw)
    labels = name.split(".")
    valid = all(_LABEL.fullmatch(label) for label in labels)
    # A wildcard over a bare top-level domain would claim half the internet.
    if not valid or (wildcard and len(labels) < 2):
        raise SinkConfigError(f"{where}: invalid value {raw!r}, {expected}")
    return f"*.{name}" if wildcard else name
