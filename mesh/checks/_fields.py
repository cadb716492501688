"""Readers for single values of a check's configuration mapping.

Each reader takes the mapping, the key and ``where`` (the check's position, such
as ``checks[2]``) and raises :class:`~mesh.errors.ConfigError` with a message
that starts with the full key: ``checks[2].timeout: invalid value -1, ...``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mesh.errors import ConfigError

# Names of checks and projects: the same rule as member names.
NAME_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
NAME_RULE = "lowercase letters, digits and '-', at most 63 characters"


def fail(where: str, key: str, problem: str) -> ConfigError:
    """Build the error for ``where.key``; the caller raises it."""
    return ConfigError(f"{where}.{key}: {problem}")


def invalid(where: str, key: str, value: Any, expected: str) -> ConfigError:
    return fail(where, key, f"invalid value {value!r}, expected {expected}")


def is_number(value: Any) -> bool:
    # YAML booleans are ints in Python; `timeout: yes` is a mistake, not 1 s.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def seconds(
    raw: Mapping[str, Any],
    key: str,
    where: str,
    default: float | None,
    *,
    allow_zero: bool = False,
    unit: str = "seconds",
) -> float | None:
    """Read a finite number of ``unit``, positive (or >= 0 with ``allow_zero``)."""
    if key not in raw:
        return default
    value = raw[key]
    minimum_ok = allow_zero and is_number(value) and value == 0
    valid = is_number(value) and math.isfinite(value) and (value > 0 or minimum_ok)
    if not valid:
        expected = f"a number of {unit}" + (" >= 0" if allow_zero else " > 0")
        raise invalid(where, key, value, expected)
    return float(value)


def integer(
    raw: Mapping[str, Any], key: str, where: str, default: int | None, *, minimum: int
) -> int | None:
    if key not in raw:
        return default
    value = raw[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise invalid(where, key, value, f"an integer >= {minimum}")
    return value


def boolean(raw: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    if key not in raw:
        return default
    value = raw[key]
    if not isinstance(value, bool):
        raise invalid(where, key, value, "true or false")
    return value


def text(raw: Mapping[str, Any], key: str, where: str, expected: str) -> str:
    """Read a required non-empty string."""
    if key not in raw:
        raise fail(where, key, f"missing, expected {expected}")
    value = raw[key]
    if not isinstance(value, str) or not value.strip():
        raise invalid(where, key, value, expected)
    return value.strip()


def name(raw: Mapping[str, Any], key: str, where: str, *, required: bool) -> str | None:
    if key not in raw:
        if required:
            raise fail(where, key, f"missing, expected {NAME_RULE}")
        return None
    value = raw[key]
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        raise invalid(where, key, value, NAME_RULE)
    return value


def path(raw: Mapping[str, Any], key: str, where: str, base_dir: Path) -> Path | None:
    """Read an optional file path, resolved against ``base_dir`` when relative."""
    if key not in raw:
        return None
    value = raw[key]
    if not isinstance(value, str) or not value:
        raise invalid(where, key, value, "a file path")
    resolved = Path(value).expanduser()
    return resolved if resolved.is_absolute() else base_dir / resolved


def check_readable(where: str, key: str, file: Path) -> None:
    """Raise unless ``file`` can be opened for reading.

    The content is not read here: token files are re-read on every run because
    the kubelet rotates them.
    """
    try:
        with file.open("rb"):
            pass
    except OSError as exc:
        raise fail(where, key, f"cannot read {str(file)!r}: {exc.strerror}") from None
