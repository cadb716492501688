"""Parsing of the ``sinks`` list of the agent's configuration file.

Each entry is a mapping with a ``name``, a ``type`` and the keys of that type::

    sinks:
      - {name: ops-hook, type: webhook, url: "http://127.0.0.1:9000/alarms"}
      - {name: ops-slack, type: slack, url_env: SLACK_WEBHOOK_URL, timeout: 5}
      - {name: stdout, type: log}

``url`` can also be given as ``url_env`` (an environment variable name) or
``url_file`` (a file path); see :mod:`sinks.secret`. Errors raise
:class:`SinkConfigError` with a message that names the key, such as
``sinks[0].type: invalid value 'pager', expected one of webhook, slack, log``.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Any

import httpx

from mesh.keys import SigningKey

from .base import Sink, check_sink_name, check_timeout
from .errors import SinkConfigError
from .log import LogConfig, LogSink
from .secret import Secret, resolve_secret
from .slack import SlackConfig, SlackSink
from .webhook import WebhookConfig, WebhookSink

__all__ = [
    "SinkConfig",
    "SINK_TYPES",
    "parse_sink_config",
    "parse_sink_configs",
    "open_sink",
]

SinkConfig = WebhookConfig | SlackConfig | LogConfig

SINK_TYPES = ("webhook", "slack", "log")

_HTTP_KEYS = ("name", "type", "url", "url_env", "url_file", "timeout")
_ALLOWED_KEYS = {"webhook": _HTTP_KEYS, "slack": _HTTP_KEYS, "log": ("name", "type")}


def parse_sink_config(index: int, raw: Any, environ: Mapping[str, str]) -> SinkConfig:
    """Validate one entry of the ``sinks`` list and build its config.

    Args:
        index: the entry's position in the list, for error messages.
        raw: the entry as loaded from YAML.
        environ: the environment to resolve ``url_env`` in.

    Raises:
        SinkConfigError: the entry is invalid. The message names the key.
    """
    where = f"sinks[{index}]"
    # The type is shown, never the value: a bare string here is often a
    # webhook URL pasted in the wrong place.
    if not isinstance(raw, Mapping):
        raise SinkConfigError(
            f"{where}: invalid value of type {type(raw).__name__}, "
            "expected a mapping with keys name and type"
        )
    for key in raw:
        if not isinstance(key, str):
            raise SinkConfigError(f"{where}: invalid key {key!r}, expected a string")

    sink_type = _parse_type(raw, where)
    allowed = _ALLOWED_KEYS[sink_type]
    for key in raw:
        if key not in allowed:
            raise SinkConfigError(
                f"{where}.{key}: unknown key for type {sink_type!r}, "
                f"expected one of {', '.join(allowed)}"
            )

    name = _parse_name(raw, where)
    if sink_type == "log":
        return LogConfig(name=name)

    options: dict[str, Any] = {"name": name, "url": _parse_url(raw, where, environ)}
    if "timeout" in raw:
        timeout = raw["timeout"]
        problem = check_timeout(timeout)
        if problem is not None:
            raise SinkConfigError(
                f"{where}.timeout: invalid value {timeout!r}, {problem}"
            )
        options["timeout"] = float(timeout)

    if sink_type == "webhook":
        return WebhookConfig(**options)
    return SlackConfig(**options)


def parse_sink_configs(raw: Any, environ: Mapping[str, str]) -> tuple[SinkConfig, ...]:
    """Validate the whole ``sinks`` list and check that the names are unique.

    Raises:
        SinkConfigError: the list or one of its entries is invalid.
    """
    if not isinstance(raw, list):
        raise SinkConfigError(
            f"sinks: invalid value of type {type(raw).__name__}, expected a list"
        )
    configs: list[SinkConfig] = []
    first_index: dict[str, int] = {}
    for index, entry in enumerate(raw):
        config = parse_sink_config(index, entry, environ)
        if config.name in first_index:
            raise SinkConfigError(
                f"sinks[{index}].name: duplicate name {config.name!r}, "
                f"already used by sinks[{first_index[config.name]}]"
            )
        first_index[config.name] = index
        configs.append(config)
    return tuple(configs)


def _parse_type(raw: Mapping[str, Any], where: str) -> str:
    expected = f"expected one of {', '.join(SINK_TYPES)}"
    if "type" not in raw:
        raise SinkConfigError(f"{where}.type: missing, {expected}")
    sink_type = raw["type"]
    if sink_type not in SINK_TYPES:
        raise SinkConfigError(f"{where}.type: invalid value {sink_type!r}, {expected}")
    return sink_type


def _parse_name(raw: Mapping[str, Any], where: str) -> str:
    if "name" not in raw:
        raise SinkConfigError(
            f"{where}.name: missing, expected a name such as 'ops-slack'"
        )
    name = raw["name"]
    problem = check_sink_name(name)
    if problem is not None:
        raise SinkConfigError(f"{where}.name: invalid value {name!r}, {problem}")
    return name


def _parse_url(
    raw: Mapping[str, Any], where: str, environ: Mapping[str, str]
) -> Secret:
    url = resolve_secret(raw, "url", where, environ)
    # Messages quote the scheme at most: the rest of the URL can be the credential.
    expected = "expected an http or https URL such as https://host/path"
    try:
        parts = urllib.parse.urlsplit(url.reveal())
        httpx.URL(url.reveal())
    except (ValueError, httpx.InvalidURL):
        raise SinkConfigError(f"{url.source}: invalid URL, {expected}") from None
    if not parts.scheme:
        raise SinkConfigError(f"{url.source}: missing scheme, {expected}")
    if parts.scheme not in ("http", "https"):
        raise SinkConfigError(
            f"{url.source}: invalid scheme {parts.scheme!r}, expected http or https"
        )
    if not parts.hostname:
        raise SinkConfigError(f"{url.source}: missing host, {expected}")
    return url


def open_sink(config: SinkConfig, *, signing_key: SigningKey, signer: str) -> Sink:
    """Build the sink that ``config`` describes.

    Args:
        signing_key: the agent's private key, which signs webhook bodies.
        signer: the agent's member name, sent with webhook signatures.
    """
    if isinstance(config, WebhookConfig):
        return WebhookSink(config, signing_key=signing_key, signer=signer)
    if isinstance(config, SlackConfig):
        return SlackSink(config)
    if isinstance(config, LogConfig):
        return LogSink(config)
    raise TypeError(f"unsupported sink config type {type(config).__name__}")
