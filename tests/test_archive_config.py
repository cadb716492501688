"""The archive keys of the configuration, and boto3 kept out of folder agents."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mesh.config import parse_config
from mesh.errors import ConfigError
from storage import parse_s3_url
from storage.location import check_endpoint_url

ROOT = Path(__file__).resolve().parent.parent


def valid(**changes) -> dict:
    raw = {
        "name": "seoul",
        "listen": "127.0.0.1:7001",
        "key_file": "keys/seoul.key",
        "data_dir": "data/seoul",
        "archive": "data/archive",
    }
    raw.update(changes)
    return raw


def error_for(raw, tmp_path) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, base=tmp_path, environ={})
    return str(info.value)


def test_config_accepts_s3_archive_with_endpoint_and_region(tmp_path):
    raw = valid(
        archive="s3://alarms-prod/mesh/eu",
        archive_endpoint_url="http://minio.storage:9000",
        archive_region="eu-west-1",
    )

    config = parse_config(raw, base=tmp_path, environ={})

    assert config.archive == "s3://alarms-prod/mesh/eu"
    assert config.archive_endpoint_url == "http://minio.storage:9000"
    assert config.archive_region == "eu-west-1"


def test_config_s3_archive_endpoint_and_region_are_optional(tmp_path):
    config = parse_config(valid(archive="s3://alarms-prod"), base=tmp_path, environ={})

    assert config.archive == "s3://alarms-prod"
    assert config.archive_endpoint_url is None
    assert config.archive_region is None


def test_config_folder_archive_is_resolved(tmp_path):
    config = parse_config(valid(), base=tmp_path, environ={})

    assert config.archive == str(tmp_path / "data/archive")
    assert config.archive_endpoint_url is None


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"archive": "s3://ab/x"}, "archive: invalid bucket name 'ab'"),
        ({"archive": "s3://Alarms/x"}, "archive: invalid bucket name 'Alarms'"),
        ({"archive": "s3://-alarms/x"}, "archive: invalid bucket name '-alarms'"),
        ({"archive": "s3://192.168.1.10/x"}, "invalid bucket name '192.168.1.10'"),
        ({"archive": "s3://alarms/a/../b"}, "archive: invalid prefix 'a/../b'"),
        ({"archive": "s3://alarms/a//b"}, "archive: invalid prefix 'a//b'"),
        ({"archive": "s3://alarms/a b"}, "archive: invalid prefix 'a b'"),
        (
            {"archive": "s3://alarms/x?versionId=1"},
            "a query or fragment is not allowed",
        ),
        ({"archive": "gs://alarms/x"}, "archive: unsupported scheme 'gs'"),
        ({"archive": 7}, "archive: invalid value 7, expected a folder path or s3://"),
        (
            {"archive_endpoint_url": "http://minio:9000"},
            "archive_endpoint_url: applies only to an s3:// archive",
        ),
        ({"archive_region": "eu-west-1"}, "archive_region: applies only to an s3://"),
        (
            {"archive": "s3://alarms", "archive_endpoint_url": "minio:9000"},
            "archive_endpoint_url: invalid endpoint URL 'minio:9000', expected http://",
        ),
        (
            {"archive": "s3://alarms", "archive_endpoint_url": "http://minio:99999"},
            "archive_endpoint_url: invalid endpoint URL 'http://minio:99999', the port",
        ),
        (
            {"archive": "s3://alarms", "archive_endpoint_url": "http://minio/?a=1"},
            "archive_endpoint_url: invalid endpoint URL 'http://minio/?a=1', a query",
        ),
        (
            {"archive": "s3://alarms", "archive_region": "EU_West"},
            "archive_region: invalid region 'EU_West'",
        ),
        (
            {"archive": "s3://alarms", "archive_access_key_id": "AKIA"},
            "archive_access_key_id: unknown key",
        ),
    ],
)
def test_config_rejects_bad_archive(tmp_path, changes, expected):
    assert expected in error_for(valid(**changes), tmp_path)


@pytest.mark.parametrize(
    "changes",
    [
        {"archive": "s3://AKIAEXAMPLE:hunter2-secret@alarms/x"},
        {"archive": "gs://AKIAEXAMPLE:hunter2-secret@alarms/x"},
        {
            "archive": "s3://alarms",
            "archive_endpoint_url": "https://AKIAEXAMPLE:hunter2-secret@minio:9000",
        },
    ],
)
def test_config_never_repeats_credentials(tmp_path, changes):
    message = error_for(valid(**changes), tmp_path)

    assert "hunter2" not in message
    assert "AKIAEXAMPLE" not in message


def test_parse_s3_url_normalises_prefix():
    assert parse_s3_url("s3://alarms").prefix == ""
    assert parse_s3_url("s3://alarms/").prefix == ""
    assert parse_s3_url("s3://alarms/mesh/eu").prefix == "mesh/eu/"
    assert parse_s3_url("S3://alarms/mesh/eu/").url == "s3://alarms/mesh/eu/"
    assert check_endpoint_url("https://s3.eu-central-1.example.com") == (
        "https://s3.eu-central-1.example.com"
    )


def run_python(code: str, cwd: Path) -> None:
    subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        check=True,
        cwd=cwd,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )


def test_config_with_s3_archive_does_not_import_boto3(tmp_path):
    # The agent checks the location at start; boto3 loads when it opens it.
    run_python(
        """
        import sys
        from pathlib import Path
        from mesh.config import parse_config
        raw = dict(name="seoul", listen="127.0.0.1:7001", key_file="k",
                   data_dir="d", archive="s3://alarms/mesh")
        parse_config(raw, base=Path("."), environ={})
        assert "boto3" not in sys.modules, "boto3 was imported"
        assert "botocore" not in sys.modules, "botocore was imported"
        """,
        tmp_path,
    )


@pytest.mark.slow
def test_agent_with_folder_archive_does_not_import_boto3(tmp_path):
    # A whole agent runtime starts, archives, serves and stops without boto3.
    run_python(
        """
        import socket, sys
        from pathlib import Path
        import trio
        import mesh.cli
        from mesh.agent import Agent
        from mesh.config import parse_config
        from mesh.keys import generate_key_files

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        key = generate_key_files(Path("seoul.key"))
        raw = dict(name="seoul", listen=f"127.0.0.1:{port}", key_file="seoul.key",
                   data_dir="data", archive="archive", profile="local")
        agent = Agent(parse_config(raw, base=Path("."), environ={}), key)

        async def main():
            async with trio.open_nursery() as nursery:
                await nursery.start(agent.run)
                with trio.fail_after(10):
                    while not Path("archive/keys/seoul.pub").exists():
                        await trio.sleep(0.05)
                agent.request_stop()

        trio.run(main)
        assert "boto3" not in sys.modules, "boto3 was imported"
        assert "botocore" not in sys.modules, "botocore was imported"
        """,
        tmp_path,
    )


def test_s3_archive_without_boto3_is_a_clear_error(tmp_path):
    # An image built without the s3 extra: the configuration says what to
    # install, and so does opening the archive, instead of a traceback.
    run_python(
        """
        import sys
        sys.modules["boto3"] = None  # as if it were not installed
        from pathlib import Path
        import storage
        from mesh.config import parse_config
        from mesh.errors import ConfigError

        raw = dict(name="seoul", listen="127.0.0.1:7001", key_file="k",
                   data_dir="d", archive="s3://alarms/mesh")
        try:
            parse_config(raw, base=Path("."), environ={})
        except ConfigError as exc:
            assert "install alarminati[s3]" in str(exc), exc
        else:
            raise AssertionError("no ConfigError")
        try:
            storage.open_archive("s3://alarms/mesh")
        except storage.ArchiveError as exc:
            assert "need boto3, which is missing (boto3)" in str(exc), exc
        else:
            raise AssertionError("no ArchiveError")
        """,
        tmp_path,
    )
