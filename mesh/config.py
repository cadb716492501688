"""The agent's YAML configuration: loading, validation and defaults.

The file is read and checked once, at start. Every error names the key, the bad
value and what is expected, and the CLI exits with code 2 on it. Relative paths
(``key_file``, ``data_dir``, a folder ``archive``) are resolved against the
folder of the configuration file, as Prometheus does, so that a configuration
means the same wherever the agent is started from.

docs/configuration.md documents each key.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from sinks.errors import SinkConfigError
from sinks.retry import RetryPolicy
from sinks.routing import Router, parse_duration, parse_routing
from storage.location import (
    boto3_installed,
    check_endpoint_url,
    check_region,
    is_s3_url,
    parse_s3_url,
)

from .checks.config import CheckConfig, parse_checks
from .errors import ConfigError, KeyFileError
from .keys import VerifyKey, parse_public_key
from .profiles import PROFILES, Profile

if TYPE_CHECKING:
    from sinks.config import SinkConfig

__all__ = ["AgentConfig", "load_config", "parse_config", "parse_address"]

NAME_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
NAME_RULE = "lowercase letters, digits and '-', at most 63 characters"

KNOWN_KEYS = {
    "name",
    "cluster",
    "listen",
    "advertise",
    "peers",
    "key_file",
    "trusted_keys",
    "profile",
    "timing",
    "data_dir",
    "archive",
    "archive_endpoint_url",
    "archive_region",
    "sinks",
    "routes",
    "projects",
    "outbox",
    "checks",
    "cluster_endpoints",
}

# Keys of ``outbox``: the RetryPolicy fields, as durations.
OUTBOX_KEYS = ("initial_delay", "max_delay", "max_age", "attempt_timeout")

# Values of the profile itself rather than of its SWIM configuration.
PROFILE_KEYS = ("handoff_delay", "request_timeout", "replay_window", "group_wait", "group_share")

# Profile values that the ``timing`` key may override, in seconds or counts.
TIMING_KEYS = {
    "probe_interval": float,
    "probe_timeout": float,
    "indirect_checks": int,
    "suspicion_mult": float,
    "retransmit_mult": int,
    "gossip_interval": float,
    "gossip_nodes": int,
    "push_pull_interval": float,
    "reconnect_interval": float,
    "suspicion_max_timeout_mult": float,
    "awareness_max_multiplier": int,
    "gossip_to_the_dead_time": float,
    "handoff_delay": float,
    "group_wait": float,
    "group_share": float,
    "request_timeout": float,
    "replay_window": float,
}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    # Unique member name, also the name peers know this agent's key by.
    name: str
    # Cluster this agent watches; shown in alarms. Defaults to the name.
    cluster: str
    # HOST:PORT the HTTP server binds.
    listen: str
    # HOST:PORT peers use to reach this agent.
    advertise: str
    # Seed addresses, HOST:PORT.
    peers: tuple[str, ...]
    key_file: Path
    # Member name to public key, this agent's own key excluded.
    trusted_keys: Mapping[str, VerifyKey]
    profile: Profile
    # Folder for the outbox and agent state.
    data_dir: Path
    # Archive location: an absolute folder path, or s3://bucket/prefix.
    archive: str
    sinks: tuple[SinkConfig, ...]
    # URL of an S3-compatible service (MinIO, Ceph RGW) for an s3:// archive;
    # None for AWS or for the endpoint that AWS_ENDPOINT_URL_S3 names.
    archive_endpoint_url: str | None = None
    # Region of an s3:// archive's bucket; None for the environment's
    # (AWS_REGION) or the profile's. Credentials never come from this file.
    archive_region: str | None = None

    # Which sinks each alarm goes to; None sends every alarm to every sink.
    routing: Router | None = None
    # Retry delays, attempt deadline and maximum age of outbox deliveries.
    outbox_policy: RetryPolicy = RetryPolicy()
    # Checks this agent runs; see mesh/checks/config.py.
    checks: tuple[CheckConfig, ...] = ()
    # Member name to a URL of its cluster that answers without its agent (an
    # ingress or API server address). A dead member whose URL answers is
    # reported as "agent down" (warning), otherwise as "cluster unreachable".
    cluster_endpoints: Mapping[str, str] = dataclasses.field(default_factory=dict)


def parse_address(key: str, value: Any) -> str:
    """Check a HOST:PORT value and return it.

    Raises:
        ConfigError: the value is not HOST:PORT with a port in 1..65535.
    """
    expected = "HOST:PORT such as 127.0.0.1:7001"
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f"{key}: invalid value {value!r}, expected {expected}")
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{key}: invalid value {value!r}, expected {expected}")
    return value


def _require(raw: Mapping[str, Any], key: str, kind: type, expected: str) -> Any:
    if key not in raw:
        raise ConfigError(f"{key}: missing, expected {expected}")
    value = raw[key]
    if not isinstance(value, kind) or (kind is str and not value):
        raise ConfigError(f"{key}: invalid value {value!r}, expected {expected}")
    return value


def _parse_name(key: str, value: Any) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        raise ConfigError(f"{key}: invalid value {value!r}, expected {NAME_RULE}")
    return value


def _resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _parse_trusted_keys(raw: Any, own_name: str) -> dict[str, VerifyKey]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"trusted_keys: invalid value {raw!r}, expected a mapping of member "
            "name to base64 public key"
        )
    keys = {}
    for member, text in raw.items():
        key = f"trusted_keys.{member}"
        _parse_name(key, member)
        if member == own_name:
            raise ConfigError(
                f"{key}: this agent's own name; its key comes from key_file"
            )
        if not isinstance(text, str):
            raise ConfigError(f"{key}: invalid value {text!r}, expected a base64 string")
        try:
            keys[member] = parse_public_key(text)
        except KeyFileError as exc:
            raise ConfigError(f"{key}: {exc}; paste the output of `alarminati keygen`") from None
    return keys


def _parse_profile(raw: Mapping[str, Any]) -> Profile:
    name = raw.get("profile", "lan")
    if name not in PROFILES:
        expected = ", ".join(PROFILES)
        raise ConfigError(f"profile: invalid value {name!r}, expected one of {expected}")
    profile = PROFILES[name]

    timing = raw.get("timing") or {}
    if not isinstance(timing, Mapping):
        raise ConfigError(f"timing: invalid value {timing!r}, expected a mapping")
    swim_changes, profile_changes = {}, {}
    for key, value in timing.items():
        if key not in TIMING_KEYS:
            expected = ", ".join(sorted(TIMING_KEYS))
            raise ConfigError(f"timing.{key}: unknown key, expected one of {expected}")
        kind = TIMING_KEYS[key]
        valid = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key == "group_wait" and valid and value == 0:
            pass  # 0 turns grouping off
        elif key == "group_share" and (not valid or not 0 < value <= 1):
            raise ConfigError(
                f"timing.group_share: invalid value {value!r}, expected a share "
                "of the mesh above 0 and at most 1"
            )
        elif not valid or value <= 0 or (kind is int and value != int(value)):
            unit = "a positive integer" if kind is int else "a positive number of seconds"
            raise ConfigError(f"timing.{key}: invalid value {value!r}, expected {unit}")
        if key in PROFILE_KEYS:
            profile_changes[key] = kind(value)
        else:
            swim_changes[key] = kind(value)

    try:
        swim = dataclasses.replace(profile.swim, **swim_changes)
    except ValueError as exc:
        # SwimConfig checks how its values relate; its message names them.
        raise ConfigError(f"timing: {exc}") from None
    if swim.probe_timeout >= swim.probe_interval:
        raise ConfigError(
            f"timing.probe_timeout: {swim.probe_timeout!r} must be shorter than "
            f"probe_interval ({swim.probe_interval!r})"
        )
    return dataclasses.replace(profile, swim=swim, **profile_changes)


def _parse_sinks(raw: Any, environ: Mapping[str, str]) -> tuple[SinkConfig, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        # Only the type is shown: a misplaced webhook URL is a secret.
        kind = type(raw).__name__
        raise ConfigError(f"sinks: invalid value of type {kind}, expected a list of sinks")
    # Imported here: parsing a receiver loads httpx and the receivers' modules,
    # memory an agent without receivers does not spend.
    from sinks.config import parse_sink_config

    sinks = []
    for index, item in enumerate(raw):
        try:
            sinks.append(parse_sink_config(index, item, environ))
        except SinkConfigError as exc:
            raise ConfigError(str(exc)) from None
    names = [s.name for s in sinks]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"sinks: name {name!r} is used twice, names must be unique")
    return tuple(sinks)


def _parse_archive(
    raw: Mapping[str, Any], base: Path
) -> tuple[str, str | None, str | None]:
    """Return the archive location, and the endpoint URL and region of S3.

    A folder path is resolved against ``base``. An ``s3://`` URL is checked but
    kept as written; credentials never come from the configuration.
    """
    expected = "a folder path or s3://bucket/prefix"
    archive = _require(raw, "archive", str, expected)
    endpoint_url, region = raw.get("archive_endpoint_url"), raw.get("archive_region")
    if not is_s3_url(archive):
        if "://" in archive:
            # Only the scheme is shown: the rest of a URL may hold credentials.
            scheme = archive.partition("://")[0]
            raise ConfigError(
                f"archive: unsupported scheme {scheme!r}, expected {expected}"
            )
        for key in ("archive_endpoint_url", "archive_region"):
            if raw.get(key) is not None:
                raise ConfigError(f"{key}: applies only to an s3:// archive")
        return str(_resolve(base, archive)), None, None

    try:
        parse_s3_url(archive)
    except ValueError as exc:
        raise ConfigError(f"archive: {exc}") from None
    if not boto3_installed():
        raise ConfigError("archive: s3:// archives need boto3; install alarminati[s3]")
    if endpoint_url is not None:
        try:
            endpoint_url = check_endpoint_url(endpoint_url)
        except ValueError as exc:
            raise ConfigError(f"archive_endpoint_url: {exc}") from None
    if region is not None:
        try:
            region = check_region(region)
        except ValueError as exc:
            raise ConfigError(f"archive_region: {exc}") from None
    return archive.strip(), endpoint_url, region


def _parse_routing(raw: Mapping[str, Any], sinks: tuple[SinkConfig, ...]) -> Router:
    try:
        return parse_routing(
            raw.get("routes"), raw.get("projects"), [sink.name for sink in sinks]
        )
    except SinkConfigError as exc:
        raise ConfigError(str(exc)) from None


def _parse_outbox(raw: Any) -> RetryPolicy:
    if raw is None:
        return RetryPolicy()
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"outbox: invalid value {raw!r}, expected a mapping with keys "
            f"{', '.join(OUTBOX_KEYS)}"
        )
    values = {}
    for key, value in raw.items():
        if key not in OUTBOX_KEYS:
            raise ConfigError(
                f"outbox.{key}: unknown key, expected one of {', '.join(OUTBOX_KEYS)}"
            )
        try:
            values[key] = parse_duration(value, f"outbox.{key}")
        except SinkConfigError as exc:
            raise ConfigError(str(exc)) from None
        if values[key] <= 0:
            raise ConfigError(f"outbox.{key}: invalid value {value!r}, expected above 0")
    try:
        return RetryPolicy(**values)
    except ValueError as exc:
        raise ConfigError(f"outbox: {exc}") from None


def parse_config(
    raw: Any, *, base: Path, environ: Mapping[str, str] | None = None
) -> AgentConfig:
    """Validate a decoded YAML document and return the typed configuration.

    Args:
        raw: the decoded document.
        base: folder that relative paths are resolved against.
        environ: environment for ``*_env`` secrets; defaults to ``os.environ``.

    Raises:
        ConfigError: names the key, the bad value and what is expected.
    """
    environ = os.environ if environ is None else environ
    if not isinstance(raw, Mapping):
        raise ConfigError(f"configuration must be a YAML mapping, got {raw!r}")
    unknown = sorted(set(raw) - KNOWN_KEYS)
    if unknown:
        expected = ", ".join(sorted(KNOWN_KEYS))
        raise ConfigError(f"{unknown[0]}: unknown key, expected one of {expected}")

    name = _parse_name("name", _require(raw, "name", str, NAME_RULE))
    cluster = raw.get("cluster", name)
    if not isinstance(cluster, str) or not cluster:
        raise ConfigError(f"cluster: invalid value {cluster!r}, expected a non-empty string")
    listen = parse_address("listen", _require(raw, "listen", str, "HOST:PORT"))
    advertise = parse_address("advertise", raw.get("advertise", listen))
    if advertise.rpartition(":")[0] in ("0.0.0.0", "::", "[::]"):
        raise ConfigError(
            f"advertise: invalid value {advertise!r}, expected an address peers can "
            "reach; set advertise when listen binds all interfaces"
        )

    peers = raw.get("peers") or []
    if not isinstance(peers, list):
        raise ConfigError(f"peers: invalid value {peers!r}, expected a list of HOST:PORT")
    seeds = tuple(parse_address(f"peers[{i}]", p) for i, p in enumerate(peers))

    key_file = _resolve(base, _require(raw, "key_file", str, "a path to a private key"))
    data_dir = _resolve(base, _require(raw, "data_dir", str, "a folder path"))
    archive, endpoint_url, region = _parse_archive(raw, base)

    sinks = _parse_sinks(raw.get("sinks"), environ)
    routing = _parse_routing(raw, sinks)
    outbox_policy = _parse_outbox(raw.get("outbox"))
    checks = parse_checks(raw.get("checks"), cluster=cluster, base_dir=base, environ=environ)

    return AgentConfig(
        name=name,
        cluster=cluster,
        listen=listen,
        advertise=advertise,
        peers=seeds,
        key_file=key_file,
        trusted_keys=_parse_trusted_keys(raw.get("trusted_keys"), name),
        profile=_parse_profile(raw),
        data_dir=data_dir,
        archive=archive,
        sinks=sinks,
        routing=routing,
        outbox_policy=outbox_policy,
        archive_endpoint_url=endpoint_url,
        archive_region=region,
        checks=checks,
        cluster_endpoints=_parse_cluster_endpoints(raw.get("cluster_endpoints"), name),
    )


def _parse_cluster_endpoints(raw: Any, own_name: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"cluster_endpoints: invalid value {raw!r}, expected a mapping of member "
            "name to URL"
        )
    endpoints = {}
    for member, url in raw.items():
        key = f"cluster_endpoints.{member}"
        _parse_name(key, member)
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"{key}: invalid value {url!r}, expected an http or https URL")
        endpoints[member] = url
    return endpoints


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Read and validate the configuration file at ``path``.

    Raises:
        ConfigError: the file is missing, is not YAML, or fails validation.
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {str(path)!r}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"configuration {str(path)!r} is not valid YAML: {exc}") from None
    return parse_config(raw, base=path.parent.resolve(), environ=environ)
