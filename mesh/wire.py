"""The signed frame that carries every message between agents, and every alarm.

A frame is the sender's 64-byte Ed25519 signature followed by the signed bytes,
which are a msgpack array::

    [version, sender, sent_at, flags, payload]

``version`` is ``"v1alpha1"``; ``sender`` is the member name whose key signed it;
``sent_at`` is the sender's wall clock in Unix seconds; bit 0 of ``flags`` says the
payload is zlib-compressed, which happens only when that makes it smaller; and
``payload`` is the msgpack encoding of the message itself.

Checks on an inbound frame run cheapest first, so that junk costs little: size,
framing, version, sender, signature, replay window, then duplicate signatures
inside the window. Every failure raises :class:`~mesh.errors.RejectedMessage` with
a :class:`~mesh.errors.Reason`, which the runtime counts.
"""

from __future__ import annotations

import collections
import zlib
from typing import Any

import msgpack

from .errors import Reason, RejectedMessage
from .keys import Keyring, SigningKey

__all__ = [
    "VERSION",
    "MAX_FRAME_BYTES",
    "MAX_PAYLOAD_BYTES",
    "Frame",
    "ReplayGuard",
    "seal",
    "open_frame",
]

VERSION = "v1alpha1"

SIGNATURE_BYTES = 64

# A SWIM message with a full piggyback is a few hundred bytes and a push-pull of
# 1,000 members about 60 KiB; anything larger than this is rejected unread.
MAX_FRAME_BYTES = 256 * 1024

# Limit for the decompressed payload, so that a small compressed frame cannot
# expand into a memory bomb.
MAX_PAYLOAD_BYTES = 1024 * 1024

# Payloads shorter than this are sent as they are: zlib's header and checksum
# make them longer, not shorter.
COMPRESS_MIN_BYTES = 128

FLAG_ZLIB = 0x01


class Frame:
    """An opened frame: who signed it, when, and the decoded payload."""

    __slots__ = ("sender", "sent_at", "payload", "size")

    def __init__(self, sender: str, sent_at: float, payload: Any, size: int) -> None:
        self.sender = sender
        self.sent_at = sent_at
        self.payload = payload
        self.size = size


def seal(key: SigningKey, sender: str, payload: Any, now: float) -> bytes:
    """Encode, maybe compress, and sign ``payload`` as a frame from ``sender``.

    Args:
        key: the sender's private key.
        sender: the sender's member name, as the receivers' keyrings know it.
        payload: any msgpack-serialisable value.
        now: the sender's wall clock, Unix seconds.
    """
    body = msgpack.packb(payload, use_bin_type=True)
    flags = 0
    if len(body) >= COMPRESS_MIN_BYTES:
        packed = zlib.compress(body, 6)
        if len(packed) < len(body):
            body, flags = packed, FLAG_ZLIB
    signed = msgpack.packb([VERSION, sender, float(now), flags, body], use_bin_type=True)
    return key.sign(signed).signature + signed


def _unpack_signed(signed: bytes) -> tuple[str, str, float, int, bytes]:
    try:
        fields = msgpack.unpackb(
            signed, use_list=True, raw=False, max_bin_len=MAX_FRAME_BYTES
        )
    except (ValueError, msgpack.UnpackException) as exc:
        raise RejectedMessage(Reason.MALFORMED, f"frame is not msgpack: {exc!r}") from None
    if not isinstance(fields, list) or len(fields) != 5:
        raise RejectedMessage(Reason.MALFORMED, "frame is not a 5-element array")
    version, sender, sent_at, flags, body = fields
    if version != VERSION:
        raise RejectedMessage(
            Reason.UNSUPPORTED_VERSION,
            f"version {version!r} is not supported, expected {VERSION!r}",
        )
    if not isinstance(sender, str) or not isinstance(body, bytes):
        raise RejectedMessage(Reason.MALFORMED, "sender or payload has the wrong type")
    if not isinstance(sent_at, (int, float)) or not isinstance(flags, int):
        raise RejectedMessage(Reason.MALFORMED, "sent_at or flags has the wrong type")
    return version, sender, float(sent_at), flags, body


def _decode_payload(flags: int, body: bytes) -> Any:
    if flags & ~FLAG_ZLIB:
        raise RejectedMessage(Reason.MALFORMED, f"unknown flags {flags:#x}")
    if flags & FLAG_ZLIB:
        inflater = zlib.decompressobj()
        try:
            body = inflater.decompress(body, MAX_PAYLOAD_BYTES)
        except zlib.error as exc:
            raise RejectedMessage(Reason.MALFORMED, f"bad zlib payload: {exc}") from None
        if inflater.unconsumed_tail:
            raise RejectedMessage(
                Reason.OVERSIZED,
                f"payload expands past {MAX_PAYLOAD_BYTES} bytes",
            )
    try:
        return msgpack.unpackb(body, raw=False, max_bin_len=MAX_PAYLOAD_BYTES)
    except (ValueError, msgpack.UnpackException) as exc:
        raise RejectedMessage(Reason.MALFORMED, f"payload is not msgpack: {exc!r}") from None


def open_frame(
    frame: bytes,
    keyring: Keyring,
    *,
    now: float | None = None,
    replay_guard: ReplayGuard | None = None,
) -> Frame:
    """Check and decode a frame.

    Args:
        frame: the bytes as received.
        keyring: the trusted public keys.
        now: the receiver's wall clock; when given, frames whose ``sent_at`` is
            further than the replay guard's window from it are rejected. Archived
            alarms are opened without it.
        replay_guard: rejects a frame whose signature it has already seen.

    Raises:
        RejectedMessage: any check failed; ``reason`` says which.
    """
    if len(frame) > MAX_FRAME_BYTES:
        raise RejectedMessage(
            Reason.OVERSIZED, f"frame of {len(frame)} bytes exceeds {MAX_FRAME_BYTES}"
        )
    if len(frame) <= SIGNATURE_BYTES:
        raise RejectedMessage(Reason.MALFORMED, f"frame of {len(frame)} bytes is too short")
    signature, signed = frame[:SIGNATURE_BYTES], frame[SIGNATURE_BYTES:]
    _, sender, sent_at, flags, body = _unpack_signed(signed)

    if sender not in keyring:
        raise RejectedMessage(Reason.UNKNOWN_SENDER, f"sender {sender!r} is not trusted")
    if not keyring.verify(sender, signed, signature):
        raise RejectedMessage(
            Reason.BAD_SIGNATURE, f"signature does not match the key of {sender!r}"
        )

    # The signature is checked before the clock so that a forged timestamp is
    # reported as a forgery, not as clock skew.
    if now is not None and replay_guard is not None:
        skew = sent_at - now
        if abs(skew) > replay_guard.window:
            raise RejectedMessage(
                Reason.OUTSIDE_REPLAY_WINDOW,
                f"sent_at is {skew:+.1f}s from now, window is "
                f"±{replay_guard.window:g}s (check the clocks of {sender!r})",
            )
        if not replay_guard.admit(signature, sent_at):
            raise RejectedMessage(Reason.REPLAYED, f"frame from {sender!r} seen before")

    return Frame(sender, sent_at, _decode_payload(flags, body), len(frame))


class ReplayGuard:
    """Remembers the signatures of frames inside the replay window.

    Ed25519 signatures are deterministic, so two frames with the same signature
    are the same bytes: a replay. Frames older than the window are rejected by
    their timestamp, so only the window's signatures need to be kept.
    """

    def __init__(self, window: float, max_entries: int = 200_000) -> None:
        # Accepted |now - sent_at| in seconds.
        self.window = window
        # Bound on remembered signatures; past it the oldest are forgotten, which
        # only weakens replay detection under a flood, never rejects good frames.
        self._max_entries = max_entries
        # Signature to sent_at, in arrival order.
        self._seen: collections.OrderedDict[bytes, float] = collections.OrderedDict()

    def admit(self, signature: bytes, sent_at: float) -> bool:
        """Record ``signature``; return False if it was already recorded."""
        if signature in self._seen:
            return False
        self._seen[signature] = sent_at
        self._expire(sent_at)
        return True

    def _expire(self, newest: float) -> None:
        horizon = newest - 2 * self.window
        while self._seen:
            oldest_signature, oldest_sent_at = next(iter(self._seen.items()))
            if oldest_sent_at >= horizon and len(self._seen) <= self._max_entries:
                break
            del self._seen[oldest_signature]

    def __len__(self) -> int:
        return len(self._seen)
