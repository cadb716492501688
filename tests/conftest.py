"""Fixtures shared by several test modules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import random
from pathlib import Path

import trio

from mesh.alarm import Alarm, Severity, SignedAlarm, Status, open_alarm, seal_alarm
from mesh.keys import Keyring, SigningKey
from sinks.outbox import Outbox

# 2024-05-01T11:58:30Z and 90 s later, as Unix seconds.
SAMPLE_STARTED_AT = 1_714_564_710.0
SAMPLE_SENT_AT = 1_714_564_800.0


@pytest.fixture
def signing_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def make_signed_alarm(signing_key: SigningKey) -> Callable[..., SignedAlarm]:
    """Return a function that seals a sample firing alarm with ``signing_key``.

    Keyword arguments replace fields of the sample :class:`Alarm`.
    """

    def make(**overrides: Any) -> SignedAlarm:
        fields: dict[str, Any] = {
            "incident": "member-down/busan@3",
            "status": Status.FIRING,
            "severity": Severity.CRITICAL,
            "subject": "member/busan",
            "cluster": "busan",
            "reporter": "seoul",
            "observers": ("seoul", "tokyo"),
            "started_at": SAMPLE_STARTED_AT,
            "sent_at": SAMPLE_SENT_AT,
            "summary": "busan missed 3 probes in a row",
        }
        fields.update(overrides)
        return seal_alarm(signing_key, Alarm(**fields))

    return make


class FakeClock:
    """A monotonic clock that moves only when the test advances it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def http_client() -> Any:
    import httpx

    async with httpx.AsyncClient() as client:
        yield client


def assert_no_secret(secret: str, *texts: str) -> None:
    """Fail if ``secret``, or a long piece of it, appears in any of ``texts``."""
    pieces = {secret} | {p for p in secret.replace(":", "/").split("/") if len(p) >= 12}
    for text in texts:
        for piece in pieces:
            assert piece not in text, f"secret piece {piece[:4]}… leaked"


# Outbox fixtures, on trio's MockClock.

# Wall-clock time at virtual time 0: 2026-12-04T16:00:00Z.
BASE_TIME = 1_796_400_000.0


def virtual_now() -> float:
    return BASE_TIME + trio.current_time()


class MaxJitter(random.Random):
    """Always draws the upper bound, so that retry delays are exact powers of 2."""

    def uniform(self, a: float, b: float) -> float:
        return b


@pytest.fixture
def keyring(signing_key: SigningKey) -> Keyring:
    return Keyring({"seoul": signing_key.verify_key})


@pytest.fixture
def make_frame(signing_key: SigningKey):
    def make(number: int) -> bytes:
        alarm = Alarm(
            incident=f"member-down/busan@{number}",
            status=Status.FIRING,
            severity=Severity.CRITICAL,
            subject="member/busan",
            cluster="busan",
            reporter="seoul",
            observers=("seoul", "tokyo"),
            started_at=BASE_TIME,
            sent_at=BASE_TIME + number,
            summary=f"busan stopped answering probes ({number})",
        )
        return seal_alarm(signing_key, alarm).frame

    return make


@pytest.fixture
def make_outbox(tmp_path: Path, keyring: Keyring, autojump_clock):
    # The MockClock makes virtual_now() start at BASE_TIME in every test.
    def make(destinations, **options) -> Outbox:
        options.setdefault("now", virtual_now)
        options.setdefault("rng", MaxJitter())
        return Outbox(
            tmp_path / "outbox",
            {destination.name: destination for destination in destinations},
            decode=lambda frame: open_alarm(frame, keyring),
            **options,
        )

    return make


def random_alarms(
    summary: str, count: int, subject: str = "https://x.example.com/"
) -> list:
    """Return ``count`` firing alarms that share ``summary``, for property tests."""
    return [
        Alarm(
            incident=f"i{n}",
            status=Status.FIRING if n % 3 else Status.RESOLVED,
            severity=Severity.WARNING,
            subject=subject,
            cluster="c",
            reporter="r",
            observers=("a", "b"),
            started_at=0.0,
            sent_at=0.0,
            summary=summary,
            ended_at=None if n % 3 else 1.0,
        )
        for n in range(count)
    ]


def as_request(payload: Any, path: str = "/") -> Any:
    """Wrap ``payload`` as the JSON request a sink would send, for mock validators."""
    import json

    from receivers import ReceivedRequest

    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    headers = {"content-type": "application/json; charset=utf-8"}
    return ReceivedRequest("POST", path, headers, body, payload)
