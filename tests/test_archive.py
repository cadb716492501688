"""Tests of the archive: key layout, the folder backend, queries and their output."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from mesh.alarm import Alarm, Severity, SignedAlarm, Status, open_alarm, seal_alarm
from mesh.keys import Keyring, SigningKey, encode_public_key
from sinks.errors import SinkPermanentError, SinkRetryableError
from sinks.outbox import Outbox, OutboxObserver
from storage import (
    ArchiveDestination,
    ArchiveError,
    ArchiveUnavailableError,
    LocalArchive,
    ObjectNotFoundError,
    alarm_key,
    format_json_lines,
    format_table,
    hour_prefixes,
    load_published_keys,
    open_archive,
    parse_alarm_key,
    parse_since,
    public_key_key,
    query_alarms,
    slugify,
)


def utc(text: str) -> float:
    return datetime.datetime.fromisoformat(text).timestamp()


# 2026-12-04T16:00:00Z
HOUR_16 = utc("2026-12-04T16:00:00+00:00")
REPORTERS = ("seoul", "busan", "tokyo")


def make_alarm(sent_at: float, **fields) -> Alarm:
    values = dict(
        incident="member-down/busan@3",
        status=Status.FIRING,
        severity=Severity.CRITICAL,
        subject="member/busan",
        cluster="busan",
        reporter="seoul",
        observers=("seoul", "tokyo"),
        started_at=sent_at - 30,
        sent_at=sent_at,
        summary="busan stopped answering probes",
    )
    values.update(fields)
    return Alarm(**values)


@pytest.fixture
def signing_keys() -> dict[str, SigningKey]:
    return {name: SigningKey.generate() for name in REPORTERS}


@pytest.fixture
def keyring(signing_keys) -> Keyring:
    return Keyring({name: key.verify_key for name, key in signing_keys.items()})


@pytest.fixture
def archive(tmp_path: Path) -> LocalArchive:
    return LocalArchive(tmp_path / "archive")


class RecordingArchive:
    """Wraps an archive and records the prefixes listed."""

    def __init__(self, inner: LocalArchive) -> None:
        self.inner = inner
        self.listed: list[str] = []

    async def put(self, key: str, data: bytes) -> None:
        await self.inner.put(key, data)

    async def get(self, key: str) -> bytes:
        return await self.inner.get(key)

    async def list(self, prefix: str) -> list[str]:
        self.listed.append(prefix)
        return await self.inner.list(prefix)


class FailingArchive:
    """An archive whose writes raise the given exception."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def put(self, key: str, data: bytes) -> None:
        raise self.error

    async def get(self, key: str) -> bytes:
        raise ObjectNotFoundError(key)

    async def list(self, prefix: str) -> list[str]:
        return []


# ---------------------------------------------------------------------- keys


def test_alarm_key_layout():
    sent_at = utc("2026-12-04T16:43:53.379+00:00")

    key = alarm_key(make_alarm(sent_at))

    prefix = (
        "alarms/2026/12/04/16/20261204T164353.379Z_busan_seoul_member-down-busan-3-"
    )
    assert key.startswith(prefix)
    assert key.endswith("_firing.alarm")
    digest = key[len(prefix) :].removesuffix("_firing.alarm")
    assert len(digest) == 8
    assert int(digest, 16) >= 0


def test_alarm_key_parses_back():
    sent_at = utc("2026-12-04T16:43:53.379+00:00")
    alarm = make_alarm(sent_at, status=Status.RESOLVED, reporter="tokyo")

    fields = parse_alarm_key(alarm_key(alarm))

    assert fields is not None
    assert fields.sent_at == pytest.approx(sent_at, abs=1e-6)
    assert fields.cluster == "busan"
    assert fields.reporter == "tokyo"
    assert fields.incident == slugify("member-down/busan@3")
    assert fields.status == "resolved"
    assert parse_alarm_key("keys/seoul.pub") is None


@given(
    st.integers(min_value=0, max_value=4_000_000_000_000),
    st.integers(min_value=1, max_value=400 * 86_400_000),
)
def test_alarm_keys_sort_in_time_order(first_ms: int, gap_ms: int):
    earlier = make_alarm(first_ms / 1000)
    later = make_alarm((first_ms + gap_ms) / 1000)

    assert alarm_key(earlier) < alarm_key(later)


@given(st.integers(min_value=0, max_value=4_000_000_000_000))
def test_alarm_key_is_under_its_hour_prefix(sent_ms: int):
    sent_at = sent_ms / 1000

    key = alarm_key(make_alarm(sent_at))

    [prefix] = hour_prefixes(sent_at, sent_at + 0.0005)
    assert key.startswith(prefix)


def test_alarm_key_same_for_same_alarm_distinct_otherwise():
    alarm = make_alarm(HOUR_16 + 1)
    variants = [
        make_alarm(HOUR_16 + 1, incident="member-down/busan@3"),
        make_alarm(HOUR_16 + 1, incident="member-down@busan/3"),
        make_alarm(HOUR_16 + 1, incident="member-down_busan_3"),
        make_alarm(HOUR_16 + 1, status=Status.RESOLVED),
        make_alarm(HOUR_16 + 1, reporter="tokyo"),
        make_alarm(HOUR_16 + 1, cluster="seoul"),
    ]

    keys = [alarm_key(variant) for variant in variants]

    assert alarm_key(alarm) == keys[0]
    assert len(set(keys)) == len(keys)


def test_slugify_keeps_safe_names_and_hashes_others():
    assert slugify("busan-1.prod") == "busan-1.prod"
    assert slugify("a/b") != slugify("a@b")
    assert slugify("a/b").startswith("a-b-")
    assert slugify("日本") == slugify("日本")
    assert len(slugify("日本")) == 8
    long_name = "x" * 200
    assert len(slugify(long_name)) == 64 + 1 + 8
    for name in ("a/b", "a_b", "日本", long_name, "../..", ""):
        slug = slugify(name)
        assert all(char.isalnum() or char in ".-" for char in slug), slug


def test_hour_prefixes_cover_only_hours_in_range():
    since = HOUR_16 - 1800  # 15:30
    until = HOUR_16 + 3600 + 1  # 17:00:01

    assert hour_prefixes(since, until) == [
        "alarms/2026/12/04/15/",
        "alarms/2026/12/04/16/",
        "alarms/2026/12/04/17/",
    ]
    # The end is excluded, so an end on the hour adds no hour.
    assert hour_prefixes(HOUR_16, HOUR_16 + 3600) == ["alarms/2026/12/04/16/"]
    assert hour_prefixes(HOUR_16, HOUR_16) == []
    assert hour_prefixes(HOUR_16 + 10, HOUR_16 + 5) == []
    new_year = utc("2027-01-01T00:00:00+00:00")
    assert hour_prefixes(new_year - 1, new_year + 1) == [
        "alarms/2026/12/31/23/",
        "alarms/2027/01/01/00/",
    ]


def test_hour_prefixes_reject_infinite_bounds():
    with pytest.raises(ValueError, match="invalid until inf"):
        hour_prefixes(HOUR_16, float("inf"))


def test_public_key_key():
    assert public_key_key("seoul") == "keys/seoul.pub"
    with pytest.raises(ValueError, match="invalid member name '../seoul'"):
        public_key_key("../seoul")


# ---------------------------------------------------------------------- local folder


async def test_local_archive_put_get_list(archive, tmp_path):
    await archive.put("alarms/2026/12/04/16/b.alarm", b"second")
    await archive.put("alarms/2026/12/04/16/a.alarm", b"first")
    await archive.put("alarms/2026/12/04/17/c.alarm", b"third")
    await archive.put("keys/seoul.pub", b"key")

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
    assert await LocalArchive(tmp_path / "missing").list("alarms/") == []


async def test_local_archive_put_replaces_atomically(archive, tmp_path):
    await archive.put("keys/seoul.pub", b"old")
    await archive.put("keys/seoul.pub", b"new")

    assert await archive.get("keys/seoul.pub") == b"new"
    # No temporary file is left beside the object.
    assert [path.name for path in (tmp_path / "archive" / "keys").iterdir()] == [
        "seoul.pub"
    ]


async def test_local_archive_get_missing_raises(archive):
    with pytest.raises(ObjectNotFoundError, match="no object 'keys/nobody.pub'"):
        await archive.get("keys/nobody.pub")


@pytest.mark.parametrize(
    "key",
    ["/etc/passwd", "../outside", "alarms//x", "alarms/../x", ".hidden", "a/", ""],
)
async def test_local_archive_rejects_invalid_keys(archive, key):
    with pytest.raises(ValueError, match="invalid key"):
        await archive.put(key, b"data")


async def test_local_archive_conflicting_key_is_permanent(archive):
    await archive.put("alarms/x", b"file")

    with pytest.raises(ArchiveError) as caught:
        await archive.put("alarms/x/y", b"below a file")

    assert not isinstance(caught.value, ArchiveUnavailableError)


# ---------------------------------------------------------------------- destination


async def test_archive_destination_stores_frame_under_alarm_key(archive, signing_keys):
    signed = seal_alarm(signing_keys["seoul"], make_alarm(HOUR_16 + 5))
    destination = ArchiveDestination(archive)

    answer = await destination.deliver(signed, "incident/firing")

    key = alarm_key(signed.alarm)
    assert answer == f"stored {key}"
    assert await archive.get(key) == signed.frame
    assert destination.name == "archive"


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ArchiveUnavailableError("disk full"), SinkRetryableError),
        (OSError(5, "Input/output error"), SinkRetryableError),
        (ArchiveError("key conflicts"), SinkPermanentError),
    ],
)
async def test_archive_destination_classifies_errors(signing_keys, error, expected):
    signed = seal_alarm(signing_keys["seoul"], make_alarm(HOUR_16 + 5))
    destination = ArchiveDestination(FailingArchive(error))

    with pytest.raises(expected) as caught:
        await destination.deliver(signed, "incident/firing")

    assert caught.value.__cause__ is error


async def test_outbox_delivers_alarm_into_local_archive(
    archive, keyring, signing_keys, tmp_path
):
    class DeliveredEvent(OutboxObserver):
        def __init__(self) -> None:
            self.event = trio.Event()

        def delivered(
            self, destination: str, attempts: int, seconds_since_enqueue: float
        ) -> None:
            self.event.set()

    alarm = make_alarm(HOUR_16 + 5, reporter="busan")
    signed = seal_alarm(signing_keys["busan"], alarm)
    observer = DeliveredEvent()
    outbox = Outbox(
        tmp_path / "outbox",
        {"archive": ArchiveDestination(archive)},
        decode=lambda frame: open_alarm(frame, keyring),
        observer=observer,
    )
    outbox.enqueue("incident/firing", "archive", signed.frame)

    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run)
        with trio.fail_after(10):
            await observer.event.wait()
        nursery.cancel_scope.cancel()

    [result] = await query_alarms(archive, keyring, since=HOUR_16, until=HOUR_16 + 60)
    assert result.verified is True
    assert result.alarm == signed.alarm


def test_open_archive_selects_backend(tmp_path):
    assert isinstance(open_archive(str(tmp_path)), LocalArchive)
    assert open_archive(f"file://{tmp_path}").root == tmp_path
    with pytest.raises(ArchiveError, match="unsupported archive scheme 'gs'"):
        open_archive("gs://bucket")
    with pytest.raises(ArchiveError, match="archive location is empty"):
        open_archive(" ")
    with pytest.raises(ArchiveError, match="applies only to s3:// archives"):
        open_archive(str(tmp_path), endpoint_url="http://127.0.0.1:9000")


def test_open_archive_does_not_import_boto3(tmp_path):
    code = (
        "import sys, storage; storage.open_archive(sys.argv[1]); "
        "assert 'boto3' not in sys.modules, 'boto3 was imported'"
    )
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, cwd=root)


# ---------------------------------------------------------------------- queries


async def store(archive, signing_keys, alarm: Alarm) -> SignedAlarm:
    signed = seal_alarm(signing_keys[alarm.reporter], alarm)
    await ArchiveDestination(archive).deliver(signed, "unused")
    return signed


async def test_query_returns_range_in_time_order(archive, keyring, signing_keys):
    # Alarms of three reporters from 14:50 to 18:10, stored out of order.
    offsets = [-4200, 5, 1799, 1800, 3599, 3600, 7199, 7200, 7800]
    stored = []
    for index, offset in enumerate(reversed(offsets)):
        alarm = make_alarm(
            HOUR_16 + offset,
            reporter=REPORTERS[index % 3],
            incident=f"check-failed/api@{index}",
        )
        stored.append(await store(archive, signing_keys, alarm))
    recording = RecordingArchive(archive)
    since, until = HOUR_16, HOUR_16 + 7200

    results = await query_alarms(recording, keyring, since=since, until=until)

    sent = [result.alarm.sent_at for result in results]
    assert sent == [HOUR_16 + offset for offset in [5, 1799, 1800, 3599, 3600, 7199]]
    assert {result.alarm.reporter for result in results} == set(REPORTERS)
    assert all(result.verified for result in results)
    assert all(result.error is None for result in results)
    assert sorted(recording.listed) == [
        "alarms/2026/12/04/16/",
        "alarms/2026/12/04/17/",
    ]


async def test_query_range_excludes_end_within_same_millisecond(
    archive, keyring, signing_keys
):
    # The keys read 16:00:59.999 and 16:01:00.000, both within the margin that
    # the query allows for millisecond keys, so only the alarm times decide.
    await store(archive, signing_keys, make_alarm(HOUR_16 + 59.9995))
    await store(archive, signing_keys, make_alarm(HOUR_16 + 60.0005))

    results = await query_alarms(archive, keyring, since=HOUR_16, until=HOUR_16 + 60)

    assert [result.alarm.sent_at for result in results] == [HOUR_16 + 59.9995]


async def test_query_filters_by_cluster_subject_and_status(
    archive, keyring, signing_keys
):
    await store(archive, signing_keys, make_alarm(HOUR_16 + 1))
    await store(archive, signing_keys, make_alarm(HOUR_16 + 2, cluster="tokyo"))
    await store(archive, signing_keys, make_alarm(HOUR_16 + 3, subject="node/n1"))
    await store(archive, signing_keys, make_alarm(HOUR_16 + 4, status=Status.RESOLVED))
    window = dict(since=HOUR_16, until=HOUR_16 + 60)

    by_cluster = await query_alarms(archive, keyring, cluster="tokyo", **window)
    by_subject = await query_alarms(archive, keyring, subject="node/n1", **window)
    by_status = await query_alarms(archive, keyring, status="resolved", **window)
    everything = await query_alarms(archive, keyring, **window)

    assert [r.alarm.sent_at for r in by_cluster] == [HOUR_16 + 2]
    assert [r.alarm.sent_at for r in by_subject] == [HOUR_16 + 3]
    assert [r.alarm.sent_at for r in by_status] == [HOUR_16 + 4]
    assert len(everything) == 4
    with pytest.raises(ValueError, match="'paused'"):
        await query_alarms(archive, keyring, status="paused", **window)


async def test_query_flags_tampered_objects(archive, keyring, signing_keys, tmp_path):
    flipped = await store(archive, signing_keys, make_alarm(HOUR_16 + 1))
    resigned = await store(archive, signing_keys, make_alarm(HOUR_16 + 2))
    await store(archive, signing_keys, make_alarm(HOUR_16 + 3))
    # One object has a flipped byte in its last bytes.
    path = tmp_path / "archive" / alarm_key(flipped.alarm)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))
    # The other carries a signature by another member's key.
    forged_signature = signing_keys["tokyo"].sign(resigned.frame[64:]).signature
    path = tmp_path / "archive" / alarm_key(resigned.alarm)
    path.write_bytes(forged_signature + resigned.frame[64:])

    results = await query_alarms(archive, keyring, since=HOUR_16, until=HOUR_16 + 60)

    assert [result.verified for result in results] == [False, False, True]
    assert results[0].error.startswith("bad_signature:")
    assert results[1].error.startswith("bad_signature:")
    # The forged one decodes, but only as an unverified claim.
    assert results[1].alarm == resigned.alarm
    table = format_table(results)
    assert table.count("FAILED: bad_signature") == 2
    assert table.count("VERIFIED") == 1


async def test_query_flags_unknown_signer(archive, keyring, signing_keys):
    stranger = SigningKey.generate()
    alarm = make_alarm(HOUR_16 + 1, reporter="mallory")
    signed = seal_alarm(stranger, alarm)
    await archive.put(alarm_key(alarm), signed.frame)

    [result] = await query_alarms(archive, keyring, since=HOUR_16, until=HOUR_16 + 60)

    assert result.verified is False
    assert result.error == "unknown_sender: sender 'mallory' is not trusted"
    assert result.alarm == alarm


async def test_query_flags_alarm_copied_to_other_key(archive, keyring, signing_keys):
    signed = await store(archive, signing_keys, make_alarm(HOUR_16 + 1))
    moved = alarm_key(make_alarm(HOUR_16 + 9, incident="other/incident"))
    await archive.put(moved, signed.frame)

    results = await query_alarms(archive, keyring, since=HOUR_16, until=HOUR_16 + 60)

    assert [result.verified for result in results] == [True, False]
    assert results[1].key == moved
    assert "stored under the wrong key" in results[1].error


async def test_query_keeps_undecodable_object(archive, keyring):
    key = alarm_key(make_alarm(HOUR_16 + 7))
    await archive.put(key, b"\x00" * 80)

    [result] = await query_alarms(archive, keyring, since=HOUR_16, until=HOUR_16 + 60)

    assert result.key == key
    assert result.alarm is None
    assert result.verified is False
    assert result.error.startswith("malformed:")
    assert key in format_table([result])
    assert json.loads(format_json_lines([result]))["alarm"] is None


async def test_load_published_keys(archive, signing_keys):
    for name, key in signing_keys.items():
        published = encode_public_key(key.verify_key).encode()
        await archive.put(public_key_key(name), published)
    await archive.put("keys/broken.pub", b"not base64!")
    await archive.put("keys/readme.txt", b"ignored")

    keys = await load_published_keys(archive)

    assert sorted(keys) == sorted(REPORTERS)
    for name, key in signing_keys.items():
        assert bytes(keys[name]) == bytes(key.verify_key)


# ---------------------------------------------------------------------- output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", 1000.0 - 90),
        ("30m", 1000.0 - 1800),
        ("1h", 1000.0 - 3600),
        ("2d", 1000.0 - 172_800),
        ("1h30m", 1000.0 - 5400),
        (" 1.5h ", 1000.0 - 5400),
        ("2026-12-04T16:43:53Z", utc("2026-12-04T16:43:53+00:00")),
        ("2026-12-04t16:43:53.5z", utc("2026-12-04T16:43:53.5+00:00")),
        ("2026-12-04T18:43:53+02:00", utc("2026-12-04T16:43:53+00:00")),
    ],
)
def test_parse_since_accepts(text, expected):
    assert parse_since(text, now=1000.0) == expected


@pytest.mark.parametrize("text", ["", "1x", "h", "yesterday", "-1h", "1h 30m"])
def test_parse_since_rejects_garbage(text):
    with pytest.raises(ValueError, match="expected a duration such as 90s"):
        parse_since(text, now=1000.0)


def test_parse_since_rejects_timestamp_without_offset():
    with pytest.raises(ValueError, match="has no UTC offset"):
        parse_since("2026-12-04T16:43:53", now=1000.0)


async def test_format_table_columns_and_marks(archive, keyring, signing_keys):
    long_summary = "probe failed\x1b[31m " + "x" * 100
    await store(archive, signing_keys, make_alarm(HOUR_16 + 1, summary=long_summary))
    await store(archive, signing_keys, make_alarm(HOUR_16 + 2, reporter="busan"))
    results = await query_alarms(archive, keyring, since=HOUR_16, until=HOUR_16 + 60)

    lines = format_table(results).splitlines()

    assert lines[0].split() == [
        "TIME",
        "SENT",
        "STATUS",
        "CLUSTER",
        "SEVERITY",
        "SUBJECT",
        "REPORTER",
        "INCIDENT",
        "SUMMARY",
        "SIGNATURE",
    ]
    assert lines[1].startswith("2026-12-04T16:00:01.000Z  firing  busan")
    assert "member-down/busan@3" in lines[1]
    assert lines[1].endswith("VERIFIED")
    assert "\x1b" not in lines[1]
    # Columns line up: the summary starts at the same offset on each line.
    summary_column = lines[0].index("SUMMARY")
    summary = lines[1][summary_column:].split("  ")[0]
    assert summary.startswith("probe failed [31m xxx")
    assert summary.endswith("x...")
    assert len(summary) == 60
    assert lines[2][summary_column:].startswith("busan stopped")


async def test_format_json_lines(archive, keyring, signing_keys):
    signed = await store(archive, signing_keys, make_alarm(HOUR_16 + 1))
    results = await query_alarms(archive, keyring, since=HOUR_16, until=HOUR_16 + 60)

    [line] = format_json_lines(results).splitlines()
    record = json.loads(line)

    assert record["key"] == alarm_key(signed.alarm)
    assert record["verified"] is True
    assert record["error"] is None
    assert record["alarm"]["incident"] == "member-down/busan@3"
    assert record["alarm"]["sent_time"] == "2026-12-04T16:00:01.000Z"


async def test_local_archive_get_many_marks_missing_objects(archive):
    await archive.put("keys/seoul.pub", b"seoul")
    await archive.put("keys/tokyo.pub", b"tokyo")

    found = await archive.get_many(
        ["keys/tokyo.pub", "keys/nobody.pub", "keys/seoul.pub"]
    )

    assert found == [b"tokyo", None, b"seoul"]


class UnlistableArchive(RecordingArchive):
    """Lists every hour but one."""

    async def list(self, prefix: str) -> list[str]:
        if prefix == "alarms/2026/12/04/17/":
            raise ArchiveUnavailableError("listing refused")
        return await super().list(prefix)


async def test_query_fails_as_unavailable_when_an_hour_cannot_be_listed(
    archive, keyring, signing_keys
):
    await store(archive, signing_keys, make_alarm(HOUR_16 + 5))

    with pytest.raises(ArchiveUnavailableError, match="listing refused"):
        await query_alarms(
            UnlistableArchive(archive), keyring, since=HOUR_16, until=HOUR_16 + 7200
        )
