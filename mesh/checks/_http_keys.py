"""The keys of an ``http`` check: URL, method, expected status, body, TLS, headers."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sinks.secret import Secret

from . import _fields as fields

__all__ = ["HTTP_METHODS", "parse_http_keys"]

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
# RFC 9110 section 5.1: a field name is a token.
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def parse_http_keys(
    raw: Mapping[str, Any], where: str, base_dir: Path
) -> dict[str, Any]:
    """Read the keys of an ``http`` check into :class:`HttpCheck` arguments.

    Raises:
        ConfigError: a key is missing or invalid; the message names it.
    """
    url = _parse_http_url(raw, where)
    method = raw.get("method", "GET")
    if not isinstance(method, str) or method.upper() not in HTTP_METHODS:
        expected = f"one of {', '.join(HTTP_METHODS)}"
        raise fields.invalid(where, "method", method, expected)
    method = method.upper()

    body_match = None
    if "body_match" in raw:
        if method == "HEAD":
            raise fields.fail(where, "body_match", "a HEAD response has no body")
        body_match = _parse_regex(raw, where)

    tls_min_days = fields.seconds(raw, "tls_min_days", where, None, unit="days")
    if tls_min_days is not None and not url.startswith("https:"):
        raise fields.fail(where, "tls_min_days", "only valid with an https URL")
    ca_file = fields.path(raw, "ca_file", where, base_dir)
    if ca_file is not None:
        fields.check_readable(where, "ca_file", ca_file)

    return {
        "url": url,
        "method": method,
        "expect_status": _parse_expect_status(raw, where),
        "max_latency": fields.seconds(raw, "max_latency", where, None),
        "body_match": body_match,
        "tls_min_days": tls_min_days,
        "headers": _parse_headers(raw, where),
        "ca_file": ca_file,
    }


def _parse_http_url(raw: Mapping[str, Any], where: str) -> str:
    expected = "an http or https URL"
    value = raw.get("url")
    if "url" not in raw:
        raise fields.fail(where, "url", f"missing, expected {expected}")
    if not isinstance(value, str):
        raise fields.invalid(where, "url", value, expected)
    try:
        parts = urllib.parse.urlsplit(value.strip())
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        raise fields.invalid(where, "url", value, expected) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise fields.invalid(where, "url", value, expected)
    return value.strip()


def _parse_regex(raw: Mapping[str, Any], where: str) -> re.Pattern[str]:
    value = raw["body_match"]
    if not isinstance(value, str) or not value:
        raise fields.invalid(where, "body_match", value, "a regular expression")
    try:
        return re.compile(value)
    except re.error as exc:
        raise fields.invalid(
            where, "body_match", value, f"a regular expression ({exc})"
        ) from None


def _parse_expect_status(raw: Mapping[str, Any], where: str) -> frozenset[int] | None:
    if "expect_status" not in raw:
        return None
    value = raw["expect_status"]
    codes = value if isinstance(value, list) else [value]
    valid = all(
        isinstance(c, int) and not isinstance(c, bool) and 100 <= c <= 599
        for c in codes
    )
    if not codes or not valid:
        raise fields.invalid(
            where, "expect_status", value, "a status code or a list of status codes"
        )
    return frozenset(codes)


def _parse_headers(
    raw: Mapping[str, Any], where: str
) -> tuple[tuple[str, Secret], ...]:
    value = raw.get("headers", {})
    if not isinstance(value, Mapping):
        kind = type(value).__name__
        raise fields.fail(
            where, "headers", f"invalid value of type {kind}, expected a mapping"
        )
    headers = []
    for header, header_value in value.items():
        if not isinstance(header, str) or not HEADER_NAME.match(header):
            raise fields.fail(where, "headers", f"invalid header name {header!r}")
        # Only the type is shown: the value may be a credential.
        if not isinstance(header_value, str):
            kind = type(header_value).__name__
            raise fields.fail(
                where,
                f"headers.{header}",
                f"invalid value of type {kind}, expected a string",
            )
        headers.append((header, Secret(header_value)))
    return tuple(headers)
