"""The archive backend that keeps one file per object in a local folder.

A key maps to a path under the root folder, one folder per key segment. Writes go
to a temporary file in the target folder that is fsynced and then renamed over the
target, and the folder is fsynced after, so a crash leaves the old object or the
new one, never part of one. Temporary names start with a dot, which keys may not.

Every method runs its file I/O in a worker thread through
``trio.to_thread.run_sync``, so that a slow disk does not block the trio loop.

Retention: :meth:`LocalArchive.prune` removes the alarms sent before a time,
and the dead letters the outbox copied here, whole hour folders at once
(``alarminati archive prune --older-than 90d``). Object storage uses a
lifecycle rule instead, see docs/archive.md.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import os
import re
import secrets
from pathlib import Path

import trio

from .archive import ALARMS_PREFIX, HOUR, split_key
from .errors import ArchiveError, ArchiveUnavailableError, ObjectNotFoundError

__all__ = ["LocalArchive", "PruneResult"]

# Hour-partitioned prefixes that prune removes from: the alarms, and the dead
# letters that the outbox copies to the archive (sinks/deadletters.py), whose
# keys follow the same layout.
PRUNED_PREFIXES = (ALARMS_PREFIX, "dead-letters/")

# An object name that starts with its time, as alarm_key writes it.
_STAMPED_NAME = re.compile(r"(\d{8}T\d{6}\.\d{3}Z)_.+")

# errno values that mean "this key collides with a folder or a file of another
# key": retrying cannot help.
_CONFLICT_ERRNOS = {errno.ENOTDIR, errno.EISDIR, errno.EEXIST}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PruneResult:
    """What :meth:`LocalArchive.prune` removed, or would remove on a dry run."""

    # Objects removed (alarms and dead letters), and their total size in bytes.
    objects: int
    bytes: int
    # Hour folders removed whole, as key prefixes, oldest first.
    hours: tuple[str, ...]


def _hour_start(year: str, month: str, day: str, hour: str) -> float | None:
    """Return the start of an hour folder's hour, or None for another name."""
    digits = (year, month, day, hour)
    if [len(part) for part in digits] != [4, 2, 2, 2] or not all(
        part.isdigit() for part in digits
    ):
        return None
    try:
        moment = datetime.datetime(
            int(year), int(month), int(day), int(hour), tzinfo=datetime.timezone.utc
        )
    except ValueError:
        return None
    return moment.timestamp()


def _stamp_time(name: str) -> float | None:
    """Return the time an object name starts with, or None for another name."""
    match = _STAMPED_NAME.fullmatch(name)
    if match is None:
        return None
    try:
        moment = datetime.datetime.strptime(match[1], "%Y%m%dT%H%M%S.%fZ")
    except ValueError:
        return None
    return moment.replace(tzinfo=datetime.timezone.utc).timestamp()


def _sorted_folders(folder: Path) -> list[Path]:
    try:
        return sorted(path for path in folder.iterdir() if path.is_dir())
    except FileNotFoundError:
        return []


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalArchive:
    """An :class:`~storage.archive.Archive` in a local folder.

    Args:
        root: the folder; created, with its parents, by the first write.
    """

    def __init__(self, root: Path) -> None:
        # Folder that contains one file per object, read and written by worker
        # threads; never changed after construction.
        self._root = Path(root)

    def __repr__(self) -> str:
        return f"LocalArchive({str(self._root)!r})"

    @property
    def root(self) -> Path:
        return self._root

    async def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically and durably.

        Raises:
            ArchiveUnavailableError: the write failed, for example on a full disk.
            ArchiveError: a folder or file of another key is in the way.
            ValueError: the key is invalid.
            TypeError: ``data`` is not bytes.
        """
        path = self._root.joinpath(*split_key(key))
        if not isinstance(data, bytes):
            raise TypeError(f"data must be bytes, got {type(data).__name__}")
        await trio.to_thread.run_sync(self._put_sync, key, path, data)

    def _put_sync(self, key: str, path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_folder(path.parent)
        except OSError as exc:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass  # The original error is the one to report.
            if exc.errno in _CONFLICT_ERRNOS:
                raise ArchiveError(
                    f"cannot write {key!r}: a file or folder of another key is in "
                    f"the way in {str(self._root)!r}"
                ) from exc
            raise ArchiveUnavailableError(
                f"cannot write {key!r} to {str(self._root)!r}: {exc.strerror}"
            ) from exc

    async def get(self, key: str) -> bytes:
        """Return the object stored under ``key``.

        Raises:
            ObjectNotFoundError: no object is stored under ``key``.
            ArchiveUnavailableError: the file cannot be read.
            ValueError: the key is invalid.
        """
        path = self._root.joinpath(*split_key(key))
        return await trio.to_thread.run_sync(self._get_sync, key, path)

    def _get_sync(self, key: str, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(
                f"no object {key!r} in {str(self._root)!r}"
            ) from None
        except OSError as exc:
            raise ArchiveUnavailableError(
                f"cannot read {key!r} from {str(self._root)!r}: {exc.strerror}"
            ) from exc

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        """Return the objects stored under ``keys``, None for each missing one.

        Reads them all in one worker thread, which saves a thread hand-off per
        object when a query reads an hour of alarms.

        Raises:
            ArchiveUnavailableError: a file cannot be read.
            ValueError: a key is invalid.
        """
        paths = [(key, self._root.joinpath(*split_key(key))) for key in keys]
        return await trio.to_thread.run_sync(self._get_many_sync, paths)

    def _get_many_sync(self, paths: list[tuple[str, Path]]) -> list[bytes | None]:
        found: list[bytes | None] = []
        for key, path in paths:
            try:
                found.append(self._get_sync(key, path))
            except ObjectNotFoundError:
                found.append(None)
        return found

    async def list(self, prefix: str) -> list[str]:
        """Return the keys that start with ``prefix``, sorted.

        The prefix need not end at a ``/``: ``"alarms/2026/1"`` matches the
        months 10 to 12. A prefix whose folder does not exist returns [].

        Raises:
            ArchiveUnavailableError: a folder cannot be read.
            ValueError: the prefix is invalid.
        """
        segments = split_key(prefix, allow_partial=True)
        folder = self._root.joinpath(*segments[:-1])
        return await trio.to_thread.run_sync(self._list_sync, prefix, folder)

    def _list_sync(self, prefix: str, folder: Path) -> list[str]:
        if not folder.is_dir():
            return []
        keys = []
        errors: list[OSError] = []
        for dirpath, dirnames, filenames in os.walk(folder, onerror=errors.append):
            # Skip folders of temporary files, and names no key can have.
            dirnames[:] = [name for name in dirnames if not name.startswith(".")]
            relative = Path(dirpath).relative_to(self._root).as_posix()
            base = "" if relative == "." else relative + "/"
            for name in filenames:
                key = base + name
                if not name.startswith(".") and key.startswith(prefix):
                    keys.append(key)
        if errors:
            raise ArchiveUnavailableError(
                f"cannot list {prefix!r} in {str(self._root)!r}: {errors[0]}"
            ) from errors[0]
        keys.sort()
        return keys

    async def prune(self, before: float, *, dry_run: bool = False) -> PruneResult:
        """Remove the alarms and dead letters from before ``before``.

        Hour folders under ``alarms/`` and ``dead-letters/`` that end before
        ``before`` are emptied of their objects and removed, and so are the
        day, month and year folders left empty. In the hour that contains
        ``before``, only the objects whose names give an earlier time are
        removed. Published public keys, and files whose names do not start
        with a time, stay.

        Args:
            before: Unix seconds; alarms sent earlier are removed.
            dry_run: count what would be removed, and remove nothing.

        Returns:
            The objects removed, their size and the hour folders removed.

        Raises:
            ArchiveUnavailableError: a folder cannot be read or a file removed.
        """
        return await trio.to_thread.run_sync(self._prune_sync, before, dry_run)

    def _prune_sync(self, before: float, dry_run: bool) -> PruneResult:
        objects, size, hours = 0, 0, []
        try:
            for prefix in PRUNED_PREFIXES:
                top = self._root / prefix.rstrip("/")
                for hour, names in _hour_folders(top):
                    start = _hour_start(*names)
                    if start is None or start >= before:
                        continue
                    removed, removed_bytes, emptied = self._prune_hour(
                        hour, before, dry_run
                    )
                    objects += removed
                    size += removed_bytes
                    if start + HOUR <= before and emptied:
                        hours.append(prefix + "/".join(names) + "/")
                    if emptied and not dry_run:
                        _remove_empty_folders(hour, stop=top)
        except OSError as exc:
            raise ArchiveUnavailableError(
                f"cannot prune {str(self._root)!r}: {exc}"
            ) from exc
        return PruneResult(objects=objects, bytes=size, hours=tuple(hours))

    def _prune_hour(
        self, folder: Path, before: float, dry_run: bool
    ) -> tuple[int, int, bool]:
        """Remove the objects of one hour folder from before ``before``.

        Returns the number and size of the objects removed, and whether
        nothing is left in the folder.
        """
        removed, removed_bytes, kept = 0, 0, 0
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") and path.name.endswith(".tmp"):
                # An interrupted write's temporary file; never an object.
                if not dry_run:
                    path.unlink(missing_ok=True)
                continue
            stamp = _stamp_time(path.name)
            if stamp is None or stamp >= before or not path.is_file():
                kept += 1
                continue
            removed_bytes += path.stat().st_size
            removed += 1
            if not dry_run:
                path.unlink(missing_ok=True)
        return removed, removed_bytes, kept == 0


def _hour_folders(top: Path):
    """Yield each ``YYYY/MM/DD/HH`` folder under ``top`` and its four names."""
    for year in _sorted_folders(top):
        for month in _sorted_folders(year):
            for day in _sorted_folders(month):
                for hour in _sorted_folders(day):
                    yield hour, (year.name, month.name, day.name, hour.name)


def _remove_empty_folders(folder: Path, *, stop: Path) -> None:
    """Remove ``folder`` and its parents below ``stop`` while they are empty."""
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                return  # A writer added an object, or another prune removed it.
            raise
        _fsync_folder(folder.parent)
        folder = folder.parent
