"""The archive backend that keeps one file per object in a local folder.

A key maps to a path under the root folder, one folder per key segment. Writes go
to a temporary file in the target folder that is fsynced and then renamed over the
target, and the folder is fsynced after, so a crash leaves the old object or the
new one, never part of one. Temporary names start with a dot, which keys may not.

Every method runs its file I/O in a worker thread through
``trio.to_thread.run_sync``, so that a slow disk does not block the trio loop.
"""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path

import trio

from .errors import ArchiveError, ArchiveUnavailableError, ObjectNotFoundError

__all__ = ["LocalArchive"]

# errno values that mean "this key collides with a folder or a file of another
# key": retrying cannot help.
_CONFLICT_ERRNOS = {errno.ENOTDIR, errno.EISDIR, errno.EEXIST}


def _split_key(key: str, *, allow_partial: bool = False) -> list[str]:
    """Return the segments of ``key``.

    With ``allow_partial`` the last segment may be empty, as in the prefix
    ``"alarms/"``, and the empty key is allowed.

    Raises:
        ValueError: the key is absolute, or has an empty, ``.`` or ``..``
            segment, or one that starts with a dot, or contains a NUL.
    """
    if not isinstance(key, str):
        raise TypeError(f"key must be a string, got {type(key).__name__}")
    if "\0" in key or key.startswith("/"):
        raise ValueError(f"invalid key {key!r}")
    segments = key.split("/")
    for index, segment in enumerate(segments):
        # A prefix may end in the middle of a segment, or right after a "/".
        may_be_empty = allow_partial and index == len(segments) - 1
        if (not segment and not may_be_empty) or segment.startswith("."):
            raise ValueError(f"invalid key {key!r}, segment {segment!r} is not allowed")
    return segments


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
        path = self._root.joinpath(*_split_key(key))
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
        path = self._root.joinpath(*_split_key(key))
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

    async def list(self, prefix: str) -> list[str]:
        """Return the keys that start with ``prefix``, sorted.

        The prefix need not end at a ``/``: ``"alarms/2026/1"`` matches the
        months 10 to 12. A prefix whose folder does not exist returns [].

        Raises:
            ArchiveUnavailableError: a folder cannot be read.
            ValueError: the prefix is invalid.
        """
        segments = _split_key(prefix, allow_partial=True)
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
