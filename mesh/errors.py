"""Exceptions raised by the mesh.

    MeshError
    ├── ConfigError          the configuration file is invalid; names the key
    ├── KeyFileError         a key file is missing, unreadable or malformed
    └── RejectedMessage      an inbound frame failed a wire check; carries a Reason
"""

from __future__ import annotations

import enum

__all__ = ["MeshError", "ConfigError", "KeyFileError", "RejectedMessage", "Reason"]


class MeshError(Exception):
    """Base class of every error the mesh raises on purpose."""


class ConfigError(MeshError):
    """The configuration is invalid.

    The message names the key, the bad value and what is expected, so that it can
    be shown to the operator as it is.
    """


class KeyFileError(MeshError):
    """A key file or a trusted public key cannot be used."""


class Reason(enum.Enum):
    """Why an inbound frame was rejected; the value is the metrics label."""

    OVERSIZED = "oversized"
    MALFORMED = "malformed"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_SENDER = "unknown_sender"
    BAD_SIGNATURE = "bad_signature"
    OUTSIDE_REPLAY_WINDOW = "outside_replay_window"
    REPLAYED = "replayed"


class RejectedMessage(MeshError):
    """An inbound frame failed a wire check and was dropped."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
