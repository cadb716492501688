"""The alarm archive: its interface, the local-folder backend and queries.

:func:`open_archive` turns the configured location into an :class:`Archive`. A
plain path selects :class:`LocalArchive`. S3-compatible object storage is not
implemented yet, so boto3 is never imported.
"""

from __future__ import annotations

from pathlib import Path

from .archive import (
    ALARMS_PREFIX,
    KEYS_PREFIX,
    AlarmKeyFields,
    Archive,
    alarm_key,
    hour_prefixes,
    parse_alarm_key,
    public_key_key,
    slugify,
)
from .destination import ArchiveDestination
from .errors import ArchiveError, ArchiveUnavailableError, ObjectNotFoundError
from .local import LocalArchive
from .query import (
    ArchivedAlarm,
    format_json_lines,
    format_table,
    load_published_keys,
    parse_since,
    query_alarms,
)

__all__ = [
    "ALARMS_PREFIX",
    "KEYS_PREFIX",
    "AlarmKeyFields",
    "Archive",
    "ArchiveDestination",
    "ArchiveError",
    "ArchiveUnavailableError",
    "ArchivedAlarm",
    "LocalArchive",
    "ObjectNotFoundError",
    "alarm_key",
    "format_json_lines",
    "format_table",
    "hour_prefixes",
    "load_published_keys",
    "open_archive",
    "parse_alarm_key",
    "parse_since",
    "public_key_key",
    "query_alarms",
    "slugify",
]


def open_archive(spec: str) -> Archive:
    """Return the archive at ``spec``: a folder path, or ``file://`` and a path.

    Raises:
        ArchiveError: the location is empty or uses a scheme that is not
            supported, such as ``s3://``.
    """
    if not spec.strip():
        raise ArchiveError("archive location is empty, expected a folder path")
    scheme, separator, rest = spec.partition("://")
    if not separator:
        return LocalArchive(Path(spec).expanduser())
    # Only the scheme is quoted: the rest of a URL may contain credentials.
    scheme = scheme.lower()
    if scheme == "file":
        return LocalArchive(Path(rest).expanduser())
    if scheme == "s3":
        raise ArchiveError("s3 archives are not supported yet; use a folder path")
    raise ArchiveError(f"unsupported archive scheme {scheme!r}, expected a folder path")
