"""Receivers of alarms ("sinks"): a signed JSON webhook, Slack, Telegram, Discord,
Google Chat, Teams and standard output; routing; and the durable outbox.

Build sinks from the ``sinks`` list of the configuration file with
:func:`parse_sink_configs` and :func:`open_sink`, then call ``send`` once per
attempt. Retries are the outbox's job.
"""

from __future__ import annotations

import importlib
from typing import Any

# Each name, by the module that defines it. They are imported on first use
# (PEP 562), so that importing the outbox or the routing does not load every
# receiver and httpx with it.
_EXPORTS = {
    "Sink": "base",
    "SINK_TYPES": "config",
    "SinkConfig": "config",
    "config_secrets": "config",
    "open_sink": "config",
    "parse_sink_config": "config",
    "parse_sink_configs": "config",
    "SinkConfigError": "errors",
    "SinkError": "errors",
    "SinkPermanentError": "errors",
    "SinkRetryableError": "errors",
    "USER_AGENT": "http",
    "classify_response": "http",
    "parse_retry_after": "http",
    "LogConfig": "log",
    "LogSink": "log",
    "RedactSecrets": "secret",
    "Secret": "secret",
    "resolve_secret": "secret",
    "DiscordConfig": "discord",
    "DiscordSink": "discord",
    "GoogleChatConfig": "googlechat",
    "GoogleChatSink": "googlechat",
    "Route": "routing",
    "RouteDecision": "routing",
    "Router": "routing",
    "parse_routing": "routing",
    "subject_host": "routing",
    "SlackConfig": "slack",
    "SlackSink": "slack",
    "render_message": "slack",
    "TeamsConfig": "teams",
    "TeamsSink": "teams",
    "TelegramConfig": "telegram",
    "TelegramSink": "telegram",
    "WebhookConfig": "webhook",
    "WebhookSink": "webhook",
}


__all__ = [
    "Sink",
    "SinkConfig",
    "SINK_TYPES",
    "parse_sink_config",
    "parse_sink_configs",
    "open_sink",
    "SinkError",
    "SinkRetryableError",
    "SinkPermanentError",
    "SinkConfigError",
    "Secret",
    "resolve_secret",
    "RedactSecrets",
    "USER_AGENT",
    "classify_response",
    "parse_retry_after",
    "WebhookConfig",
    "WebhookSink",
    "SlackConfig",
    "SlackSink",
    "render_message",
    "LogConfig",
    "LogSink",
    "TelegramConfig",
    "TelegramSink",
    "DiscordConfig",
    "DiscordSink",
    "GoogleChatConfig",
    "GoogleChatSink",
    "TeamsConfig",
    "TeamsSink",
    "config_secrets",
    "Route",
    "RouteDecision",
    "Router",
    "parse_routing",
    "subject_host",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
