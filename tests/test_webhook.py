"""The webhook sink against a local webhook receiver on loopback."""

from __future__ import annotations

import base64
import dataclasses
import email.utils
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import nacl.exceptions
import pytest

from mesh.alarm import SignedAlarm, Status, open_alarm
from mesh.keys import Keyring, SigningKey, key_id
from receivers import WebhookReceiver, serve_receiver
from sinks import (
    USER_AGENT,
    Secret,
    SinkPermanentError,
    SinkRetryableError,
    WebhookConfig,
    WebhookSink,
)
from sinks.webhook import render_body

NOW = 1_714_564_800.0


@dataclasses.dataclass
class Setup:
    receiver: WebhookReceiver
    sink: WebhookSink
    client: httpx.AsyncClient

    async def send(self, signed: SignedAlarm, idempotency_key: str = "k1") -> str:
        return await self.sink.send(
            signed, client=self.client, idempotency_key=idempotency_key
        )


@pytest.fixture
async def setup(signing_key: SigningKey) -> AsyncIterator[Setup]:
    receiver = WebhookReceiver()
    async with serve_receiver(receiver) as base_url:
        config = WebhookConfig(name="ops-hook", url=Secret(f"{base_url}/alarms"))
        sink = WebhookSink(
            config, signing_key=signing_key, signer="seoul", now=lambda: NOW
        )
        async with httpx.AsyncClient() as client:
            yield Setup(receiver, sink, client)


async def test_webhook_returns_200_ok(
    setup: Setup, make_signed_alarm: Callable[..., SignedAlarm]
) -> None:
    described = await setup.send(make_signed_alarm())
    assert described == "200 ok"
    assert len(setup.receiver.requests) == 1
    assert setup.receiver.requests[0].method == "POST"
    assert setup.receiver.requests[0].path == "/alarms"


async def test_webhook_signature_verifies_with_public_key(
    setup: Setup, signing_key: SigningKey, make_signed_alarm: Callable[..., SignedAlarm]
) -> None:
    await setup.send(make_signed_alarm())
    request = setup.receiver.requests[0]

    assert setup.receiver.verify_signature(request, [signing_key.verify_key])
    # The same check by hand, as docs/webhook.md instructs receivers.
    signature = base64.b64decode(request.headers["x-alarminati-signature"])
    signing_key.verify_key.verify(request.body, signature)


async def test_webhook_tampered_body_fails_verification(
    setup: Setup, signing_key: SigningKey, make_signed_alarm: Callable[..., SignedAlarm]
) -> None:
    await setup.send(make_signed_alarm())
    request = setup.receiver.requests[0]
    tampered_body = request.body.replace(b"busan", b"bvsan", 1)
    assert tampered_body != request.body
    tampered = dataclasses.replace(request, body=tampered_body)

    assert not setup.receiver.verify_signature(tampered, [signing_key.verify_key])
    signature = base64.b64decode(request.headers["x-alarminati-signature"])
    with pytest.raises(nacl.exceptions.BadSignatureError):
        signing_key.verify_key.verify(tampered_body, signature)


async def test_webhook_signature_fails_with_other_key(
    setup: Setup, make_signed_alarm: Callable[..., SignedAlarm]
) -> None:
    await setup.send(make_signed_alarm())
    other = SigningKey.generate().verify_key
    assert not setup.receiver.verify_signature(setup.receiver.requests[0], [other])


async def test_webhook_headers_present(
    setup: Setup, signing_key: SigningKey, make_signed_alarm: Callable[..., SignedAlarm]
) -> None:
    await setup.send(make_signed_alarm(), idempotency_key="incident-key-1")
    headers = setup.receiver.requests[0].headers

    assert headers["content-type"] == "application/json"
    assert headers["x-alarminati-key-id"] == key_id(signing_key.verify_key)
    assert headers["x-alarminati-signer"] == "seoul"
    assert headers["idempotency-key"] == "incident-key-1"
    assert headers["user-agent"] == USER_AGENT
    assert USER_AGENT.startswith("alarminati/")
    assert len(base64.b64decode(headers["x-alarminati-signature"])) == 64


async def test_webhook_body_is_alarm_json_with_record(
    setup: Setup, signing_key: SigningKey, make_signed_alarm: Callable[..., SignedAlarm]
) -> None:
    signed = make_signed_alarm()
    await setup.send(signed)
    request = setup.receiver.requests[0]
    body = json.loads(request.body)

    record = base64.b64decode(body.pop("record"))
    assert body == signed.alarm.to_json_dict()
    assert body["started_time"] == "2024-05-01T11:58:30.000Z"
    assert record == signed.frame
    reopened = open_alarm(record, Keyring({"seoul": signing_key.verify_key}))
    assert reopened.alarm == signed.alarm


async def test_webhook_body_is_exactly_the_signed_bytes(
    setup: Setup, make_signed_alarm: Callable[..., SignedAlarm]
) -> None:
    signed = make_signed_alarm(summary="naïve → café ✓ & <b>")
    await setup.send(signed)
    assert setup.receiver.requests[0].body == render_body(signed)


async def test_webhook_retry_sends_identical_request(
    setup: Setup, make_signed_alarm: Callable[..., SignedAlarm]
) -> None:
    signed = make_signed_alarm(status=Status.RESOLVED, ended_at=NOW)
    for _ in range(2):
        await setup.send(signed)
    first, second = setup.receiver.requests
    assert first.body == second.body
    for name in ("x-alarminati-signature", "idempotency-key"):
        assert first.headers[name] == second.headers[name]


async def test_webhook_503_is_retryable(
    setup: Setup, make_signed_alarm: Callable[..., SignedAlarm]
) -> None:
    setup.receiver.respond_next(503, body="maintenance")
    with pytest.raises(SinkRetryableError) as caught:
        await setup.send(make_signed_alarm())
    assert caught.value.status == 503
    assert caught.value.retry_after is None
    assert "ops-hook" in str(caught.value)
    assert "maintenance" in str(caught.value)


async def test_webhook_410_is_permanent(
    setup: Setup, make_signed_alarm: Callable[..., SignedAlarm]
) -> None:
    setup.receiver.respond_next(410, body="gone")
    with pytest.raises(SinkPermanentError) as caught:
        await setup.send(make_signed_alarm())
    assert caught.value.status == 410


async def test_webhook_429_carries_retry_after_seconds(
    setup: Setup, make_signed_alarm: Callable[..., SignedAlarm]
) -> None:
    setup.receiver.respond_next(429, headers=[("Retry-After", "17")])
    with pytest.raises(SinkRetryableError) as caught:
        await setup.send(make_signed_alarm())
    assert caught.value.status == 429
    assert caught.value.retry_after == 17.0


async def test_webhook_429_carries_retry_after_date(
    setup: Setup, make_signed_alarm: Callable[..., SignedAlarm]
) -> None:
    date = email.utils.formatdate(NOW + 42, usegmt=True)
    setup.receiver.respond_next(429, headers=[("Retry-After", date)])
    with pytest.raises(SinkRetryableError) as caught:
        await setup.send(make_signed_alarm())
    assert caught.value.retry_after == 42.0


async def test_webhook_succeeds_after_scripted_failures(
    setup: Setup, make_signed_alarm: Callable[..., SignedAlarm]
) -> None:
    setup.receiver.respond_next(500, 2)
    signed = make_signed_alarm()
    for _ in range(2):
        with pytest.raises(SinkRetryableError):
            await setup.send(signed)
    assert await setup.send(signed) == "200 ok"
    assert [r.status for r in setup.receiver.requests] == [500, 500, 200]


def test_webhook_config_rejects_bad_values() -> None:
    url = Secret("http://127.0.0.1:9/alarms")
    with pytest.raises(ValueError, match="invalid sink name 'Ops'"):
        WebhookConfig(name="Ops", url=url)
    with pytest.raises(ValueError, match="invalid timeout 0"):
        WebhookConfig(name="ops", url=url, timeout=0)
    with pytest.raises(TypeError, match="url must be a Secret"):
        url_text: Any = "http://127.0.0.1:9/alarms"
        WebhookConfig(name="ops", url=url_text)
