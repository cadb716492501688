"""Signed frames: round trip, and every reason a frame is rejected."""

import zlib

import msgpack
import pytest

from mesh.errors import Reason, RejectedMessage
from mesh.keys import Keyring, SigningKey
from mesh.wire import MAX_FRAME_BYTES, ReplayGuard, open_frame, seal

NOW = 1_800_000_000.0


@pytest.fixture
def key():
    return SigningKey.generate()


@pytest.fixture
def keyring(key):
    return Keyring({"seoul": key.verify_key})


def reason_of(frame, keyring, **kwargs):
    with pytest.raises(RejectedMessage) as info:
        open_frame(frame, keyring, **kwargs)
    return info.value.reason


def test_frame_round_trip(key, keyring):
    frame = seal(key, "seoul", [1, "ping", {"a": b"x"}], NOW)
    opened = open_frame(frame, keyring, now=NOW, replay_guard=ReplayGuard(30))
    assert opened.sender == "seoul"
    assert opened.sent_at == NOW
    assert opened.payload == [1, "ping", {"a": b"x"}]


def test_frame_compressed_only_when_smaller(key, keyring):
    small = seal(key, "seoul", "x", NOW)
    big = seal(key, "seoul", "member " * 500, NOW)
    assert msgpack.unpackb(small[64:])[3] == 0
    assert msgpack.unpackb(big[64:])[3] == 1
    assert len(big) < 500
    assert open_frame(big, keyring).payload == "member " * 500


def test_frame_unknown_sender_rejected(key):
    frame = seal(key, "seoul", "x", NOW)
    assert reason_of(frame, Keyring({})) is Reason.UNKNOWN_SENDER


def test_frame_forged_signature_rejected(keyring):
    forger = SigningKey.generate()
    frame = seal(forger, "seoul", "x", NOW)
    assert reason_of(frame, keyring) is Reason.BAD_SIGNATURE


def test_frame_tampered_payload_rejected(key, keyring):
    frame = bytearray(seal(key, "seoul", "hello", NOW))
    frame[-2] ^= 0x01
    assert reason_of(bytes(frame), keyring) is Reason.BAD_SIGNATURE


def test_frame_outside_replay_window_rejected(key, keyring):
    frame = seal(key, "seoul", "x", NOW - 31)
    guard = ReplayGuard(30)
    assert reason_of(frame, keyring, now=NOW, replay_guard=guard) is Reason.OUTSIDE_REPLAY_WINDOW


def test_frame_replayed_inside_window_rejected(key, keyring):
    frame = seal(key, "seoul", "x", NOW)
    guard = ReplayGuard(30)
    open_frame(frame, keyring, now=NOW, replay_guard=guard)
    assert reason_of(frame, keyring, now=NOW + 1, replay_guard=guard) is Reason.REPLAYED


def test_frame_oversized_rejected(keyring):
    assert reason_of(b"\0" * (MAX_FRAME_BYTES + 1), keyring) is Reason.OVERSIZED


@pytest.mark.parametrize(
    "frame",
    [b"", b"\x01" * 10, b"\x00" * 64 + b"\xc1", b"\x00" * 64 + msgpack.packb([1, 2])],
)
def test_frame_malformed_rejected(frame, keyring):
    assert reason_of(frame, keyring) is Reason.MALFORMED


def test_frame_wrong_version_rejected(key, keyring):
    signed = msgpack.packb(["v0", "seoul", NOW, 0, b"\x01"])
    frame = key.sign(signed).signature + signed
    assert reason_of(frame, keyring) is Reason.UNSUPPORTED_VERSION


def test_frame_decompression_bomb_rejected(key, keyring):
    bomb = zlib.compress(msgpack.packb("a" * (2 * 1024 * 1024)))
    signed = msgpack.packb(["v1alpha1", "seoul", NOW, 1, bomb])
    frame = key.sign(signed).signature + signed
    assert reason_of(frame, keyring) is Reason.OVERSIZED


def test_replay_guard_forgets_old_signatures():
    guard = ReplayGuard(10)
    assert guard.admit(b"a", 0.0)
    assert guard.admit(b"b", 100.0)
    assert len(guard) == 1
