"""The Discord sink: embeds, and sending to a local Discord webhook stand-in."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import as_request, assert_no_secret, random_alarms
from mesh.alarm import Status
from receivers import DiscordWebhookReceiver, _check_discord_payload, serve_receiver
from sinks import Secret, SinkConfigError, SinkPermanentError, SinkRetryableError
from sinks.config import parse_sink_config
from sinks.discord import (
    MAX_EMBEDS,
    MAX_TOTAL_CHARS,
    DiscordConfig,
    DiscordSink,
    embed_chars,
    render_embeds,
)


def sink_for(base_url: str, hook: DiscordWebhookReceiver) -> DiscordSink:
    return DiscordSink(
        DiscordConfig(name="ops-discord", url=Secret(base_url + hook.path))
    )


def test_render_colour_title_fields(make_signed_alarm):
    payload = render_embeds([make_signed_alarm().alarm]).payload
    [embed] = payload["embeds"]

    assert embed["title"] == "\U0001f534 FIRING (critical): member/busan"
    assert embed["color"] == 0xD0021B
    assert {"name": "Cluster", "value": "busan", "inline": True} in embed["fields"]
    assert payload["allowed_mentions"] == {"parse": []}


def test_render_resolved_is_green(make_signed_alarm):
    alarm = make_signed_alarm(status=Status.RESOLVED, ended_at=1.0).alarm
    assert render_embeds([alarm]).payload["embeds"][0]["color"] == 0x2EB67D


def test_render_escapes_markdown_and_mentions(make_signed_alarm):
    alarm = make_signed_alarm(summary="@everyone **down** <@123>").alarm
    description = render_embeds([alarm]).payload["embeds"][0]["description"]

    assert description.startswith(r"\@everyone \*\*down\*\* \<\@123\>")


def test_render_oversized_group_fits_limits(make_signed_alarm):
    alarms = [
        make_signed_alarm(incident=f"i{n}", summary="x" * 5000).alarm for n in range(14)
    ]
    rendered = render_embeds(alarms)
    embeds = rendered.payload["embeds"]

    assert len(embeds) <= MAX_EMBEDS
    assert sum(embed_chars(e) for e in embeds) <= MAX_TOTAL_CHARS
    assert rendered.payload["content"].startswith("14 alarms: 14 firing (showing")
    assert "summary" in rendered.truncated


async def test_sink_message_accepted(make_signed_alarm, http_client):
    hook = DiscordWebhookReceiver()
    async with serve_receiver(hook) as base_url:
        answer = await sink_for(base_url, hook).send(
            make_signed_alarm(), client=http_client, idempotency_key="k1"
        )

    assert answer.startswith("200 ok: message id=")
    assert hook.rejections == []
    assert hook.requests[0].query == {"wait": "true"}


async def test_sink_waits_for_empty_bucket_instead_of_collecting_429s(
    make_signed_alarm, http_client
):
    hook = DiscordWebhookReceiver(limit=2, window=0.3)
    async with serve_receiver(hook) as base_url:
        sink = sink_for(base_url, hook)
        for n in range(5):
            await sink.send(
                make_signed_alarm(), client=http_client, idempotency_key=f"k{n}"
            )

    assert len(hook.messages) == 5
    assert hook.rate_limited == 0


async def test_sink_429_retry_after_from_body(make_signed_alarm, http_client):
    hook = DiscordWebhookReceiver()
    body = '{"message": "You are being rate limited.", "retry_after": 1.234, "global": false}'
    hook.respond_next(
        429,
        body=body,
        headers=[("Retry-After", "1"), ("Content-Type", "application/json")],
    )
    async with serve_receiver(hook) as base_url:
        with pytest.raises(SinkRetryableError) as caught:
            await sink_for(base_url, hook).send(
                make_signed_alarm(), client=http_client, idempotency_key="k1"
            )

    assert caught.value.retry_after == pytest.approx(1.234)


async def test_sink_rate_limit_from_real_bucket(make_signed_alarm, http_client):
    hook = DiscordWebhookReceiver(limit=1, window=30.0)
    async with serve_receiver(hook) as base_url:
        sink = sink_for(base_url, hook)
        await sink.send(make_signed_alarm(), client=http_client, idempotency_key="k1")
        # The bucket is empty for 30 s: the sink asks the outbox to wait
        # rather than sending a request that would get a 429.
        with pytest.raises(SinkRetryableError) as caught:
            await sink.send(
                make_signed_alarm(), client=http_client, idempotency_key="k2"
            )

    assert 25 < caught.value.retry_after <= 30
    assert len(hook.requests) == 1


async def test_sink_deleted_webhook_is_permanent_and_hides_token(
    make_signed_alarm, http_client
):
    hook = DiscordWebhookReceiver()
    async with serve_receiver(hook) as base_url:
        url = f"{base_url}/api/webhooks/{hook.webhook_id}/{'Z' * 60}"
        sink = DiscordSink(DiscordConfig(name="d", url=Secret(url)))
        with pytest.raises(SinkPermanentError) as caught:
            await sink.send(
                make_signed_alarm(), client=http_client, idempotency_key="k1"
            )

    assert caught.value.status == 404
    assert "10015" in str(caught.value)
    assert_no_secret("Z" * 60, str(caught.value))


def test_config_rejects_url_that_is_not_a_webhook():
    raw = {"name": "d", "type": "discord", "url": "https://discord.com/channels/1/2"}
    with pytest.raises(
        SinkConfigError, match=r"sinks\[0\].url: not a Discord webhook URL"
    ):
        parse_sink_config(0, raw, {})


@settings(max_examples=60, deadline=None)
@given(
    summary=st.text(max_size=8000),
    subject=st.text(min_size=1, max_size=400),
    count=st.integers(1, 14),
)
def test_render_always_within_discord_limits(summary, subject, count):
    payload = render_embeds(random_alarms(summary, count, subject)).payload

    assert _check_discord_payload(as_request(payload)) is None
