"""Logging setup of the ``alarminati`` command: text for people, JSON for collectors.

The text format is the default: one line per record, time, level, logger and
message. ``--log-format json`` writes one JSON object per line instead, for a
cluster's log collector (Fluent Bit, Vector, Promtail, the cloud's agent)::

    {"time": "2026-05-01T12:00:00.123Z", "level": "warning", "logger": "mesh.agent",
     "message": "member suspect member=busan incarnation=3 ...",
     "member": "busan", "incarnation": 3, ...}

Our log messages end with ``key=value`` context (STYLE.md), and the JSON
formatter turns each pair into a field of its own, so that a collector can
filter on ``member``, ``incident``, ``receiver`` or ``peer`` without parsing
the message. A value runs to the next `` key=`` or the end of the message, so a
value with spaces survives as long as it is last or followed by another pair.
Numbers become JSON numbers. Keys passed with ``extra=`` become fields too, and
take precedence over the message's pairs.

Field names are stable: dashboards and saved queries depend on them. A key
written under an older name in a message is renamed to its stable field name
(the outbox's ``sink=`` is the field ``receiver``).
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import sys
from typing import Any, TextIO

__all__ = ["LOG_FORMATS", "JsonFormatter", "configure_logging", "parse_fields"]

LOG_FORMATS = ("text", "json")

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
TEXT_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"

# Message keys renamed to their stable field names.
FIELD_ALIASES = {"sink": "receiver"}
# Fields every JSON line has; pairs of the message never replace them.
BASE_FIELDS = ("time", "level", "logger", "message")

# A key=value pair starts at the beginning or after a space; keys are
# lowercase identifiers, as in "member=busan incident=member-down/busan@3".
_PAIR_START = re.compile(r"(?:^|(?<=\s))([a-z][a-z0-9_]*)=")
_INTEGER = re.compile(r"-?\d+")
_FLOAT = re.compile(r"-?\d+\.\d+")

# Attributes every LogRecord has; the others were passed with extra=.
_RECORD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None))
) | {"message", "asctime"}


def _convert(value: str) -> Any:
    if _INTEGER.fullmatch(value):
        return int(value)
    if _FLOAT.fullmatch(value):
        return float(value)
    return value


def parse_fields(message: str) -> dict[str, Any]:
    """Return the ``key=value`` pairs of a log message as fields.

    Args:
        message: the formatted message, such as ``"member dead member=busan"``.

    Returns:
        The pairs in order, keys renamed by :data:`FIELD_ALIASES`, values
        stripped and converted to int or float when they are plain numbers.
    """
    starts = list(_PAIR_START.finditer(message))
    fields: dict[str, Any] = {}
    for index, match in enumerate(starts):
        end = starts[index + 1].start() if index + 1 < len(starts) else len(message)
        value = message[match.end() : end].strip()
        key = FIELD_ALIASES.get(match.group(1), match.group(1))
        fields[key] = _convert(value)
    return fields


class JsonFormatter(logging.Formatter):
    """Formats each record as one line of JSON; see the module docstring."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        created = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        line: dict[str, Any] = {
            "time": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        fields = parse_fields(message)
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                fields[FIELD_ALIASES.get(key, key)] = value
        for key, value in fields.items():
            if key not in BASE_FIELDS:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # default=str: a value passed with extra= may be any object.
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(
    level: str = "info", log_format: str = "text", *, stream: TextIO | None = None
) -> logging.Handler:
    """Send every log record at ``level`` and above to ``stream`` in ``log_format``.

    Calling it again replaces the handler that the previous call installed, and
    leaves any other handler of the root logger alone.

    Args:
        level: ``debug``, ``info``, ``warning`` or ``error``.
        log_format: ``text`` or ``json``.
        stream: where lines go; standard error by default.

    Returns:
        The installed handler.

    Raises:
        ValueError: an unknown level or format.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"unknown log format {log_format!r}, expected text or json")
    numeric_level = logging.getLevelName(level.upper())
    if not isinstance(numeric_level, int):
        raise ValueError(f"unknown log level {level!r}")

    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT, TEXT_DATE_FORMAT))
    handler.set_name("alarminati")

    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "alarminati"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric_level)
    # hypercorn logs every lifespan step at INFO and httpx every request; their
    # warnings still show.
    logging.getLogger("hypercorn.error").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return handler
