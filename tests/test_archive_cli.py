"""``alarminati logs`` and ``alarminati archive prune`` as an operator runs them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_archive import make_alarm

from mesh.alarm import Status, seal_alarm
from mesh.keys import encode_public_key, generate_key_files
from storage import LocalArchive, alarm_key, public_key_key

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DAY = 86400.0


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mesh.cli", "--log-level", "warning", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


class Cluster:
    """One agent's folder archive, its key, and alarms written into it."""

    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.key = generate_key_files(root / "keys" / f"{name}.key")
        self.archive = LocalArchive(root / f"archive-{name}")

    async def publish_key(self) -> None:
        public = encode_public_key(self.key.verify_key).encode()
        await self.archive.put(public_key_key(self.name), public)

    async def write(self, sent_at: float, **fields) -> str:
        alarm = make_alarm(sent_at, reporter=self.name, **fields)
        key = alarm_key(alarm)
        await self.archive.put(key, seal_alarm(self.key, alarm).frame)
        return key


@pytest.fixture
async def clusters(tmp_path) -> dict[str, Cluster]:
    found = {name: Cluster(tmp_path, name) for name in ("seoul", "busan")}
    for cluster in found.values():
        await cluster.publish_key()
    return found


def records(result: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


async def test_logs_merges_archives_of_all_clusters_in_time_order(clusters):
    now = time.time()
    seoul, busan = clusters["seoul"], clusters["busan"]
    await seoul.write(now - 300, cluster="jeju", incident="a")
    await busan.write(now - 200, cluster="seoul", incident="b")
    await seoul.write(now - 100, cluster="busan", incident="c", status=Status.RESOLVED)
    await busan.write(now - 2 * DAY, cluster="seoul", incident="too-old")
    archives = [
        "--archive",
        str(seoul.archive.root),
        "--archive",
        str(busan.archive.root),
    ]

    merged = run_cli("logs", *archives, "--since", "1h", "--json")
    by_cluster = run_cli("logs", *archives, "--cluster", "seoul", "--cluster", "busan")
    resolved = run_cli("logs", *archives, "--status", "resolved", "--json")

    assert merged.returncode == 0, merged.stderr
    assert [r["alarm"]["incident"] for r in records(merged)] == [
        "a",
        "b",
        "c",
    ]
    assert all(r["verified"] for r in records(merged))
    assert by_cluster.returncode == 0
    lines = by_cluster.stdout.splitlines()
    assert lines[0].split()[:4] == ["TIME", "SENT", "STATUS", "CLUSTER"]
    assert [line.split()[2] for line in lines[1:]] == ["seoul", "busan"]
    assert [r["alarm"]["incident"] for r in records(resolved)] == ["c"]


async def test_logs_flags_tampered_record_and_exits_1(clusters):
    now = time.time()
    seoul = clusters["seoul"]
    key = await seoul.write(now - 60, incident="tampered")
    await seoul.write(now - 30, incident="intact")
    path = seoul.archive.root / key
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))

    result = run_cli("logs", "--archive", str(seoul.archive.root), "--since", "1h")

    assert result.returncode == 1
    assert "1 of 2 records failed verification" in result.stderr
    lines = result.stdout.splitlines()
    assert "FAILED: bad_signature" in lines[1]
    assert lines[2].endswith("VERIFIED")


async def test_logs_filters_by_project_of_the_config(clusters, tmp_path):
    now = time.time()
    seoul = clusters["seoul"]
    await seoul.write(now - 40, cluster="busan", subject="member/busan", incident="a")
    await seoul.write(
        now - 30, cluster="jeju", subject="https://shop.pay.example.com/", incident="b"
    )
    await seoul.write(now - 20, cluster="jeju", subject="member/jeju", incident="c")
    config = {
        "name": "seoul",
        "listen": "127.0.0.1:7001",
        "key_file": str(tmp_path / "keys" / "seoul.key"),
        "data_dir": str(tmp_path / "data"),
        "archive": str(seoul.archive.root),
        "sinks": [{"name": "hook", "type": "webhook", "url": "http://127.0.0.1:9/a"}],
        "routes": {"default": {"receivers": ["hook"]}, "pay": {"receivers": ["hook"]}},
        "projects": {
            "payments": {
                "domains": ["*.pay.example.com"],
                "clusters": ["busan"],
                "route": "pay",
            }
        },
    }
    path = tmp_path / "seoul.yaml"
    path.write_text(yaml.safe_dump(config))

    result = run_cli("logs", "--config", str(path), "--project", "payments", "--json")
    table = run_cli("logs", "--config", str(path))
    without_config = run_cli(
        "logs", "--archive", str(seoul.archive.root), "--project", "payments"
    )

    assert result.returncode == 0, result.stderr
    assert [(r["alarm"]["incident"], r["project"]) for r in records(result)] == [
        ("a", "payments"),
        ("b", "payments"),
    ]
    assert table.stdout.splitlines()[0].split()[:5] == [
        "TIME",
        "SENT",
        "STATUS",
        "CLUSTER",
        "PROJECT",
    ]
    assert without_config.returncode == 2
    assert "--project needs --config" in without_config.stderr


def test_logs_reports_unreachable_s3_archive(tmp_path):
    env_free = {
        "AWS_ACCESS_KEY_ID": "AKIATEST",
        "AWS_SECRET_ACCESS_KEY": "never-shown-secret",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "PATH": "/usr/bin:/bin",
    }
    from s3_server import free_port

    result = subprocess.run(
        [sys.executable, "-m", "mesh.cli", "logs", "--archive", "s3://alarms/mesh"]
        + [
            "--endpoint-url",
            f"http://127.0.0.1:{free_port()}",
            "--region",
            "eu-west-1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env_free,
    )

    assert result.returncode == 1
    assert "cannot list 'keys/' from 's3://alarms/mesh/'" in result.stderr
    assert "Traceback" not in result.stderr
    assert "never-shown-secret" not in result.stderr


def test_logs_rejects_bad_archive_location():
    result = run_cli("logs", "--archive", "s3://Bad_Bucket/x")

    assert result.returncode == 2
    assert "invalid bucket name 'Bad_Bucket'" in result.stderr


async def test_archive_prune_older_than(clusters):
    now = time.time()
    seoul = clusters["seoul"]
    old = [
        await seoul.write(now - days * DAY, incident=f"d{days}") for days in (120, 91)
    ]
    kept = [
        await seoul.write(now - days * DAY, incident=f"d{days}") for days in (89, 1)
    ]
    root = seoul.archive.root

    dry = run_cli(
        "archive", "prune", "--older-than", "90d", "--archive", str(root), "--dry-run"
    )
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("would remove 2 objects (")
    assert all((root / key).exists() for key in old + kept)

    pruned = run_cli("archive", "prune", "--older-than", "90d", "--archive", str(root))
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout.startswith("removed 2 objects (")
    assert not any((root / key).exists() for key in old)
    assert all((root / key).exists() for key in kept)
    assert (root / "keys" / "seoul.pub").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--older-than", "90d", "--archive", "s3://alarms/x"], "lifecycle rule"),
        (
            ["--older-than", "ninety days", "--archive", "x"],
            "invalid duration 'ninety days'",
        ),
        (["--older-than", "0d", "--archive", "x"], "expected more than 0"),
        (["--older-than", "90d"], "no archive given"),
    ],
)
def test_archive_prune_rejects(args, message):
    result = run_cli("archive", "prune", *args)

    assert result.returncode == 2
    assert message in result.stderr
