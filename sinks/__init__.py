"""Receivers of alarms ("sinks"): a signed JSON webhook, Slack, and standard output.

Build sinks from the ``sinks`` list of the configuration file with
:func:`parse_sink_configs` and :func:`open_sink`, then call ``send`` once per
attempt. Retries are the outbox's job.
"""

from .base import Sink
from .config import (
    SINK_TYPES,
    SinkConfig,
    open_sink,
    parse_sink_config,
    parse_sink_configs,
)
from .errors import SinkConfigError, SinkError, SinkPermanentError, SinkRetryableError
from .http import USER_AGENT, classify_response, parse_retry_after
from .log import LogConfig, LogSink
from .secret import RedactSecrets, Secret, resolve_secret
from .slack import SlackConfig, SlackSink, render_message
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
]
