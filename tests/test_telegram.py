"""The Telegram sink: rendering, and sending to a local Bot API stand-in."""

from __future__ import annotations

import html
import logging
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import FakeClock, assert_no_secret
from mesh.alarm import Alarm, Severity, Status
from receivers import TelegramBotApi, _parse_telegram_html, serve_receiver
from sinks import Secret, SinkConfigError, SinkPermanentError, SinkRetryableError
from sinks._chat import Links
from sinks.config import parse_sink_config
from sinks.telegram import MAX_TEXT_CHARS, TelegramConfig, TelegramSink, render_text

CHAT = -1001234567890


def sink_for(base_url: str, api: TelegramBotApi, **changes) -> TelegramSink:
    options = dict(
        name="ops-telegram",
        token=Secret(api.token),
        chat_id=CHAT,
        api_url=Secret(base_url),
    )
    options.update(changes)
    return TelegramSink(TelegramConfig(**options))


def visible(text: str) -> str:
    return html.unescape(re.sub(r"<[^>]*>", "", text))


# Rendering


def test_render_firing_shows_severity_fields_and_summary(make_signed_alarm):
    text = render_text([make_signed_alarm().alarm]).payload

    assert text.startswith(
        "\U0001f534 <b>FIRING (critical)</b>: <code>member/busan</code>"
    )
    assert "<b>Cluster</b>: busan" in text
    assert "<b>Since</b>: 2024-05-01T11:58:30.000Z" in text
    assert text.endswith("busan missed 3 probes in a row")


def test_render_resolved_shows_check_mark_and_end(make_signed_alarm):
    alarm = make_signed_alarm(status=Status.RESOLVED, ended_at=1_714_564_800.0).alarm
    text = render_text([alarm]).payload

    assert text.startswith("\u2705 <b>RESOLVED</b>")
    assert "<b>Ended</b>: 2024-05-01T12:00:00.000Z" in text


def test_render_escapes_html_in_user_strings(make_signed_alarm):
    alarm = make_signed_alarm(summary='<b>x</b> & "y"', subject="tcp/a<b>:1").alarm
    text = render_text([alarm]).payload

    assert "&lt;b&gt;x&lt;/b&gt; &amp; &quot;y&quot;" in text
    assert "<code>tcp/a&lt;b&gt;:1</code>" in text


def test_render_links_from_templates(make_signed_alarm):
    links = Links(
        runbook_url="https://wiki.example.com/rb?s={subject}",
        ui_url="https://ui.example.com/i/{incident}",
    )
    text = render_text([make_signed_alarm().alarm], links).payload

    assert '<a href="https://wiki.example.com/rb?s=member%2Fbusan">Runbook</a>' in text
    assert "https://ui.example.com/i/member-down%2Fbusan%403" in text


def test_render_group_puts_each_alarm_in_one_message(make_signed_alarm):
    alarms = [
        make_signed_alarm(incident=f"i{n}", subject=f"member/m{n}").alarm
        for n in range(3)
    ]
    alarms.append(make_signed_alarm(status=Status.RESOLVED, ended_at=1.0).alarm)
    text = render_text(alarms).payload

    assert text.startswith("<b>4 alarms: 3 firing, 1 resolved</b>")
    assert all(f"member/m{n}" in text for n in range(3))


def test_render_oversized_alarm_fits_limit(make_signed_alarm):
    alarm = make_signed_alarm(summary="<&>😀" * 5000, subject="ü" * 3000).alarm
    rendered = render_text([alarm])

    assert len(visible(rendered.payload)) <= MAX_TEXT_CHARS
    assert "summary" in rendered.truncated


@settings(max_examples=60, deadline=None)
@given(summary=st.text(min_size=0, max_size=6000), count=st.integers(1, 30))
def test_render_always_parses_and_fits(summary, count):
    alarms = [
        Alarm(
            incident=f"i{n}",
            status=Status.FIRING,
            severity=Severity.WARNING,
            subject=f"https://x{n}.example.com/",
            cluster="c",
            reporter="r",
            observers=(),
            started_at=0.0,
            sent_at=0.0,
            summary=summary,
        )
        for n in range(count)
    ]
    text = render_text(alarms).payload

    parsed = _parse_telegram_html(text)
    assert parsed is not None
    assert 1 <= len(parsed) <= MAX_TEXT_CHARS


# Against the Bot API stand-in


async def test_sink_message_accepted(make_signed_alarm, http_client):
    api = TelegramBotApi()
    async with serve_receiver(api) as base_url:
        answer = await sink_for(base_url, api).send(
            make_signed_alarm(), client=http_client, idempotency_key="k1"
        )

    assert answer == "200 ok: message_id=1"
    [message] = api.messages
    assert message["chat_id"] == CHAT
    assert message["parse_mode"] == "HTML"


async def test_sink_oversized_group_accepted(make_signed_alarm, http_client, caplog):
    api = TelegramBotApi(burst=10)
    group = [
        make_signed_alarm(incident=f"i{n}", summary="<x>" * 2000) for n in range(25)
    ]
    caplog.set_level(logging.WARNING, logger="sinks")
    async with serve_receiver(api) as base_url:
        await sink_for(base_url, api).send_group(
            group, client=http_client, idempotency_key="g"
        )

    assert api.rejections == []
    [warning] = [r for r in caplog.records if r.name == "sinks.telegram"]
    assert "sink=ops-telegram" in warning.getMessage()


async def test_sink_429_carries_retry_after_from_parameters(
    make_signed_alarm, http_client
):
    clock = FakeClock()
    api = TelegramBotApi(burst=1, rate=1 / 34, clock=clock)
    async with serve_receiver(api) as base_url:
        sink = sink_for(base_url, api)
        await sink.send(make_signed_alarm(), client=http_client, idempotency_key="k1")
        with pytest.raises(SinkRetryableError) as caught:
            await sink.send(
                make_signed_alarm(), client=http_client, idempotency_key="k2"
            )

    assert caught.value.retry_after == 34.0
    assert caught.value.status == 429


async def test_sink_follows_group_migration(make_signed_alarm, http_client):
    new_chat = -1009999999999
    api = TelegramBotApi(chats=[new_chat], migrated={CHAT: new_chat})
    async with serve_receiver(api) as base_url:
        sink = sink_for(base_url, api)
        with pytest.raises(SinkRetryableError) as caught:
            await sink.send(
                make_signed_alarm(), client=http_client, idempotency_key="k1"
            )
        await sink.send(make_signed_alarm(), client=http_client, idempotency_key="k1")

    assert caught.value.retry_after == 0.0
    assert api.messages[0]["chat_id"] == new_chat


@pytest.mark.parametrize("problem", ["wrong token", "unknown chat"])
async def test_sink_refusals_are_permanent_and_hide_token(
    problem, make_signed_alarm, http_client, caplog
):
    api = TelegramBotApi()
    async with serve_receiver(api) as base_url:
        if problem == "wrong token":
            token = Secret("123456:" + "A" * 35)
            sink = sink_for(base_url, api, token=token)
        else:
            token = Secret(api.token)
            sink = sink_for(base_url, api, chat_id=-42)
        with pytest.raises(SinkPermanentError) as caught:
            await sink.send(
                make_signed_alarm(), client=http_client, idempotency_key="k1"
            )

    assert caught.value.status in (400, 401)
    assert_no_secret(token.reveal(), str(caught.value), repr(sink), caplog.text)


async def test_sink_connection_refused_is_retryable_and_hides_token(
    make_signed_alarm, http_client
):
    api = TelegramBotApi()
    sink = sink_for("http://127.0.0.1:9", api)
    with pytest.raises(SinkRetryableError) as caught:
        await sink.send(make_signed_alarm(), client=http_client, idempotency_key="k1")
    assert_no_secret(api.token, str(caught.value))


# Configuration


def test_config_reads_token_from_environment():
    raw = {"name": "t", "type": "telegram", "token_env": "TG", "chat_id": "-100123"}
    config = parse_sink_config(0, raw, {"TG": "123:abcDEF_-"})

    assert config.token.reveal() == "123:abcDEF_-"
    assert config.chat_id == -100123
    assert "abcDEF" not in repr(config)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"token": "not-a-token"}, "sinks[0].token: invalid bot token"),
        ({"chat_id": "general"}, "sinks[0].chat_id: invalid value 'general'"),
        ({"chat_id": None}, "sinks[0].chat_id: invalid value None"),
        ({"message_thread_id": "x"}, "sinks[0].message_thread_id: invalid value 'x'"),
        (
            {"runbook_url": "https://x/{nope}"},
            "sinks[0].runbook_url: unknown placeholder 'nope'",
        ),
        ({"colour": "red"}, "sinks[0].colour: unknown key for type 'telegram'"),
    ],
)
def test_config_errors_name_the_key(changes, message):
    raw = {"name": "t", "type": "telegram", "token": "1:abc", "chat_id": 5, **changes}
    with pytest.raises(SinkConfigError) as caught:
        parse_sink_config(0, raw, {})
    assert str(caught.value).startswith(message)
