"""The reported records of an agent, kept in its data folder across restarts.

A restarted agent must not report again what it or another member already
reported. The records are small (one per incident and status), so the whole
set is rewritten atomically after each report; records older than the
retention are dropped on write.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path

import msgpack

from .messages import Reported

__all__ = ["RecordStore"]

logger = logging.getLogger(__name__)

FILE_NAME = "reported.msgpack"


class RecordStore:
    def __init__(self, data_dir: Path, *, retention: float) -> None:
        self.path = data_dir / FILE_NAME
        # Seconds a record is kept after it was reported.
        self.retention = retention

    def load(self) -> list[Reported]:
        """Return the stored records; a missing or unreadable file gives none."""
        try:
            raw = msgpack.unpackb(self.path.read_bytes(), raw=False)
            return [Reported(*fields) for fields in raw]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, TypeError, msgpack.UnpackException) as exc:
            logger.error("cannot read reported records path=%s error=%s", self.path, exc)
            return []

    def save(self, records: Iterable[Reported], now: float | None = None) -> None:
        """Replace the stored records, dropping those past the retention."""
        horizon = (time.time() if now is None else now) - self.retention
        rows = [
            [r.incident, r.status, r.reporter, r.reported_at, r.signature]
            for r in records
            if r.reported_at >= horizon
        ]
        temporary = self.path.with_suffix(".tmp")
        with open(temporary, "wb") as f:
            f.write(msgpack.packb(rows, use_bin_type=True))
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self.path)
