"""Secrets in sink configuration: webhook URLs and tokens.

A :class:`Secret` masks its value in ``repr`` and ``str``, so that a config
object can be logged or shown in a traceback without leaking the URL. Code that
needs the value calls :meth:`Secret.reveal` at the point of use.
:class:`RedactSecrets` masks the values in log records of other libraries:
httpx logs every request URL at INFO.

Each secret field ``F`` of a sink can be given in one of three ways, exactly one
of which must be present::

    F: "https://hooks.slack.com/services/..."   # inline
    F_env: SLACK_WEBHOOK_URL                     # name of an environment variable
    F_file: /run/secrets/slack-url               # path of a file, whitespace stripped
"""

from __future__ import annotations

import hmac
import logging
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import SinkConfigError

__all__ = ["Secret", "resolve_secret", "mask_secret", "RedactSecrets"]

MASK = "***"


class Secret:
    """A secret string whose ``repr`` and ``str`` never show the value."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, *, source: str = "") -> None:
        self._value = value
        # Config key the value was read from, such as ``sinks[1].url_env``. It
        # is not secret, and later checks use it to name the key in messages.
        self.source = source

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        # Constant-time, so that comparing against a guess reveals no prefix.
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> Any:
        # Pickling would write the value in clear to wherever the pickle goes.
        raise TypeError("Secret cannot be pickled")


def resolve_secret(
    raw: Mapping[str, Any], field: str, where: str, environ: Mapping[str, str]
) -> Secret:
    """Read secret ``field`` of the config mapping ``raw`` from one of its three keys.

    Args:
        raw: the sink's config mapping.
        field: the secret's base key, for example ``url``.
        where: the mapping's position in the config file, for example
            ``sinks[1]``. Error messages start with it.
        environ: the environment to resolve ``<field>_env`` in.

    Raises:
        SinkConfigError: none or several of ``field``, ``<field>_env`` and
            ``<field>_file`` are set, or the chosen one is empty, not a string,
            names an unset variable or an unreadable file.
    """
    keys = [field, f"{field}_env", f"{field}_file"]
    present = [key for key in keys if key in raw]
    if not present:
        raise SinkConfigError(
            f"{where}: missing {field!r}, expected exactly one of {', '.join(keys)}"
        )
    if len(present) > 1:
        raise SinkConfigError(
            f"{where}: {' and '.join(present)} are both set, "
            f"expected exactly one of {', '.join(keys)}"
        )

    key = present[0]
    source = f"{where}.{key}"
    value = raw[key]
    # The inline value is the secret itself, so only its type is shown.
    if not isinstance(value, str):
        raise SinkConfigError(
            f"{source}: invalid value of type {type(value).__name__}, expected a string"
        )

    if key == field:
        secret = value.strip()
        if not secret:
            raise SinkConfigError(f"{source}: empty value, expected the {field}")
    elif key.endswith("_env"):
        if value not in environ:
            raise SinkConfigError(
                f"{source}: environment variable {value!r} is not set"
            )
        secret = environ[value].strip()
        if not secret:
            raise SinkConfigError(f"{source}: environment variable {value!r} is empty")
    else:
        try:
            secret = Path(value).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            # Not chained: a UnicodeDecodeError quotes bytes of the secret.
            raise SinkConfigError(
                f"{source}: cannot read file {value!r}: {reason}"
            ) from None
        if not secret:
            raise SinkConfigError(f"{source}: file {value!r} is empty")

    return Secret(secret, source=source)


# Path segments and query values at least this long are masked on their own,
# because a receiver may echo just the token. Shorter ones are mostly words
# such as "services" or "alarms", and masking them would only garble messages.
MIN_FRAGMENT_CHARS = 12


def _secret_fragments(value: str) -> list[str]:
    """Return the strings that give ``value`` away, longest first."""
    fragments = {value}
    parts = urllib.parse.urlsplit(value) if "://" in value else None
    if parts is not None and parts.netloc:
        # The path or the query can be the credential itself, as in Slack's
        # "/services/T…/B…/…". A bare "/" is not worth masking.
        if len(parts.path) > 1:
            fragments.add(parts.path)
            # httpx writes URLs percent-encoded; the path is what differs.
            fragments.add(urllib.parse.quote(parts.path, safe="/%:@!$&'()*+,;="))
        if parts.query:
            fragments.add(parts.query)
        pieces = parts.path.split("/")
        pieces += [v for _, v in urllib.parse.parse_qsl(parts.query)]
        fragments.update(p for p in pieces if len(p) >= MIN_FRAGMENT_CHARS)
    return sorted(fragments, key=len, reverse=True)


def mask_secret(text: str, value: str) -> str:
    """Replace every copy of ``value`` in ``text`` with a mask.

    When ``value`` is a URL, its path, its query and their long segments are
    masked on their own as well, because any of them can carry the credential.
    """
    return _mask_fragments(text, _secret_fragments(value))


def _mask_fragments(text: str, fragments: Iterable[str]) -> str:
    for fragment in fragments:
        text = text.replace(fragment, MASK)
    return text


class RedactSecrets(logging.Filter):
    """A logging filter that masks secret values in messages and tracebacks.

    Attach it to each handler, not to a logger, because a logger's filters
    skip the records that propagate to it from other loggers such as "httpx".
    """

    def __init__(self, secrets: Iterable[Secret]) -> None:
        super().__init__()
        fragments = {
            fragment
            for secret in secrets
            if secret.reveal()
            for fragment in _secret_fragments(secret.reveal())
        }
        # Longest first, so that a path is masked before a segment inside it.
        self._fragments = sorted(fragments, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = self._mask(message)
        if masked != message:
            record.msg = masked
            record.args = None
        if record.exc_info and not record.exc_text:
            # Formatted here so that the handler's formatter reuses the masked text.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._mask(record.exc_text)
        return True

    def _mask(self, text: str) -> str:
        return _mask_fragments(text, self._fragments)
