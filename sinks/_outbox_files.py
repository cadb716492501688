"""The files of the outbox: entry records, and writes that survive a crash.

An entry file is one msgpack map under ``pending/<seq>-<id>.entry``. The six
fields of the first version are always written; the routing fields (group,
fallbacks) only when they differ from their defaults, so that entries written
by an older agent still load, and a plain entry stays as small as before.

Every durable write goes to a temporary file whose name starts with a dot, is
fsynced, and is renamed over its target; loading removes dot files, which only
a crash can leave behind.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import dataclasses
import hashlib
import os
import re
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

from .retry import describe_error

__all__ = [
    "Entry",
    "PENDING_NAME",
    "entry_id",
    "parse_entry",
    "pack",
    "fsync_folder",
    "fsync_files",
    "temporary_path",
    "write_synced",
]

# Maximum threads that fsync the entry files of one enqueue_many call.
FSYNC_THREADS = 8

PENDING_NAME = re.compile(r"(\d{20})-([0-9a-f]{32})\.entry")

# Fields every entry file has, since the first version of the format.
REQUIRED_FIELDS = (
    "key",
    "destination",
    "frame",
    "created_at",
    "attempts",
    "last_error",
)
# Fields added later, with the value an entry has when its file lacks them.
OPTIONAL_FIELDS: dict[str, Any] = {
    "group": "",
    "group_window": 0.0,
    "fallbacks": (),
    "fallback_key": "",
    "fallback_after": 0.0,
    "failed_since": None,
}


@dataclasses.dataclass(slots=True, kw_only=True)
class Entry:
    """One delivery of one alarm to one destination, as kept on disk."""

    # Position in the enqueue order of all destinations.
    seq: int
    # Idempotency key, unique per destination.
    key: str
    destination: str
    # The signed alarm frame, exactly as sealed by the reporter.
    frame: bytes
    # Wall-clock enqueue time, Unix seconds.
    created_at: float
    # Attempts made so far, counted across restarts.
    attempts: int = 0
    # Text of the latest failure, or None before the first.
    last_error: str | None = None
    # Entries of one destination with the same non-empty group that were
    # enqueued within group_window seconds of the first go out in one message.
    group: str = ""
    group_window: float = 0.0
    # Destinations that get a copy, under fallback_key, once this entry's
    # destination has failed for fallback_after seconds.
    fallbacks: tuple[str, ...] = ()
    fallback_key: str = ""
    fallback_after: float = 0.0
    # Wall-clock time of this entry's first failed attempt, Unix seconds.
    failed_since: float | None = None

    @property
    def id(self) -> str:
        return entry_id(self.destination, self.key)

    @property
    def file_name(self) -> str:
        return f"{self.seq:020d}-{self.id}.entry"

    def to_record(self) -> dict[str, Any]:
        record = {field: getattr(self, field) for field in REQUIRED_FIELDS}
        for field, default in OPTIONAL_FIELDS.items():
            value = getattr(self, field)
            if value != default:
                record[field] = list(value) if isinstance(value, tuple) else value
        return record


def entry_id(destination: str, key: str) -> str:
    """Return the file-name id of the entry for ``key`` at ``destination``."""
    # msgpack of the pair keeps ("a", "bc") and ("ab", "c") apart.
    packed = msgpack.packb([destination, key], use_bin_type=True)
    return hashlib.sha256(packed).hexdigest()[:32]


def pack(record: Any) -> bytes:
    return msgpack.packb(record, use_bin_type=True)


def parse_entry(seq: int, raw: bytes) -> Entry:
    """Decode an entry file.

    Raises:
        ValueError: the bytes are not msgpack, or a field is missing or of the
            wrong type.
    """
    try:
        record = msgpack.unpackb(raw, raw=False)
    except (ValueError, TypeError) as exc:
        # msgpack raises ValueError subclasses, and TypeError for a map key
        # that Python cannot hash.
        raise ValueError(f"entry is not msgpack: {describe_error(exc)}") from None
    if not isinstance(record, dict):
        raise ValueError(f"entry is a {type(record).__name__}, expected a map")
    missing = [field for field in REQUIRED_FIELDS if field not in record]
    if missing:
        raise ValueError(f"entry lacks the fields {missing!r}")
    fields = {field: record[field] for field in REQUIRED_FIELDS}
    for field, default in OPTIONAL_FIELDS.items():
        fields[field] = record.get(field, default)
    if isinstance(fields["fallbacks"], list):
        fields["fallbacks"] = tuple(fields["fallbacks"])
    entry = Entry(seq=seq, **fields)
    if not _valid_types(entry):
        raise ValueError("entry has a field of the wrong type")
    return entry


def _valid_types(entry: Entry) -> bool:
    number = (int, float)
    return (
        isinstance(entry.key, str)
        and isinstance(entry.destination, str)
        and isinstance(entry.frame, bytes)
        and isinstance(entry.created_at, number)
        and isinstance(entry.attempts, int)
        and isinstance(entry.last_error, (str, type(None)))
        and isinstance(entry.group, str)
        and isinstance(entry.group_window, number)
        and isinstance(entry.fallbacks, tuple)
        and all(isinstance(name, str) for name in entry.fallbacks)
        and isinstance(entry.fallback_key, str)
        and isinstance(entry.fallback_after, number)
        and isinstance(entry.failed_since, (int, float, type(None)))
    )


def fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syncfs
    except (OSError, AttributeError):
        return None


# Linux's syncfs(2): flush one file system, in one journal commit.
_syncfs = _load_syncfs() if sys.platform.startswith("linux") else None


def fsync_files(paths: list[Path]) -> None:
    """Make the files durable: one syncfs for a batch, or an fsync each.

    A batch of files in one folder is flushed with one ``syncfs`` of their
    file system, where Linux has it: one journal commit instead of one per
    file. bench/bench_outbox.py measured enqueue_many of 100 entries at about
    2.1 times the rate of single enqueues that way, on ext4 on a 2-core VM
    (docs/benchmarks.md). The cost is that syncfs also writes out whatever
    else is dirty on that file system, so the data folder is best on a volume
    of its own. Elsewhere, the files are fsynced several at once, which lets the
    file system commit several files in one transaction.

    Raises:
        OSError: a flush failed. Linux reports writeback errors from syncfs
            since 5.8; older kernels may not.
    """
    if len(paths) == 1:
        _fsync_file(paths[0])
        return
    if _syncfs is not None:
        fd = os.open(paths[0].parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _syncfs(fd) != 0:
                error = ctypes.get_errno()
                raise OSError(error, os.strerror(error), str(paths[0].parent))
        finally:
            os.close(fd)
        return
    workers = min(FSYNC_THREADS, len(paths))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        # list() waits for every fsync and raises the first error.
        list(pool.map(_fsync_file, paths))


def temporary_path(path: Path) -> Path:
    # The leading dot keeps the name apart from entry names, so that loading
    # can recognise and remove temporary files that a crash left behind.
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def write_synced(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, and rename it.

    The rename is atomic, so readers see the old content or the new, never part.
    The caller fsyncs the folder when the new name itself must survive a crash.
    """
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
