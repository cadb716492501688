"""Fixtures shared by several test modules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from mesh.alarm import Alarm, Severity, SignedAlarm, Status, seal_alarm
from mesh.keys import SigningKey

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
