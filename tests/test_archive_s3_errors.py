"""The S3 backend's error mapping and location checks, without a server."""

from __future__ import annotations

import botocore.exceptions
import pytest

from storage import (
    ArchiveError,
    ArchiveUnavailableError,
    ObjectNotFoundError,
    open_archive,
)
from storage.s3 import _map_error


def client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    response = {
        "Error": {"Code": code, "Message": f"message of {code}"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return botocore.exceptions.ClientError(response, "PutObject")


@pytest.mark.parametrize(
    ("code", "status", "what", "expected"),
    [
        ("NoSuchKey", 404, "read", ObjectNotFoundError),
        ("NoSuchBucket", 404, "read", ArchiveUnavailableError),
        ("NoSuchBucket", 404, "write", ArchiveUnavailableError),
        ("AccessDenied", 403, "write", ArchiveUnavailableError),
        ("ExpiredToken", 400, "write", ArchiveUnavailableError),
        ("SlowDown", 503, "write", ArchiveUnavailableError),
        ("InternalError", 500, "read", ArchiveUnavailableError),
        ("RequestTimeout", 400, "write", ArchiveUnavailableError),
        ("BadDigest", 400, "write", ArchiveUnavailableError),
        ("TooManyRequests", 429, "list", ArchiveUnavailableError),
        ("KeyTooLongError", 400, "write", ArchiveError),
        ("InvalidArgument", 400, "write", ArchiveError),
        ("EntityTooLarge", 400, "write", ArchiveError),
    ],
)
def test_s3_errors_map_to_archive_errors(code, status, what, expected):
    error = _map_error(client_error(code, status), what, "keys/a.pub", "s3://b/p/")

    assert type(error) is expected
    if expected is not ObjectNotFoundError:
        assert error.args[0].startswith(f"cannot {what} 'keys/a.pub'")
        assert f"{code} (HTTP {status}): message of {code}" in error.args[0]


def test_open_archive_checks_s3_locations():
    with pytest.raises(ArchiveError, match="invalid bucket name 'Bad_Bucket'"):
        open_archive("s3://Bad_Bucket/x")
    with pytest.raises(ArchiveError, match="must not contain credentials") as caught:
        open_archive("s3://AKIA:hunter2@bucket/x")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ArchiveError, match="invalid endpoint URL 'ftp://x'"):
        open_archive("s3://bucket/x", endpoint_url="ftp://x")
    with pytest.raises(ArchiveError, match="must not contain credentials") as caught:
        open_archive("s3://bucket/x", endpoint_url="http://key:hunter2@minio:9000")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ArchiveError, match="invalid region 'EU West'"):
        open_archive("s3://bucket/x", region="EU West")

    archive = open_archive("S3://bucket-1/a/b/", region="eu-west-1")
    assert repr(archive) == "S3Archive('s3://bucket-1/a/b/', region='eu-west-1')"
