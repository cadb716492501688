"""Where an archive lives: parsing and checking ``s3://`` locations.

This module imports no boto3, so that the configuration can check an S3 archive
without loading it. Credentials are never part of a location: boto3 finds them
the standard AWS way (environment, shared profile, web identity, instance
role), so a URL or endpoint that carries a user name or password is refused,
and the refusal does not repeat the value.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import ipaddress
import re
import urllib.parse

__all__ = [
    "S3Location",
    "boto3_installed",
    "check_endpoint_url",
    "check_region",
    "is_s3_url",
    "parse_s3_url",
]

# Bucket names as AWS allows them for general purpose buckets: 3 to 63
# characters, lowercase letters, digits, dots and hyphens, starting and ending
# with a letter or digit. MinIO and Ceph RGW accept the same names.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
BUCKET_RULE = (
    "3 to 63 lowercase letters, digits, '.' and '-', starting and ending with a "
    "letter or digit"
)

# Prefix segments use the characters that AWS calls safe in object keys.
_PREFIX_SEGMENT = re.compile(r"[A-Za-z0-9!_*'()-][A-Za-z0-9!_.*'()-]*")
# Longest prefix accepted. S3 keys are limited to 1024 bytes, and an alarm key
# needs up to about 290 of them.
MAX_PREFIX_LENGTH = 512

_REGION = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
MAX_REGION_LENGTH = 64


@dataclasses.dataclass(frozen=True, slots=True)
class S3Location:
    """A bucket and the prefix under which the archive keeps its objects."""

    bucket: str
    # Prepended to every archive key: "" or a path ending in "/".
    prefix: str

    @property
    def url(self) -> str:
        """Return the location as ``s3://bucket/prefix/``."""
        return f"s3://{self.bucket}/{self.prefix}"


def is_s3_url(spec: str) -> bool:
    """Return whether ``spec`` names S3 storage, whatever the case of the scheme."""
    return spec.strip().lower().startswith("s3://")


def _has_userinfo(netloc: str) -> bool:
    return "@" in netloc


def parse_s3_url(url: str) -> S3Location:
    """Split ``s3://bucket/prefix`` into a bucket and a key prefix.

    The prefix is optional; a trailing ``/`` is added when it is missing, so
    ``s3://alarms/prod`` and ``s3://alarms/prod/`` are the same location.

    Raises:
        ValueError: the URL is not ``s3://``, or the bucket or prefix is not
            valid. A URL that seems to carry credentials is not repeated.
    """
    scheme, separator, rest = url.strip().partition("://")
    if not separator or scheme.lower() != "s3":
        raise ValueError(f"invalid S3 URL {url!r}, expected s3://bucket/prefix")
    bucket, _, prefix = rest.partition("/")
    if _has_userinfo(bucket) or ":" in bucket:
        raise ValueError(
            "an S3 URL must not contain credentials; give them the standard AWS "
            "way (environment, profile, web identity)"
        )
    if not _BUCKET.fullmatch(bucket) or ".." in bucket or _is_ip_address(bucket):
        raise ValueError(f"invalid bucket name {bucket!r}, expected {BUCKET_RULE}")
    if "?" in prefix or "#" in prefix:
        raise ValueError(f"invalid S3 URL {url!r}, a query or fragment is not allowed")
    prefix = prefix.rstrip("/")
    if len(prefix) > MAX_PREFIX_LENGTH:
        raise ValueError(
            f"invalid prefix of {len(prefix)} characters, at most {MAX_PREFIX_LENGTH}"
        )
    if prefix:
        for segment in prefix.split("/"):
            if not _PREFIX_SEGMENT.fullmatch(segment):
                raise ValueError(
                    f"invalid prefix {prefix!r}: segment {segment!r} must be letters, "
                    "digits and !_.*'()- without a leading dot"
                )
        prefix += "/"
    return S3Location(bucket, prefix)


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def check_endpoint_url(url: str) -> str:
    """Check the URL of an S3-compatible service and return it.

    Args:
        url: ``http://`` or ``https://``, a host, an optional port and path, such
            as ``http://minio.storage:9000``.

    Raises:
        ValueError: another scheme, no host, a bad port, a query or fragment, or
            credentials in the URL (which are not repeated).
    """
    if not isinstance(url, str):
        raise ValueError(f"invalid endpoint URL {url!r}, expected a string")
    parts = urllib.parse.urlsplit(url.strip())
    if _has_userinfo(parts.netloc):
        raise ValueError(
            "an endpoint URL must not contain credentials; give them the standard "
            "AWS way (environment, profile, web identity)"
        )
    expected = "expected http:// or https:// and a host, such as http://minio:9000"
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"invalid endpoint URL {url!r}, {expected}")
    try:
        parts.port
    except ValueError:
        raise ValueError(
            f"invalid endpoint URL {url!r}, the port is not valid"
        ) from None
    if parts.query or parts.fragment:
        raise ValueError(
            f"invalid endpoint URL {url!r}, a query or fragment is not allowed"
        )
    return url.strip()


def check_region(region: str) -> str:
    """Check a region name such as ``eu-west-1`` and return it.

    Raises:
        ValueError: the name is not lowercase letters and digits joined by ``-``.
    """
    if (
        not isinstance(region, str)
        or len(region) > MAX_REGION_LENGTH
        or not _REGION.fullmatch(region)
    ):
        raise ValueError(
            f"invalid region {region!r}, expected lowercase letters and digits "
            "joined by '-', such as eu-west-1"
        )
    return region


def boto3_installed() -> bool:
    """Return whether boto3 can be imported, without importing it."""
    try:
        return importlib.util.find_spec("boto3") is not None
    except ValueError:
        return False  # sys.modules holds None for it: its import is blocked.
