"""Receivers of alarms ("sinks"): a signed JSON webhook, Slack, Telegram, Discord,
Google Chat, Teams and standard output; routing; and the durable outbox.

Build sinks from the ``sinks`` list of the configuration file with
:func:`parse_sink_configs` and :func:`open_sink`, then call ``send`` once per
attempt. Retries are the outbox's job.
"""

from .base import Sink
from .config import (
    SINK_TYPES,
    SinkConfig,
    config_secrets,
    open_sink,
    parse_sink_config,
    parse_sink_configs,
)
from .errors import SinkConfigError, SinkError, SinkPermanentError, SinkRetryableError
from .http import USER_AGENT, classify_response, parse_retry_after
from .log import LogConfig, LogSink
from .secret import RedactSecrets, Secret, resolve_secret
from .discord import DiscordConfig, DiscordSink
from .googlechat import GoogleChatConfig, GoogleChatSink
from .routing import Route, RouteDecision, Router, parse_routing, subject_host
from .slack import SlackConfig, SlackSink, render_message
from .teams import TeamsConfig, TeamsSink
from .telegram import TelegramConfig, TelegramSink
from .webhook import WebhookConfig, WebhookSink

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
