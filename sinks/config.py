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

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any


from mesh.keys import SigningKey

from .base import Sink, check_sink_name, check_timeout, check_url
from .errors import SinkConfigError
from . import discord, googlechat, slack, teams, telegram
from .discord import DiscordConfig, DiscordSink
from .googlechat import GoogleChatConfig, GoogleChatSink
from .log import LogConfig, LogSink
from .secret import Secret, resolve_secret
from .slack import SlackConfig, SlackSink
from .teams import TeamsConfig, TeamsSink
from .telegram import TelegramConfig, TelegramSink
from .webhook import WebhookConfig, WebhookSink

__all__ = [
    "SinkConfig",
    "SINK_TYPES",
    "parse_sink_config",
    "parse_sink_configs",
    "open_sink",
    "config_secrets",
]

SinkConfig = (
    WebhookConfig
    | SlackConfig
    | TelegramConfig
    | DiscordConfig
    | GoogleChatConfig
    | TeamsConfig
    | LogConfig
)

SINK_TYPES = ("webhook", "slack", "telegram", "discord", "googlechat", "teams", "log")

_HTTP_KEYS = ("name", "type", "url", "url_env", "url_file", "timeout")
_ALLOWED_KEYS = {
    "webhook": _HTTP_KEYS,
    "slack": slack.KEYS,
    "telegram": telegram.KEYS,
    "discord": discord.KEYS,
    "googlechat": googlechat.KEYS,
    "teams": teams.KEYS,
    "log": ("name", "type"),
}
# The chat receivers, whose config classes read their own keys.
_CHAT_CONFIGS = {
    "slack": SlackConfig,
    "telegram": TelegramConfig,
    "discord": DiscordConfig,
    "googlechat": GoogleChatConfig,
    "teams": TeamsConfig,
}
# Config class to sink class of the chat receivers.
_CHAT_SINKS = {
    SlackConfig: SlackSink,
    TelegramConfig: TelegramSink,
    DiscordConfig: DiscordSink,
    GoogleChatConfig: GoogleChatSink,
    TeamsConfig: TeamsSink,
}


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
    if sink_type in _CHAT_CONFIGS:
        return _CHAT_CONFIGS[sink_type].parse(raw, where, environ, name)

    options: dict[str, Any] = {
        "name": name,
        "url": check_url(resolve_secret(raw, "url", where, environ)),
    }
    if "timeout" in raw:
        timeout = raw["timeout"]
        problem = check_timeout(timeout)
        if problem is not None:
            raise SinkConfigError(
                f"{where}.timeout: invalid value {timeout!r}, {problem}"
            )
        options["timeout"] = float(timeout)

    return WebhookConfig(**options)


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


def open_sink(config: SinkConfig, *, signing_key: SigningKey, signer: str) -> Sink:
    """Build the sink that ``config`` describes.

    Args:
        signing_key: the agent's private key, which signs webhook bodies.
        signer: the agent's member name, sent with webhook signatures.
    """
    if isinstance(config, WebhookConfig):
        return WebhookSink(config, signing_key=signing_key, signer=signer)
    chat_sink = _CHAT_SINKS.get(type(config))
    if chat_sink is not None:
        return chat_sink(config)
    if isinstance(config, LogConfig):
        return LogSink(config)
    raise TypeError(f"unsupported sink config type {type(config).__name__}")


def config_secrets(configs: Iterable[SinkConfig]) -> list[Secret]:
    """Return every secret of ``configs``, for :class:`~sinks.secret.RedactSecrets`."""
    return [
        value
        for config in configs
        for value in (
            getattr(config, field.name) for field in dataclasses.fields(config)
        )
        if isinstance(value, Secret)
    ]
