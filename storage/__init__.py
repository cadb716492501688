"""The alarm archive: its interface, its two backends and queries.

:func:`open_archive` turns the configured location into an :class:`Archive`. A
plain path selects :class:`LocalArchive`, the default; ``s3://bucket/prefix``
selects :class:`storage.s3.S3Archive`, S3-compatible object storage through
boto3. Boto3 is imported only then, so an agent with a folder archive never
loads it. docs/archive.md describes the key layout, the S3 setup and queries.
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
    split_key,
)
from .destination import ArchiveDestination
from .errors import ArchiveError, ArchiveUnavailableError, ObjectNotFoundError
from .local import LocalArchive, PruneResult
from .location import S3Location, is_s3_url, parse_s3_url
from .query import (
    ArchivedAlarm,
    format_json_lines,
    format_table,
    load_published_keys,
    merge_results,
    parse_duration,
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
    "PruneResult",
    "S3Location",
    "alarm_key",
    "format_json_lines",
    "format_table",
    "hour_prefixes",
    "is_s3_url",
    "load_published_keys",
    "merge_results",
    "open_archive",
    "parse_alarm_key",
    "parse_duration",
    "parse_s3_url",
    "parse_since",
    "public_key_key",
    "query_alarms",
    "slugify",
    "split_key",
]


def open_archive(
    spec: str, *, endpoint_url: str | None = None, region: str | None = None
) -> Archive:
    """Return the archive at ``spec``.

    Args:
        spec: a folder path, ``file://`` and a path, or ``s3://bucket/prefix``.
        endpoint_url: for S3, the URL of an S3-compatible service such as
            MinIO; None for AWS or for the endpoint the environment names.
        region: for S3, the bucket's region; None for the environment's.

    Boto3 is imported only for an ``s3://`` location. Credentials are never
    given here: boto3 finds them the standard AWS way.

    Raises:
        ArchiveError: the location is empty, uses a scheme that is not
            supported, or is not a valid S3 location; or an endpoint or region
            is given for a folder.
    """
    if not spec.strip():
        raise ArchiveError("archive location is empty, expected a folder path")
    scheme, separator, rest = spec.partition("://")
    # Only the scheme is quoted: the rest of a URL may contain credentials.
    scheme = scheme.lower() if separator else ""
    if scheme == "s3":
        return _open_s3_archive(spec, endpoint_url=endpoint_url, region=region)
    if endpoint_url is not None or region is not None:
        raise ArchiveError(
            "an endpoint URL or region applies only to s3:// archives, not a folder"
        )
    if not separator:
        return LocalArchive(Path(spec).expanduser())
    if scheme == "file":
        return LocalArchive(Path(rest).expanduser())
    raise ArchiveError(
        f"unsupported archive scheme {scheme!r}, expected a folder path or s3://"
    )


def _open_s3_archive(
    spec: str, *, endpoint_url: str | None, region: str | None
) -> Archive:
    try:
        location = parse_s3_url(spec)
    except ValueError as exc:
        raise ArchiveError(str(exc)) from None
    # Imported here, so that boto3 is loaded only by agents that archive to S3.
    try:
        from .s3 import S3Archive
    except ImportError as exc:
        raise ArchiveError(
            f"s3:// archives need boto3, which is missing ({exc.name}); "
            "install alarminati[s3]"
        ) from exc

    try:
        return S3Archive(location, endpoint_url=endpoint_url, region=region)
    except ValueError as exc:
        raise ArchiveError(str(exc)) from None
