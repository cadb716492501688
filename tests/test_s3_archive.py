"""The S3 archive against a real S3 API server on loopback (moto's standalone server).

Every request goes over HTTP through boto3's whole stack to a server in another
process. The server is started once per session; each test gets its own bucket,
and the outage test runs a server of its own that it stops and starts again.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
from pathlib import Path

import botocore.exceptions
import pytest
import trio
from agent_processes import AgentProcesses
from s3_server import (  # noqa: F401  (fixtures)
    SECRET_ACCESS_KEY,
    S3Server,
    aws_environment,
    free_port,
    s3_bucket,
    s3_server,
)
from test_archive import HOUR_16, REPORTERS, RecordingArchive, make_alarm, store

from mesh.alarm import Status, open_alarm, seal_alarm
from mesh.keys import Keyring, SigningKey, encode_public_key
from sinks.outbox import Outbox, OutboxObserver, RetryPolicy
from storage import (
    ArchiveDestination,
    ArchiveUnavailableError,
    ObjectNotFoundError,
    alarm_key,
    load_published_keys,
    parse_s3_url,
    public_key_key,
    query_alarms,
)
from storage.s3 import S3Archive

pytestmark = pytest.mark.slow

HOURS = 3600.0

# Retries fast enough for a test; the defaults wait up to 5 minutes.
FAST_RETRIES = RetryPolicy(initial_delay=0.05, max_delay=0.5, attempt_timeout=30)


@pytest.fixture
def signing_keys() -> dict[str, SigningKey]:
    return {name: SigningKey.generate() for name in REPORTERS}


@pytest.fixture
def keyring(signing_keys) -> Keyring:
    return Keyring({name: key.verify_key for name, key in signing_keys.items()})


def open_s3(
    server: S3Server, bucket: str, prefix: str = "mesh/prod", **options
) -> S3Archive:
    location = parse_s3_url(f"s3://{bucket}/{prefix}")
    return S3Archive(location, endpoint_url=server.url, **options)


@pytest.fixture
async def archive(s3_server, s3_bucket):
    archive = open_s3(s3_server, s3_bucket)
    yield archive
    await archive.aclose()


def bucket_keys(server: S3Server, bucket: str) -> list[str]:
    response = server.client().list_objects_v2(Bucket=bucket)
    return [item["Key"] for item in response.get("Contents", [])]


class Deliveries(OutboxObserver):
    """Counts the outbox's deliveries and retries, and wakes waiters."""

    def __init__(self) -> None:
        self.delivered_count = 0
        self.retry_errors: list[str] = []
        self.changed = trio.Event()

    def delivered(self, destination, attempts, seconds_since_enqueue) -> None:
        self.delivered_count += 1
        self._wake()

    def retrying(self, destination, error, delay) -> None:
        self.retry_errors.append(error)
        self._wake()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def wait_until(self, condition, timeout: float, what: str) -> None:
        with trio.move_on_after(timeout):
            while not condition():
                await self.changed.wait()
            return
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class ShiftedClock:
    """A wall clock that a test can move forward, as if hours went by."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def make_outbox(path: Path, archive, keyring, observer, now=time.time) -> Outbox:
    return Outbox(
        path,
        {"archive": ArchiveDestination(archive)},
        decode=lambda frame: open_alarm(frame, keyring),
        policy=FAST_RETRIES,
        now=now,
        observer=observer,
    )


# ---------------------------------------------------------------------- backend


async def test_s3_archive_put_get_list_under_prefix(archive, s3_server, s3_bucket):
    await archive.put("alarms/2026/12/04/16/b.alarm", b"second")
    await archive.put("alarms/2026/12/04/16/a.alarm", b"first")
    await archive.put("alarms/2026/12/04/17/c.alarm", b"third")
    await archive.put("keys/seoul.pub", b"key")
    # Objects of others in the same bucket, beside the prefix and under it.
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="mesh/prod2/alarms/x.alarm", Body=b"x")
    client.put_object(Bucket=s3_bucket, Key="other/alarms/y.alarm", Body=b"y")

    assert await archive.get("alarms/2026/12/04/16/a.alarm") == b"first"
    assert await archive.list("alarms/2026/12/04/16/") == [
        "alarms/2026/12/04/16/a.alarm",
        "alarms/2026/12/04/16/b.alarm",
    ]
    assert await archive.list("alarms/2026/12/04/1") == [
        "alarms/2026/12/04/16/a.alarm",
        "alarms/2026/12/04/16/b.alarm",
        "alarms/2026/12/04/17/c.alarm",
    ]
    assert await archive.list("") == [
        "alarms/2026/12/04/16/a.alarm",
        "alarms/2026/12/04/16/b.alarm",
        "alarms/2026/12/04/17/c.alarm",
        "keys/seoul.pub",
    ]
    assert await archive.list("alarms/2027/") == []
    assert "mesh/prod/keys/seoul.pub" in bucket_keys(s3_server, s3_bucket)


async def test_s3_archive_put_replaces_object(archive):
    await archive.put("keys/seoul.pub", b"old")
    await archive.put("keys/seoul.pub", b"new")

    assert await archive.get("keys/seoul.pub") == b"new"
    assert await archive.list("keys/") == ["keys/seoul.pub"]


async def test_s3_archive_list_pages_through_many_keys(s3_server, s3_bucket):
    archive = open_s3(s3_server, s3_bucket, list_page_size=2)
    for name in "abcde":
        await archive.put(f"alarms/2026/12/04/16/{name}.alarm", name.encode())

    keys = await archive.list("alarms/2026/12/04/16/")

    assert keys == [f"alarms/2026/12/04/16/{name}.alarm" for name in "abcde"]
    assert archive.statistics().list_requests == 3
    assert archive.statistics().put_requests == 5


async def test_s3_archive_get_missing_raises_not_found(archive):
    with pytest.raises(ObjectNotFoundError, match="no object 'keys/nobody.pub'"):
        await archive.get("keys/nobody.pub")


@pytest.mark.parametrize("key", ["/etc/passwd", "../x", "alarms//x", ".hidden", ""])
async def test_s3_archive_rejects_invalid_keys(archive, key):
    with pytest.raises(ValueError, match="invalid key"):
        await archive.put(key, b"data")
    assert archive.statistics().put_requests == 0


async def test_s3_archive_missing_bucket_is_unavailable(s3_server, aws_environment):
    archive = open_s3(s3_server, "no-such-bucket-here")

    for operation in (archive.put("keys/a.pub", b"x"), archive.get("keys/a.pub")):
        with pytest.raises(ArchiveUnavailableError, match="NoSuchBucket") as caught:
            await operation
        assert isinstance(caught.value.__cause__, botocore.exceptions.ClientError)
    with pytest.raises(ArchiveUnavailableError, match="NoSuchBucket"):
        await archive.list("alarms/")


async def test_s3_archive_unreachable_endpoint_is_unavailable(s3_bucket):
    location = parse_s3_url(f"s3://{s3_bucket}/mesh")
    archive = S3Archive(location, endpoint_url=f"http://127.0.0.1:{free_port()}")

    with pytest.raises(ArchiveUnavailableError, match="Could not connect") as caught:
        await archive.put("keys/a.pub", b"x")

    assert SECRET_ACCESS_KEY not in str(caught.value)
    assert SECRET_ACCESS_KEY not in repr(archive)
    assert archive.statistics().failed_requests == 1


async def test_s3_archive_without_credentials_is_unavailable(
    s3_server, s3_bucket, monkeypatch
):
    # The metadata service stays disabled, so the chain ends empty.
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    archive = open_s3(s3_server, s3_bucket)

    with pytest.raises(ArchiveUnavailableError, match="no AWS credentials found"):
        await archive.put("keys/a.pub", b"x")


async def test_s3_archive_call_returns_when_cancelled(aws_environment, s3_bucket):
    # A store that accepts connections and never answers: the caller's
    # deadline ends the call, not botocore's 15 s read timeout.
    async def never_answer(stream):
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        serve = functools.partial(trio.serve_tcp, never_answer, 0, host="127.0.0.1")
        [listener] = await nursery.start(serve)
        port = listener.socket.getsockname()[1]
        location = parse_s3_url(f"s3://{s3_bucket}/mesh")
        archive = S3Archive(location, endpoint_url=f"http://127.0.0.1:{port}")

        with trio.fail_after(10):
            with trio.move_on_after(1.0) as scope:
                await archive.put("keys/a.pub", b"x")
        assert scope.cancelled_caught
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------- queries


async def test_s3_query_returns_range_in_time_order(archive, keyring, signing_keys):
    # Alarms of three reporters from 14:50 to 18:10, stored out of order.
    offsets = [-4200, 5, 1799, 1800, 3599, 3600, 7199, 7200, 7800]
    for index, offset in enumerate(reversed(offsets)):
        alarm = make_alarm(
            HOUR_16 + offset,
            reporter=REPORTERS[index % 3],
            cluster=["busan", "jeju"][index % 2],
            incident=f"check-failed/api@{index}",
        )
        await store(archive, signing_keys, alarm)
    recording = RecordingArchive(archive)
    before = archive.statistics()

    results = await query_alarms(
        recording, keyring, since=HOUR_16, until=HOUR_16 + 7200
    )

    sent = [result.alarm.sent_at for result in results]
    assert sent == [HOUR_16 + offset for offset in [5, 1799, 1800, 3599, 3600, 7199]]
    assert {result.alarm.reporter for result in results} == set(REPORTERS)
    assert {result.alarm.cluster for result in results} == {"busan", "jeju"}
    assert all(result.verified for result in results)
    # Only the two hours of the range were listed: one request each.
    assert sorted(recording.listed) == [
        "alarms/2026/12/04/16/",
        "alarms/2026/12/04/17/",
    ]
    after = archive.statistics()
    assert after.list_requests - before.list_requests == 2
    assert after.get_requests - before.get_requests == 6


async def test_s3_query_filters(archive, keyring, signing_keys):
    await store(archive, signing_keys, make_alarm(HOUR_16 + 1))
    await store(archive, signing_keys, make_alarm(HOUR_16 + 2, cluster="tokyo"))
    await store(archive, signing_keys, make_alarm(HOUR_16 + 3, subject="node/n1"))
    await store(archive, signing_keys, make_alarm(HOUR_16 + 4, status=Status.RESOLVED))
    window = dict(since=HOUR_16, until=HOUR_16 + 60)

    by_cluster = await query_alarms(archive, keyring, cluster="tokyo", **window)
    by_status = await query_alarms(archive, keyring, status="resolved", **window)
    by_subjects = await query_alarms(
        archive, keyring, subject=["node/n1", "member/busan"], status="firing", **window
    )

    assert [r.alarm.sent_at for r in by_cluster] == [HOUR_16 + 2]
    assert [r.alarm.sent_at for r in by_status] == [HOUR_16 + 4]
    assert [r.alarm.sent_at for r in by_subjects] == [HOUR_16 + n for n in (1, 2, 3)]


async def test_s3_query_flags_tampered_objects(
    archive, keyring, signing_keys, s3_server, s3_bucket
):
    flipped = await store(archive, signing_keys, make_alarm(HOUR_16 + 1))
    replaced = await store(archive, signing_keys, make_alarm(HOUR_16 + 2))
    await store(archive, signing_keys, make_alarm(HOUR_16 + 3))
    client = s3_server.client()
    # One object gets a flipped byte, written straight to the bucket.
    key = "mesh/prod/" + alarm_key(flipped.alarm)
    data = bytearray(client.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    data[-3] ^= 0x01
    client.put_object(Bucket=s3_bucket, Key=key, Body=bytes(data))
    # The other is replaced by the frame of an alarm with another summary.
    forged = seal_alarm(
        signing_keys["tokyo"], make_alarm(HOUR_16 + 2, summary="all fine")
    )
    key = "mesh/prod/" + alarm_key(replaced.alarm)
    client.put_object(Bucket=s3_bucket, Key=key, Body=forged.frame)

    results = await query_alarms(archive, keyring, since=HOUR_16, until=HOUR_16 + 60)

    assert [result.verified for result in results] == [False, False, True]
    assert results[0].error.startswith("bad_signature:")
    # Signed by a trusted member, but not the reporter it names.
    assert results[1].error.startswith("bad_signature:")
    assert results[1].alarm.summary == "all fine"


async def test_s3_published_keys_verify_alarms(archive, signing_keys):
    for name, key in signing_keys.items():
        await archive.put(
            public_key_key(name), encode_public_key(key.verify_key).encode()
        )
    alarm = make_alarm(HOUR_16 + 1, reporter="tokyo")
    await store(archive, signing_keys, alarm)

    keys = await load_published_keys(archive)
    [result] = await query_alarms(
        archive, Keyring(keys), since=HOUR_16, until=HOUR_16 + 60
    )

    assert sorted(keys) == sorted(REPORTERS)
    assert result.verified and result.alarm == alarm


# ---------------------------------------------------------------------- outbox


async def test_three_writers_archive_concurrently(
    s3_server, s3_bucket, keyring, signing_keys, tmp_path
):
    # Three agents, each with its own key, outbox and S3 client, write 20
    # alarms each into one bucket, interleaved in time.
    count = 20
    writers = {}
    for index, name in enumerate(REPORTERS):
        archive = open_s3(s3_server, s3_bucket)
        observer = Deliveries()
        outbox = make_outbox(tmp_path / name, archive, keyring, observer)
        alarms = [
            make_alarm(
                HOUR_16 + 3 * n + index,
                reporter=name,
                cluster=name,
                incident=f"check-failed/{name}@{n}",
            )
            for n in range(count)
        ]
        writers[name] = (archive, outbox, observer, alarms)
        await archive.put(
            public_key_key(name),
            encode_public_key(signing_keys[name].verify_key).encode(),
        )

    async with trio.open_nursery() as nursery:
        for name, (_, outbox, _, alarms) in writers.items():
            await nursery.start(outbox.run)
            outbox.enqueue_many(
                (
                    f"{alarm.incident}/firing",
                    "archive",
                    seal_alarm(signing_keys[name], alarm).frame,
                )
                for alarm in alarms
            )
        for name, (_, _, observer, _) in writers.items():
            await observer.wait_until(
                lambda o=observer: o.delivered_count == count, 60, f"{name}'s alarms"
            )
        nursery.cancel_scope.cancel()

    reader = open_s3(s3_server, s3_bucket)
    published = Keyring(await load_published_keys(reader))
    results = await query_alarms(reader, published, since=HOUR_16, until=HOUR_16 + 3600)

    assert len(results) == 3 * count
    assert all(result.verified for result in results)
    sent = [result.alarm.sent_at for result in results]
    assert sent == sorted(sent) == [HOUR_16 + n for n in range(3 * count)]
    assert [r.alarm.reporter for r in results[:3]] == list(REPORTERS)
    tokyo = await query_alarms(
        reader, published, since=HOUR_16, until=HOUR_16 + 3600, cluster="tokyo"
    )
    assert [r.alarm.reporter for r in tokyo] == ["tokyo"] * count
    for _, outbox, _, _ in writers.values():
        assert outbox.statistics().dead_lettered == 0


async def test_outbox_catches_up_after_s3_server_outage(
    aws_environment, keyring, signing_keys, tmp_path
):
    server = S3Server(tmp_path / "moto.log")
    server.start()
    try:
        bucket = server.create_bucket()
        archive = open_s3(server, bucket)
        clock = ShiftedClock()
        observer = Deliveries()
        outbox = make_outbox(tmp_path / "outbox", archive, keyring, observer, now=clock)

        def enqueue(offsets):
            for offset in offsets:
                alarm = make_alarm(
                    HOUR_16 + offset, incident=f"check-failed/api@{offset}"
                )
                signed = seal_alarm(signing_keys[alarm.reporter], alarm)
                assert outbox.enqueue(
                    f"{alarm.incident}/firing", "archive", signed.frame
                )

        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run)
            enqueue(range(5))
            await observer.wait_until(
                lambda: observer.delivered_count == 5, 30, "5 writes"
            )

            # The store goes away; alarms keep coming and wait in the outbox.
            server.stop()
            enqueue(range(100, 110))
            await observer.wait_until(
                lambda: len(observer.retry_errors) >= 2, 60, "retries during the outage"
            )
            # It stays down for six hours, well within the outbox's max_age.
            clock.offset += 6 * HOURS
            retries = len(observer.retry_errors)
            await observer.wait_until(
                lambda: len(observer.retry_errors) > retries, 60, "a retry 6 h later"
            )
            assert observer.delivered_count == 5
            assert outbox.statistics().pending == {"archive": 10}

            # The store comes back, empty as a restarted moto server is.
            server.start()
            server.create_bucket(bucket)
            await observer.wait_until(
                lambda: observer.delivered_count == 15, 60, "the catch-up"
            )
            nursery.cancel_scope.cancel()

        assert all("cannot write" in error for error in observer.retry_errors)
        assert all(
            "Could not connect" in e or "Connection" in e for e in observer.retry_errors
        )
        statistics = outbox.statistics()
        assert statistics.pending == {"archive": 0}
        assert statistics.dead_lettered == 0
        results = await query_alarms(
            archive, keyring, since=HOUR_16, until=HOUR_16 + 3600
        )
        assert [r.alarm.sent_at for r in results] == [
            HOUR_16 + n for n in range(100, 110)
        ]
        assert all(result.verified for result in results)
    finally:
        server.stop()


async def test_outbox_waits_for_missing_bucket(
    s3_server, aws_environment, keyring, signing_keys, tmp_path
):
    # The agent starts before its bucket exists, or the bucket is gone for a
    # while: writes are retried, never dropped.
    bucket = "alarms-late-bucket"
    archive = open_s3(s3_server, bucket)
    observer = Deliveries()
    outbox = make_outbox(tmp_path / "outbox", archive, keyring, observer)
    alarms = [make_alarm(HOUR_16 + n, incident=f"x@{n}") for n in range(3)]

    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run)
        for alarm in alarms:
            frame = seal_alarm(signing_keys[alarm.reporter], alarm).frame
            outbox.enqueue(alarm.incident, "archive", frame)
        await observer.wait_until(
            lambda: len(observer.retry_errors) >= 3, 30, "retries of a missing bucket"
        )
        s3_server.create_bucket(bucket)
        await observer.wait_until(lambda: observer.delivered_count == 3, 30, "delivery")
        nursery.cancel_scope.cancel()

    assert all("NoSuchBucket" in error for error in observer.retry_errors)
    results = await query_alarms(archive, keyring, since=HOUR_16, until=HOUR_16 + 60)
    assert [result.alarm for result in results] == alarms
    assert outbox.statistics().dead_lettered == 0


# ---------------------------------------------------------------------- real agents


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "mesh.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


async def test_agent_processes_archive_to_s3(tmp_path, s3_server, s3_bucket):
    names = ["seoul", "busan", "daegu"]
    mesh = AgentProcesses(tmp_path, names, sinks=[])
    url = f"s3://{s3_bucket}/mesh"
    for name in names:
        mesh.write_config(name, archive=url, archive_endpoint_url=s3_server.url)
    reader = open_s3(s3_server, s3_bucket, prefix="mesh")
    started = time.time()

    async def archived(**filters) -> list:
        results = await query_alarms(
            reader, mesh.keyring, since=started - 60, until=time.time() + 60, **filters
        )
        return results

    try:
        mesh.start_all()
        await mesh.wait_states(names, {n: "alive" for n in names})

        # Each agent publishes its key into the bucket.
        async def keys_published() -> bool:
            return sorted(await load_published_keys(reader)) == sorted(names)

        await mesh.wait_for(keys_published, 30, "3 published keys")

        mesh.kill("busan")

        async def firing_archived() -> bool:
            return len(await archived(status="firing")) == 1

        await mesh.wait_for(firing_archived, 30, "the firing alarm in S3")
        mesh.start("busan")

        async def resolved_archived() -> bool:
            return len(await archived(status="resolved")) == 1

        await mesh.wait_for(resolved_archived, 30, "the resolved alarm in S3")
    finally:
        mesh.stop_all()

    results = await archived()
    assert [r.alarm.status.value for r in results] == ["firing", "resolved"]
    assert all(r.verified for r in results)
    assert {r.alarm.subject for r in results} == {"member/busan"}
    assert results[0].alarm.reporter in ("seoul", "daegu")

    # The operator's view: the CLI reads the bucket and checks every signature
    # against the keys the agents published there.
    logs = run_cli(
        "logs",
        "--archive",
        url,
        "--endpoint-url",
        s3_server.url,
        "--since",
        "1h",
        "--json",
    )
    assert logs.returncode == 0, logs.stderr
    records = [json.loads(line) for line in logs.stdout.splitlines()]
    assert [r["alarm"]["status"] for r in records] == ["firing", "resolved"]
    assert all(r["verified"] for r in records)
    table = run_cli(
        "--log-level", "warning", "logs", "--config", str(mesh.config_path("seoul"))
    )
    assert table.returncode == 0, table.stderr
    assert table.stdout.count("VERIFIED") == 2
    assert "member/busan" in table.stdout


def test_documented_lifecycle_rule_is_accepted(s3_server, s3_bucket):
    # The retention rule of docs/archive.md, applied as an operator would.
    text = (Path(__file__).parent.parent / "docs" / "archive.md").read_text()
    block = text.split("**S3**: give the bucket a lifecycle rule", 1)[1]
    rules = json.loads(block.split("```json", 1)[1].split("```", 1)[0])
    client = s3_server.client()

    client.put_bucket_lifecycle_configuration(
        Bucket=s3_bucket, LifecycleConfiguration=rules
    )

    stored = client.get_bucket_lifecycle_configuration(Bucket=s3_bucket)["Rules"]
    assert [rule["Filter"]["Prefix"] for rule in stored] == [
        "mesh/eu/alarms/",
        "mesh/eu/dead-letters/",
    ]
    assert all(rule["Expiration"]["Days"] == 90 for rule in stored)


def test_documented_iam_policy_is_valid(s3_server, aws_environment):
    # The agent's policy of docs/archive.md passes moto's IAM policy checks.
    import boto3

    text = (Path(__file__).parent.parent / "docs" / "archive.md").read_text()
    block = text.split("The agent needs three permissions", 1)[1]
    policy = block.split("```json", 1)[1].split("```", 1)[0]
    iam = boto3.client("iam", endpoint_url=s3_server.url, region_name="us-east-1")

    created = iam.create_policy(PolicyName="alarminati-agent", PolicyDocument=policy)

    actions = {s["Action"] for s in json.loads(policy)["Statement"]}
    assert actions == {"s3:PutObject", "s3:GetObject", "s3:ListBucket"}
    assert created["Policy"]["PolicyName"] == "alarminati-agent"
