"""The archive as a destination of the outbox, so archive writes get its retries."""

from __future__ import annotations

from mesh.alarm import SignedAlarm
from sinks.errors import SinkPermanentError, SinkRetryableError

from .archive import Archive, alarm_key
from .errors import ArchiveError, ArchiveUnavailableError

__all__ = ["ArchiveDestination"]


class ArchiveDestination:
    """Writes each alarm's signed frame to the archive under :func:`alarm_key`.

    Args:
        archive: the archive to write to.
    """

    # Destination name in log lines.
    name = "archive"

    def __init__(self, archive: Archive) -> None:
        # The archive written to; shared with readers, never replaced.
        self._archive = archive

    async def deliver(self, signed: SignedAlarm, idempotency_key: str) -> str:
        """Store the frame and return ``"stored <key>"``.

        The idempotency key is not needed: the archive key depends only on the
        alarm, so a repeated write replaces the object with the same bytes.

        Raises:
            SinkRetryableError: the archive is unavailable or the write failed
                with an OSError.
            SinkPermanentError: the write cannot succeed, for example because the
                key conflicts with another object.
        """
        key = alarm_key(signed.alarm)
        try:
            await self._archive.put(key, signed.frame)
        except (ArchiveUnavailableError, OSError) as exc:
            raise SinkRetryableError(f"archive write of {key!r} failed: {exc}") from exc
        except ArchiveError as exc:
            raise SinkPermanentError(f"archive write of {key!r} failed: {exc}") from exc
        return f"stored {key}"
