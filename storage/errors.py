"""Exceptions raised by the archive.

    ArchiveError
    ├── ArchiveUnavailableError   the archive cannot be reached or written now;
    │                             a retry may succeed
    └── ObjectNotFoundError       no object is stored under the key

A plain ``ArchiveError`` means that retrying the same request cannot help: the
location is not supported, or a key conflicts with an existing object.
"""

from __future__ import annotations

__all__ = ["ArchiveError", "ArchiveUnavailableError", "ObjectNotFoundError"]


class ArchiveError(Exception):
    """Base class of every error the archive raises on purpose."""


class ArchiveUnavailableError(ArchiveError):
    """The archive cannot be read or written now, and a later retry may succeed.

    Raised for a full disk, missing permissions, an I/O error or, with object
    storage, a network failure.
    """


class ObjectNotFoundError(ArchiveError):
    """No object is stored under the requested key."""
