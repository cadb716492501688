"""Retention of the folder archive: LocalArchive.prune."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_archive import HOUR_16, make_alarm

from mesh.alarm import seal_alarm
from mesh.keys import Keyring, SigningKey
from storage import LocalArchive, alarm_key, query_alarms
from storage.archive import HOUR

DAY = 24 * HOUR


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


async def put_alarms(
    archive: LocalArchive, key: SigningKey, times: list[float]
) -> list[str]:
    keys = []
    for sent_at in times:
        alarm = make_alarm(sent_at)
        await archive.put(alarm_key(alarm), seal_alarm(key, alarm).frame)
        keys.append(alarm_key(alarm))
    return keys


def files_under(root: Path) -> list[str]:
    return sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()
    )


async def test_prune_removes_old_hours_and_keeps_the_rest(tmp_path, key):
    root = tmp_path / "archive"
    archive = LocalArchive(root)
    old = [HOUR_16 - 40 * DAY, HOUR_16 - 40 * DAY + 10, HOUR_16 - 31 * DAY]
    recent = [HOUR_16 - 29 * DAY, HOUR_16 + 5]
    old_keys = await put_alarms(archive, key, old)
    recent_keys = await put_alarms(archive, key, recent)
    await archive.put("keys/seoul.pub", b"key")
    old_size = sum((root / k).stat().st_size for k in old_keys)

    result = await archive.prune(HOUR_16 - 30 * DAY)

    assert result.objects == 3
    assert result.bytes == old_size
    assert result.hours == (
        old_keys[0].rsplit("/", 1)[0] + "/",
        old_keys[2].rsplit("/", 1)[0] + "/",
    )
    assert files_under(root) == sorted(recent_keys + ["keys/seoul.pub"])
    # The day, month and year folders left empty are gone too.
    assert sorted(p.name for p in (root / "alarms" / "2026").iterdir()) == ["11", "12"]
    assert not (root / "alarms" / "2026" / "10").exists()


async def test_prune_dry_run_counts_and_removes_nothing(tmp_path, key):
    root = tmp_path / "archive"
    archive = LocalArchive(root)
    keys = await put_alarms(archive, key, [HOUR_16 - 2 * DAY, HOUR_16 - 3 * DAY])
    size = sum((root / k).stat().st_size for k in keys)
    before = files_under(root)

    result = await archive.prune(HOUR_16, dry_run=True)

    assert (result.objects, result.bytes, len(result.hours)) == (2, size, 2)
    assert files_under(root) == before


async def test_prune_splits_the_hour_that_contains_the_cutoff(tmp_path, key):
    root = tmp_path / "archive"
    archive = LocalArchive(root)
    await put_alarms(archive, key, [HOUR_16 + 10, HOUR_16 + 20, HOUR_16 + 30])

    result = await archive.prune(HOUR_16 + 25)

    assert result.objects == 2
    assert result.hours == ()
    keyring = Keyring({"seoul": key.verify_key})
    results = await query_alarms(archive, keyring, since=HOUR_16, until=HOUR_16 + HOUR)
    assert [r.alarm.sent_at for r in results] == [HOUR_16 + 30]


async def test_prune_keeps_unknown_files_and_their_folders(tmp_path, key):
    root = tmp_path / "archive"
    archive = LocalArchive(root)
    [old] = await put_alarms(archive, key, [HOUR_16 - 5 * DAY])
    hour_folder = (root / old).parent
    (hour_folder / "README").write_text("kept")
    (hour_folder / ".x.alarm.1234.tmp").write_bytes(b"partial write")
    (root / "alarms" / "lost+found").mkdir()

    result = await archive.prune(HOUR_16)

    assert result.objects == 1
    assert result.hours == ()
    assert files_under(root) == [(hour_folder / "README").relative_to(root).as_posix()]
    assert (root / "alarms" / "lost+found").is_dir()


async def test_prune_of_missing_archive_removes_nothing(tmp_path):
    result = await LocalArchive(tmp_path / "missing").prune(HOUR_16)

    assert (result.objects, result.bytes, result.hours) == (0, 0, ())


async def test_prune_removes_old_dead_letters_too(tmp_path):
    root = tmp_path / "archive"
    archive = LocalArchive(root)
    old = "dead-letters/2026/11/01/10/20261101T100000.000Z_hook_expired_ab12.json"
    recent = "dead-letters/2026/12/04/15/20261204T150000.000Z_hook_expired_cd34.json"
    await archive.put(old, b"{}")
    await archive.put(recent, b"{}")

    result = await archive.prune(HOUR_16 - 10 * DAY)

    assert result.objects == 1
    assert result.hours == ("dead-letters/2026/11/01/10/",)
    assert files_under(root) == [recent]
