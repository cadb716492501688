"""The plain-text membership table, shared by ``/peers`` and ``alarminati peers``."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["format_peers"]

COLUMNS = ("NAME", "ADDRESS", "STATE", "INCARNATION", "SINCE")


def _since(unix_seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(unix_seconds, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def format_peers(members: Iterable[Mapping[str, Any]]) -> str:
    """Return an aligned text table of members as ``/peers`` returns them."""
    rows = [COLUMNS]
    for m in members:
        rows.append(
            (m["name"], m["address"], m["state"], str(m["incarnation"]), _since(m["since"]))
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines) + "\n"
