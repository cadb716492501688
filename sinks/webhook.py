"""The generic webhook sink: a signed JSON POST to a URL of the team's choice.

The body is :meth:`mesh.alarm.Alarm.to_json_dict` plus ``record``, the base64 of
the signed msgpack frame, so that a receiver can check either the HTTP
signature or the archived record. The headers are::

    Content-Type: application/json
    X-Alarminati-Signature: <base64 Ed25519 signature over the exact body bytes>
    X-Alarminati-Key-Id: <mesh.keys.key_id of the signing public key>
    X-Alarminati-Signer: <member name of the sending agent>
    Idempotency-Key: <the same on every attempt at this alarm>
    User-Agent: alarminati/<version>

``docs/webhook.md`` describes the body and how a receiver verifies it.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from collections.abc import Callable

import httpx

from mesh.alarm import SignedAlarm
from mesh.keys import SigningKey, key_id

from .base import validate_http_sink_fields
from .http import USER_AGENT, post_alarm
from .secret import Secret

__all__ = [
    "WebhookConfig",
    "WebhookSink",
    "SIGNATURE_HEADER",
    "KEY_ID_HEADER",
    "SIGNER_HEADER",
    "render_body",
]

SIGNATURE_HEADER = "X-Alarminati-Signature"
KEY_ID_HEADER = "X-Alarminati-Key-Id"
SIGNER_HEADER = "X-Alarminati-Signer"

DEFAULT_TIMEOUT = 10.0


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class WebhookConfig:
    """Configuration of a webhook sink, which POSTs alarms as signed JSON."""

    # Sink name, unique within the agent and used in logs and errors.
    name: str
    # Receiver URL, http or https. Secret because it may embed a token.
    url: Secret
    # Deadline in seconds for one attempt, connecting and reading the response
    # included. Longer waits out a slow receiver but holds up the sink's queue,
    # and the outbox retries after a timeout either way.
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        validate_http_sink_fields(self.name, self.url, self.timeout)


def render_body(signed: SignedAlarm) -> bytes:
    """Encode the JSON body for ``signed``: the alarm's fields and the base64 record."""
    data = signed.alarm.to_json_dict()
    data["record"] = base64.b64encode(signed.frame).decode("ascii")
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8")


class WebhookSink:
    """POSTs each alarm as JSON, signed with the agent's Ed25519 key."""

    def __init__(
        self,
        config: WebhookConfig,
        *,
        signing_key: SigningKey,
        signer: str,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.name = config.name
        self._signing_key = signing_key
        # Member name of this agent. With the key id, it lets a receiver pick
        # the public key to verify against.
        self._signer = signer
        self._key_id = key_id(signing_key.verify_key)
        # Wall clock, for HTTP-date Retry-After values.
        self._now = now

    def __repr__(self) -> str:
        return f"WebhookSink(name={self.name!r})"

    def sign(self, body: bytes) -> str:
        """Return the base64 Ed25519 signature of ``body``."""
        signature = self._signing_key.sign(body).signature
        return base64.b64encode(signature).decode("ascii")

    async def send(
        self,
        signed: SignedAlarm,
        *,
        client: httpx.AsyncClient,
        idempotency_key: str,
    ) -> str:
        body = render_body(signed)
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: self.sign(body),
            KEY_ID_HEADER: self._key_id,
            SIGNER_HEADER: self._signer,
            "Idempotency-Key": idempotency_key,
            "User-Agent": USER_AGENT,
        }
        delivery = await post_alarm(
            client,
            self.config.url,
            sink=self.name,
            content=body,
            headers=headers,
            timeout=self.config.timeout,
            now=self._now,
        )
        return delivery.description
