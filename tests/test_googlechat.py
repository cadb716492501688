"""The Google Chat sink: cards, and sending to a local Google Chat stand-in."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import FakeClock, as_request, assert_no_secret, random_alarms
from receivers import GoogleChatReceiver, serve_receiver
from sinks import Secret, SinkConfigError, SinkPermanentError, SinkRetryableError
from sinks._chat import json_body
from sinks.config import parse_sink_config
from sinks.googlechat import (
    MAX_MESSAGE_BYTES,
    GoogleChatConfig,
    GoogleChatSink,
    render_card,
)


def sink_for(
    base_url: str, chat: GoogleChatReceiver, token: str | None = None
) -> GoogleChatSink:
    url = f"{base_url}{chat.path}?key={chat.key}&token={token or chat.token}"
    return GoogleChatSink(GoogleChatConfig(name="ops-chat", url=Secret(url)))


def test_render_card_with_escaped_text(make_signed_alarm):
    alarm = make_signed_alarm(summary="<b>bold</b> & more").alarm
    card = render_card([alarm]).payload["cardsV2"][0]["card"]

    assert card["header"]["title"] == "FIRING (critical): member/busan"
    widgets = card["sections"][0]["widgets"]
    assert widgets[0] == {
        "textParagraph": {"text": "&lt;b&gt;bold&lt;/b&gt; &amp; more"}
    }
    assert {"decoratedText": {"topLabel": "Cluster", "text": "busan"}} in widgets


def test_render_oversized_fits_bytes(make_signed_alarm):
    alarms = [
        make_signed_alarm(incident=f"i{n}", summary="é😀" * 9000).alarm
        for n in range(10)
    ]
    rendered = render_card(alarms)

    assert len(json_body(rendered.payload)) <= MAX_MESSAGE_BYTES


async def test_sink_threads_by_incident_and_is_idempotent(
    make_signed_alarm, http_client
):
    chat = GoogleChatReceiver()
    async with serve_receiver(chat) as base_url:
        sink = sink_for(base_url, chat)
        first = await sink.send(
            make_signed_alarm(), client=http_client, idempotency_key="k1"
        )
        # A retry after a lost answer: the same requestId, no second message.
        again = await sink.send(
            make_signed_alarm(), client=http_client, idempotency_key="k1"
        )

    assert first == again
    assert first.startswith("200 ok: message spaces/")
    assert len(chat.messages) == 1
    assert chat.threads == ["member-down/busan@3"]
    query = chat.requests[0].query
    assert query["messageReplyOption"] == "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD"


async def test_sink_429_is_retried_with_backoff(make_signed_alarm, http_client):
    chat = GoogleChatReceiver(burst=1, clock=FakeClock())
    async with serve_receiver(chat) as base_url:
        sink = sink_for(base_url, chat)
        await sink.send(make_signed_alarm(), client=http_client, idempotency_key="k1")
        with pytest.raises(SinkRetryableError) as caught:
            await sink.send(
                make_signed_alarm(), client=http_client, idempotency_key="k2"
            )

    assert caught.value.status == 429
    assert caught.value.retry_after is None


async def test_sink_revoked_token_is_permanent_and_hidden(
    make_signed_alarm, http_client, caplog
):
    chat = GoogleChatReceiver()
    wrong = "W" * 40
    async with serve_receiver(chat) as base_url:
        with pytest.raises(SinkPermanentError) as caught:
            await sink_for(base_url, chat, token=wrong).send(
                make_signed_alarm(), client=http_client, idempotency_key="k1"
            )
    assert caught.value.status == 401
    assert_no_secret(wrong, str(caught.value), caplog.text)


def test_config_requires_webhook_url():
    raw = {
        "name": "g",
        "type": "googlechat",
        "url": "https://chat.googleapis.com/v1/spaces/X",
    }
    with pytest.raises(
        SinkConfigError, match=r"sinks\[0\].url: not a Google Chat webhook URL"
    ):
        parse_sink_config(0, raw, {})


@settings(max_examples=60, deadline=None)
@given(
    summary=st.text(max_size=20000),
    subject=st.text(min_size=1, max_size=400),
    count=st.integers(1, 10),
)
def test_render_always_within_google_chat_limits(summary, subject, count):
    payload = render_card(random_alarms(summary, count, subject)).payload

    assert GoogleChatReceiver._check(as_request(payload), {}) is None
