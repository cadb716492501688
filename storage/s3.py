"""The archive backend in S3-compatible object storage, through boto3.

This module is imported only when an ``s3://`` archive is opened, so an agent
with a folder archive never loads boto3 and its client (24 MiB of resident
memory, measured with Python 3.11 and boto3 1.44).

Any S3 API works: AWS S3, MinIO, Ceph RGW, the object stores of the clouds.
The endpoint, region and credentials come the standard AWS way. An explicit
endpoint URL or region given here wins; otherwise boto3 reads
``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, ``AWS_REGION`` and the shared
config file. Credentials are never passed in: boto3's chain finds them in the
environment, a profile (``AWS_PROFILE``), a web identity token (IRSA, EKS Pod
Identity) or an instance role, and refreshes them when they expire.

Every boto3 call runs in a worker thread (``trio.to_thread.run_sync``), at most
``max_concurrency`` at a time, so that a slow store never blocks the trio loop.
A call whose caller is cancelled, for example by the outbox's attempt deadline,
is abandoned: the caller returns at once, and the thread ends when botocore's
own timeouts end the request. The boto3 client is created on first use, in a
worker thread too, because that reads the shared config and credentials files.

botocore exceptions are mapped here, at the boundary, into :mod:`storage.errors`:

* a missing object (``NoSuchKey``, 404 on a read): :class:`ObjectNotFoundError`;
* connection failures, timeouts, 5xx answers, throttling, a missing bucket,
  denied access and missing credentials: :class:`ArchiveUnavailableError`,
  because each of them can be fixed (the store comes back, an operator creates
  the bucket or grants access) while the outbox keeps retrying;
* any other rejected request (another 4xx): a plain :class:`ArchiveError`.

Messages carry the operation, the key, the error code and the server's text,
never a credential.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import boto3
import botocore.config
import botocore.exceptions
import trio

from .archive import split_key
from .errors import ArchiveError, ArchiveUnavailableError, ObjectNotFoundError
from .location import S3Location, check_endpoint_url, check_region

__all__ = ["S3Archive", "S3Statistics"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

SECONDS = 1.0

# Deadline to open a connection to the store. Lower notices a dead endpoint
# sooner; higher tolerates a slow network.
CONNECT_TIMEOUT = 5 * SECONDS
# Deadline for the store to answer once the request is sent. Alarm objects are
# a few hundred bytes, so a longer wait means the store is in trouble.
READ_TIMEOUT = 15 * SECONDS
# Attempts of one call, botocore's own retries of throttling and 5xx included.
# The outbox retries archive writes for hours after these, so they are few.
MAX_ATTEMPTS = 3
# Worker threads and pooled connections per archive. Queries read this many
# objects at once; more helps a distant store and costs a thread each.
MAX_CONCURRENCY = 16
# Keys per ListObjectsV2 page; 1000 is the S3 maximum.
LIST_PAGE_SIZE = 1000

# Error codes that a later retry may get past: the store is overloaded, the
# bucket does not exist yet, access is not granted yet, the credentials expired.
_UNAVAILABLE_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "ServiceUnavailable",
    "InternalError",
    # The body arrived damaged: the next attempt sends it again.
    "BadDigest",
    "NoSuchBucket",
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
}
_UNAVAILABLE_STATUSES = {401, 403, 408, 429}
_NOT_FOUND_CODES = {"NoSuchKey", "NotFound", "404"}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class S3Statistics:
    """Requests sent by one :class:`S3Archive`, from :meth:`S3Archive.statistics`.

    Each count is of calls, botocore's internal retries not included.
    """

    put_requests: int
    get_requests: int
    # ListObjectsV2 pages: one per started 1000 keys under a listed prefix.
    list_requests: int
    # Calls that ended in an error, of any kind.
    failed_requests: int


class S3Archive:
    """An :class:`~storage.archive.Archive` in an S3 bucket, under a key prefix.

    Args:
        location: the bucket and prefix, from :func:`storage.location.parse_s3_url`.
        endpoint_url: URL of an S3-compatible service such as MinIO; None for
            AWS, or for the endpoint that the environment or profile names.
        region: region of the bucket; None for the environment's or profile's.
        max_concurrency: boto3 calls in flight at once.
        list_page_size: keys per listing request, at most 1000.

    Raises:
        ValueError: the endpoint URL or region is not valid.
    """

    def __init__(
        self,
        location: S3Location,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        max_concurrency: int = MAX_CONCURRENCY,
        list_page_size: int = LIST_PAGE_SIZE,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(
                f"invalid max_concurrency {max_concurrency!r}, expected >= 1"
            )
        if not 1 <= list_page_size <= LIST_PAGE_SIZE:
            raise ValueError(
                f"invalid list_page_size {list_page_size!r}, "
                f"expected 1 to {LIST_PAGE_SIZE}"
            )
        # Keys per ListObjectsV2 request.
        self._list_page_size = list_page_size
        # Bucket and key prefix; never changed.
        self._location = location
        self._endpoint_url = (
            None if endpoint_url is None else check_endpoint_url(endpoint_url)
        )
        self._region = None if region is None else check_region(region)
        # Bounds the worker threads, and so the connections, of this archive.
        self._limiter = trio.CapacityLimiter(max_concurrency)
        self._max_concurrency = max_concurrency
        # The boto3 client, created by the first call; guarded by _client_lock
        # because worker threads create it.
        self._client: Any = None
        self._client_lock = threading.Lock()
        # Request counts, changed only on the trio thread.
        self._puts = 0
        self._gets = 0
        self._lists = 0
        self._failures = 0

    def __repr__(self) -> str:
        options = "".join(
            f", {name}={value!r}"
            for name, value in (
                ("endpoint_url", self._endpoint_url),
                ("region", self._region),
            )
            if value is not None
        )
        return f"S3Archive({self.url!r}{options})"

    @property
    def url(self) -> str:
        """The location as ``s3://bucket/prefix/``."""
        return self._location.url

    @property
    def location(self) -> S3Location:
        return self._location

    @property
    def read_concurrency(self) -> int:
        """Reads that queries should run at once against this archive."""
        return self._max_concurrency

    def statistics(self) -> S3Statistics:
        """Return the counts of requests sent so far."""
        return S3Statistics(
            put_requests=self._puts,
            get_requests=self._gets,
            list_requests=self._lists,
            failed_requests=self._failures,
        )

    # ------------------------------------------------------------------ client

    def _get_client(self) -> Any:
        # Runs in a worker thread. A boto3 Session is not thread-safe, the
        # client it creates is.
        with self._client_lock:
            if self._client is None:
                config = botocore.config.Config(
                    connect_timeout=CONNECT_TIMEOUT,
                    read_timeout=READ_TIMEOUT,
                    retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS},
                    max_pool_connections=self._max_concurrency,
                    # Checksums only where S3 requires them: the trailing CRC
                    # checksums that newer botocore sends by default are refused
                    # by some S3-compatible stores. Puts send Content-MD5.
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                )
                session = boto3.session.Session(region_name=self._region)
                self._client = session.client(
                    "s3", endpoint_url=self._endpoint_url, config=config
                )
            return self._client

    async def aclose(self) -> None:
        """Close the pooled connections. A later call opens new ones."""
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            await trio.to_thread.run_sync(client.close, limiter=self._limiter)

    async def _call(self, what: str, key: str, function: Callable[[Any], T]) -> T:
        """Run ``function(client)`` in a worker thread; map its botocore errors."""

        def run() -> T:
            return function(self._get_client())

        try:
            return await trio.to_thread.run_sync(
                run, abandon_on_cancel=True, limiter=self._limiter
            )
        except (
            botocore.exceptions.BotoCoreError,
            botocore.exceptions.ClientError,
        ) as exc:
            self._failures += 1
            raise _map_error(exc, what, key, self.url) from exc

    # ------------------------------------------------------------------ archive

    async def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``; S3 replaces an object atomically.

        The request carries the MD5 of the data, so the store rejects a body
        damaged on the way.

        Raises:
            ArchiveUnavailableError: the store cannot be reached, refused access,
                or has no such bucket; a retry may succeed.
            ArchiveError: the store rejected the request for good.
            ValueError: the key is invalid.
            TypeError: ``data`` is not bytes.
        """
        split_key(key)
        if not isinstance(data, bytes):
            raise TypeError(f"data must be bytes, got {type(data).__name__}")
        digest = base64.b64encode(
            hashlib.md5(data, usedforsecurity=False).digest()
        ).decode("ascii")
        arguments = dict(
            Bucket=self._location.bucket,
            Key=self._location.prefix + key,
            Body=data,
            ContentMD5=digest,
            ContentType="application/octet-stream",
        )
        self._puts += 1
        await self._call("write", key, lambda client: client.put_object(**arguments))

    async def get(self, key: str) -> bytes:
        """Return the object stored under ``key``.

        Raises:
            ObjectNotFoundError: no object is stored under ``key``.
            ArchiveUnavailableError: the store cannot be reached or refused
                access; a retry may succeed.
            ValueError: the key is invalid.
        """
        split_key(key)
        bucket, full_key = self._location.bucket, self._location.prefix + key

        def read(client: Any) -> bytes:
            response = client.get_object(Bucket=bucket, Key=full_key)
            with response["Body"] as body:
                return body.read()

        self._gets += 1
        return await self._call("read", key, read)

    async def list(self, prefix: str) -> list[str]:
        """Return the keys that start with ``prefix``, sorted.

        Only objects under ``prefix`` are listed, one request per 1000 keys
        (``list_page_size``).

        Raises:
            ArchiveUnavailableError: the store cannot be reached or refused
                access; a retry may succeed.
            ValueError: the prefix is invalid.
        """
        split_key(prefix, allow_partial=True)
        bucket, base = self._location.bucket, self._location.prefix

        def list_pages(client: Any) -> tuple[list[str], int]:
            keys, pages = [], 0
            paginator = client.get_paginator("list_objects_v2")
            pagination = {"PageSize": self._list_page_size}
            for page in paginator.paginate(
                Bucket=bucket, Prefix=base + prefix, PaginationConfig=pagination
            ):
                pages += 1
                keys.extend(
                    item["Key"][len(base) :] for item in page.get("Contents", ())
                )
            return keys, pages

        keys, pages = await self._call("list", prefix, list_pages)
        self._lists += pages
        keys.sort()
        return keys


def _map_error(exc: Exception, what: str, key: str, url: str) -> ArchiveError:
    """Return the archive error for a botocore failure of one call."""
    target = f"{key!r} {'from' if what != 'write' else 'to'} {url!r}"
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "")) or "unknown"
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        text = str(error.get("Message", "")).strip()
        detail = f"{code} (HTTP {status})" + (f": {text}" if text else "")
        message = f"cannot {what} {target}: {detail}"
        missing_key = code in _NOT_FOUND_CODES or (
            status == 404 and code != "NoSuchBucket"
        )
        if what == "read" and missing_key:
            return ObjectNotFoundError(f"no object {key!r} in {url!r}")
        retry_may_help = (
            code in _UNAVAILABLE_CODES
            or status in _UNAVAILABLE_STATUSES
            or (status is not None and status >= 500)
        )
        if retry_may_help:
            return ArchiveUnavailableError(message)
        return ArchiveError(message)
    if isinstance(exc, botocore.exceptions.ParamValidationError):
        return ArchiveError(f"cannot {what} {target}: {exc}")
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return ArchiveUnavailableError(
            f"cannot {what} {target}: no AWS credentials found in the environment, "
            "profile, web identity or instance role"
        )
    # Connection failures, timeouts, credential refresh and profile errors.
    return ArchiveUnavailableError(f"cannot {what} {target}: {exc}")
