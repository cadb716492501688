"""Rendering of Slack messages, and the Slack sink against a local Slack mock."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from mesh.alarm import Severity, SignedAlarm, Status
from conftest import FakeClock
from receivers import SlackApiReceiver, SlackWebhookReceiver, serve_receiver
from sinks import (
    Secret,
    SinkConfigError,
    SinkPermanentError,
    SinkRetryableError,
    SlackConfig,
    SlackSink,
    render_message,
)
from sinks.config import parse_sink_config
from sinks.slack import (
    ELLIPSIS,
    MAX_FIELD_CHARS,
    MAX_HEADER_CHARS,
    MAX_SECTION_TEXT_CHARS,
    MAX_TEXT_CHARS,
    escape_mrkdwn,
    truncate,
)

ENDED_AT = 1_714_564_800.0  # 2024-05-01T12:00:00Z


def field_texts(payload: dict[str, Any]) -> list[str]:
    return [field["text"] for field in payload["blocks"][2]["fields"]]


# Rendering


def test_render_firing_critical(make_signed_alarm: Callable[..., SignedAlarm]) -> None:
    message = render_message(make_signed_alarm().alarm)
    payload = message.payload

    assert message.truncated == ()
    assert len(payload["blocks"]) == 3
    assert payload["blocks"][0] == {
        "type": "header",
        "text": {
            "type": "plain_text",
            "text": ":red_circle: FIRING (critical): member/busan",
            "emoji": True,
        },
    }
    assert payload["blocks"][1] == {
        "type": "section",
        "text": {"type": "mrkdwn", "text": "busan missed 3 probes in a row"},
    }
    assert field_texts(payload) == [
        "*Cluster*\nbusan",
        "*Reporter*\nseoul",
        "*Since*\n2024-05-01T11:58:30.000Z",
        "*Incident*\nmember-down/busan@3",
        "*Observed by*\nseoul, tokyo",
    ]
    assert payload["text"] == (
        ":red_circle: FIRING (critical): member/busan on busan\n"
        "busan missed 3 probes in a row"
    )


def test_render_resolved(make_signed_alarm: Callable[..., SignedAlarm]) -> None:
    alarm = make_signed_alarm(status=Status.RESOLVED, ended_at=ENDED_AT).alarm
    payload = render_message(alarm).payload

    header = payload["blocks"][0]["text"]["text"]
    assert header == ":white_check_mark: RESOLVED: member/busan"
    assert "*Ended*\n2024-05-01T12:00:00.000Z" in field_texts(payload)
    assert "*Since*\n2024-05-01T11:58:30.000Z" in field_texts(payload)
    assert payload["text"].startswith(":white_check_mark: RESOLVED: member/busan")


@pytest.mark.parametrize(
    ("severity", "emoji"),
    [
        (Severity.CRITICAL, ":red_circle:"),
        (Severity.WARNING, ":large_orange_circle:"),
        (Severity.INFO, ":large_blue_circle:"),
    ],
)
def test_render_emoji_by_severity(
    severity: Severity, emoji: str, make_signed_alarm: Callable[..., SignedAlarm]
) -> None:
    payload = render_message(make_signed_alarm(severity=severity).alarm).payload
    header = payload["blocks"][0]["text"]["text"]
    assert header == f"{emoji} FIRING ({severity.value}): member/busan"
    assert payload["text"].startswith(f"{emoji} ")


def test_render_resolved_emoji_ignores_severity(
    make_signed_alarm: Callable[..., SignedAlarm],
) -> None:
    alarm = make_signed_alarm(
        status=Status.RESOLVED, severity=Severity.WARNING, ended_at=ENDED_AT
    ).alarm
    header = render_message(alarm).payload["blocks"][0]["text"]["text"]
    assert header.startswith(":white_check_mark: ")


def test_render_escapes_mrkdwn_control_characters(
    make_signed_alarm: Callable[..., SignedAlarm],
) -> None:
    alarm = make_signed_alarm(
        summary="<!channel> a & b > c",
        cluster="<prod>",
        subject="db <primary> & replica",
    ).alarm
    payload = render_message(alarm).payload

    assert payload["blocks"][1]["text"]["text"] == "&lt;!channel&gt; a &amp; b &gt; c"
    assert "*Cluster*\n&lt;prod&gt;" in field_texts(payload)
    assert "&lt;!channel&gt; a &amp; b &gt; c" in payload["text"]
    assert "db &lt;primary&gt; &amp; replica" in payload["text"]
    assert "<!channel>" not in payload["text"]
    # Header text is plain_text and is not escaped.
    assert payload["blocks"][0]["text"]["text"].endswith("db <primary> & replica")


def test_escape_mrkdwn_escapes_ampersand_first() -> None:
    assert escape_mrkdwn("&lt;") == "&amp;lt;"
    assert escape_mrkdwn("a<b>c&d") == "a&lt;b&gt;c&amp;d"


def test_render_empty_summary_keeps_section_valid(
    make_signed_alarm: Callable[..., SignedAlarm],
) -> None:
    payload = render_message(make_signed_alarm(summary="").alarm).payload
    assert payload["blocks"][1]["text"]["text"] == "_no summary_"


def test_render_truncates_to_documented_limits(
    make_signed_alarm: Callable[..., SignedAlarm],
) -> None:
    alarm = make_signed_alarm(
        subject="s" * 500,
        summary="<&>" * 20_000,
        observers=tuple(f"member-{i}" for i in range(1000)),
    ).alarm
    message = render_message(alarm)
    payload = message.payload

    header = payload["blocks"][0]["text"]["text"]
    summary = payload["blocks"][1]["text"]["text"]
    assert len(header) == MAX_HEADER_CHARS
    assert header.endswith(ELLIPSIS)
    assert MAX_SECTION_TEXT_CHARS - 5 <= len(summary) <= MAX_SECTION_TEXT_CHARS
    assert summary.endswith(ELLIPSIS)
    assert len(payload["text"]) <= MAX_TEXT_CHARS
    assert all(len(text) <= MAX_FIELD_CHARS for text in field_texts(payload))
    assert set(message.truncated) == {"header", "summary", "field 'observers'", "text"}


def assert_whole_entities(text: str) -> None:
    assert re.fullmatch(r"(?:[^&]|&amp;|&lt;|&gt;)*", text), text[-10:]


def test_truncate_never_splits_an_entity() -> None:
    for padding in range(8):
        escaped = escape_mrkdwn("a" * padding + "&<>" * 10)
        for limit in range(2, 20):
            result, cut = truncate(escaped, limit, escaped=True)
            assert cut
            assert len(result) <= limit
            assert_whole_entities(result.removesuffix(ELLIPSIS))


# Each is one character on screen but several code points or UTF-8 bytes.
USER_PERCEIVED_CHARACTERS = [
    "é",  # 2 bytes in UTF-8
    "€",  # 3 bytes
    "😀",  # 4 bytes
    "e\u0301",  # e and a combining acute accent
    "👍🏽",  # thumbs up with a skin tone modifier
    "👩\u200d💻",  # woman technologist: a zero width joiner sequence
    "❤\ufe0f",  # heart with an emoji variation selector
    "🇰🇷",  # a flag: two regional indicators
    "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",  # Scotland
]


@pytest.mark.parametrize("character", USER_PERCEIVED_CHARACTERS)
def test_truncate_never_splits_a_character(character: str) -> None:
    limit = 40
    for padding in range(limit - 3 * len(character), limit):
        text = "a" * padding + character * 10
        result, cut = truncate(text, limit)
        assert cut
        assert len(result) <= limit
        kept = result.removesuffix(ELLIPSIS)
        assert text.startswith(kept)
        rest = kept[padding:]
        assert rest == character * (len(rest) // len(character)), (padding, kept)
        result.encode("utf-8")


def test_truncate_summary_with_emoji_keeps_whole_characters(
    make_signed_alarm: Callable[..., SignedAlarm],
) -> None:
    summary = "x" + "👩\u200d💻" * 2000
    message = render_message(make_signed_alarm(summary=summary).alarm)
    section = message.payload["blocks"][1]["text"]["text"]
    kept = section.removesuffix(ELLIPSIS)
    assert len(section) <= MAX_SECTION_TEXT_CHARS
    assert (len(kept) - 1) % 3 == 0
    assert summary.startswith(kept)


def test_truncate_leaves_short_text_alone() -> None:
    assert truncate("abc", 3) == ("abc", False)
    assert truncate("", 1) == ("", False)


@given(
    text=st.text(alphabet=st.sampled_from("ab&<>é\u0301😀\u200d🇰")),
    limit=st.integers(2, 40),
)
def test_truncate_property(text: str, limit: int) -> None:
    escaped = escape_mrkdwn(text)
    result, cut = truncate(escaped, limit, escaped=True)
    assert len(result) <= limit
    assert cut == (len(escaped) > limit)
    if not cut:
        assert result == escaped
        return
    kept = result.removesuffix(ELLIPSIS)
    assert escaped.startswith(kept)
    assert_whole_entities(kept)
    # The cut never leaves a joiner dangling or strips a mark from its base.
    following = escaped[len(kept)]
    if kept:
        assert following not in "\u0301\u200d"
        assert not kept.endswith("\u200d")
    # Regional indicators pair up into flags from the start of a run, so a cut
    # inside a run must leave an even number of them.
    if following == "🇰":
        trailing_indicators = len(kept) - len(kept.rstrip("🇰"))
        assert trailing_indicators % 2 == 0


# Against the local Slack mock


@dataclasses.dataclass
class Setup:
    receiver: SlackWebhookReceiver
    sink: SlackSink
    client: httpx.AsyncClient
    base_url: str
    clock: FakeClock

    async def send(self, signed: SignedAlarm) -> str:
        return await self.sink.send(signed, client=self.client, idempotency_key="k1")

    async def post(self, payload: dict[str, Any]) -> httpx.Response:
        return await self.client.post(self.base_url + self.receiver.path, json=payload)


def slack_sink(base_url: str, receiver: SlackWebhookReceiver) -> SlackSink:
    url = Secret(base_url + receiver.path)
    return SlackSink(SlackConfig(name="ops-slack", url=url))


@pytest.fixture
async def slack() -> AsyncIterator[Setup]:
    clock = FakeClock()
    receiver = SlackWebhookReceiver(burst=3, clock=clock)
    async with serve_receiver(receiver) as base_url:
        async with httpx.AsyncClient() as client:
            sink = slack_sink(base_url, receiver)
            yield Setup(receiver, sink, client, base_url, clock)


async def test_slack_sink_message_accepted_by_mock(
    slack: Setup, make_signed_alarm: Callable[..., SignedAlarm]
) -> None:
    signed = make_signed_alarm()
    assert await slack.send(signed) == "200 ok"
    assert slack.receiver.messages == [render_message(signed.alarm).payload]
    content_type = slack.receiver.requests[0].headers["content-type"]
    assert content_type.startswith("application/json")


async def test_slack_sink_oversized_alarm_fits(
    slack: Setup,
    make_signed_alarm: Callable[..., SignedAlarm],
    caplog: pytest.LogCaptureFixture,
) -> None:
    signed = make_signed_alarm(
        subject="ü" * 400,
        summary="<&>😀" * 20_000,
        incident="i" * 3000,
        observers=tuple(f"member-{i}" for i in range(1000)),
    )
    caplog.set_level(logging.WARNING, logger="sinks")
    await slack.send(signed)

    assert slack.receiver.rejections == []
    assert len(slack.receiver.messages) == 1
    warnings = [r for r in caplog.records if r.name == "sinks.slack"]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert "sink=ops-slack" in warnings[0].getMessage()
    assert "summary" in warnings[0].getMessage()


async def test_slack_sink_logs_nothing_when_message_fits(
    slack: Setup,
    make_signed_alarm: Callable[..., SignedAlarm],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="sinks")
    await slack.send(make_signed_alarm())
    assert [r for r in caplog.records if r.name.startswith("sinks")] == []


async def test_slack_sink_429_after_burst(
    slack: Setup, make_signed_alarm: Callable[..., SignedAlarm]
) -> None:
    signed = make_signed_alarm()
    for _ in range(slack.receiver.burst):
        await slack.send(signed)
    with pytest.raises(SinkRetryableError) as caught:
        await slack.send(signed)
    assert caught.value.status == 429
    assert caught.value.retry_after == 1.0
    assert len(slack.receiver.messages) == slack.receiver.burst

    slack.clock.now += caught.value.retry_after
    assert await slack.send(signed) == "200 ok"
    assert len(slack.receiver.messages) == slack.receiver.burst + 1


@pytest.mark.slow
async def test_slack_sink_real_rate_limit(
    make_signed_alarm: Callable[..., SignedAlarm],
) -> None:
    receiver = SlackWebhookReceiver(burst=2)
    signed = make_signed_alarm()
    async with serve_receiver(receiver) as base_url:
        sink = slack_sink(base_url, receiver)
        async with httpx.AsyncClient() as client:
            for _ in range(2):
                await sink.send(signed, client=client, idempotency_key="k1")
            with pytest.raises(SinkRetryableError) as caught:
                await sink.send(signed, client=client, idempotency_key="k1")
            assert caught.value.retry_after is not None
            await trio.sleep(caught.value.retry_after)
            described = await sink.send(signed, client=client, idempotency_key="k1")
            assert described == "200 ok"


async def test_slack_sink_revoked_url_is_permanent(
    slack: Setup, make_signed_alarm: Callable[..., SignedAlarm]
) -> None:
    token = "RevokedT0kenAbCdEfGh1234"
    url = Secret(f"{slack.base_url}/services/T0AAA/B0BBB/{token}")
    sink = SlackSink(SlackConfig(name="ops-slack", url=url))
    with pytest.raises(SinkPermanentError) as caught:
        await sink.send(make_signed_alarm(), client=slack.client, idempotency_key="k1")
    assert caught.value.status == 404
    assert "no_service" in str(caught.value)
    assert token not in str(caught.value)


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        (500, "rollup_error", SinkRetryableError),
        (400, "invalid_payload", SinkPermanentError),
        (403, "action_prohibited", SinkPermanentError),
        (404, "channel_not_found", SinkPermanentError),
        (410, "channel_is_archived", SinkPermanentError),
    ],
)
async def test_slack_sink_documented_errors(
    slack: Setup,
    make_signed_alarm: Callable[..., SignedAlarm],
    status: int,
    error: str,
    expected: type[Exception],
) -> None:
    slack.receiver.respond_next(status, body=error)
    with pytest.raises(expected) as caught:
        await slack.send(make_signed_alarm())
    assert error in str(caught.value)


async def test_slack_sink_200_without_ok_is_permanent(
    slack: Setup, make_signed_alarm: Callable[..., SignedAlarm]
) -> None:
    slack.receiver.respond_next(200, body="<html>sign in to continue</html>")
    with pytest.raises(SinkPermanentError) as caught:
        await slack.send(make_signed_alarm())
    assert caught.value.status == 200
    assert "expected 'ok'" in str(caught.value)


# The mock itself must reject what Slack rejects, or the tests above prove little.


def section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def header(text: str, text_type: str = "plain_text") -> dict[str, Any]:
    return {"type": "header", "text": {"type": text_type, "text": text}}


def fields(text: str, count: int) -> dict[str, Any]:
    return {"type": "section", "fields": [{"type": "mrkdwn", "text": text}] * count}


INVALID_PAYLOADS = {
    "no text or blocks": {"attachments": []},
    "text not a string": {"text": 5},
    "text too long": {"text": "x" * 40_001},
    "too many blocks": {"text": "t", "blocks": [section("x")] * 51},
    "header too long": {"blocks": [header("h" * 151)]},
    "header as mrkdwn": {"blocks": [header("h", "mrkdwn")]},
    "section text too long": {"blocks": [section("s" * 3001)]},
    "too many fields": {"blocks": [fields("f", 11)]},
    "field too long": {"blocks": [fields("f" * 2001, 1)]},
    "empty section": {"blocks": [{"type": "section"}]},
    "block without type": {"blocks": [{"text": "x"}]},
}


@pytest.mark.parametrize(
    "payload", INVALID_PAYLOADS.values(), ids=INVALID_PAYLOADS.keys()
)
async def test_slack_mock_rejects_invalid_payload(
    slack: Setup, payload: dict[str, Any]
) -> None:
    response = await slack.post(payload)
    assert response.status_code == 400
    assert response.text == "invalid_payload"
    assert len(slack.receiver.rejections) == 1
    assert slack.receiver.messages == []


@pytest.mark.parametrize(
    "payload",
    [
        {"text": "x" * 40_000},
        {"blocks": [section("s" * 3000)] * 50},
        {"blocks": [header("h" * 150)]},
        {"blocks": [fields("f" * 2000, 10)]},
    ],
    ids=["text at limit", "blocks at limit", "header at limit", "fields at limit"],
)
async def test_slack_mock_accepts_payload_at_limits(
    slack: Setup, payload: dict[str, Any]
) -> None:
    response = await slack.post(payload)
    assert response.status_code == 200
    assert response.text == "ok"


async def test_slack_mock_rejects_form_content_type(slack: Setup) -> None:
    response = await slack.client.post(
        slack.base_url + slack.receiver.path,
        content=b'{"text":"hi"}',
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 400
    assert response.text == "invalid_payload"


async def test_slack_mock_unknown_path_is_404_no_service(slack: Setup) -> None:
    url = slack.base_url + "/services/T/B/wrong"
    response = await slack.client.post(url, json={"text": "x"})
    assert response.status_code == 404
    assert response.text == "no_service"


async def test_slack_mock_rejects_get(slack: Setup) -> None:
    response = await slack.client.get(slack.base_url + slack.receiver.path)
    assert response.status_code == 405


# chat.postMessage with a bot token, against the local Web API stand-in


def bot_sink(
    base_url: str,
    api: SlackApiReceiver,
    *,
    token: str | None = None,
    channel: str = "C0ALARMS01",
) -> SlackSink:
    config = SlackConfig(
        name="ops-slack-bot",
        token=Secret(token or api.token),
        channel=channel,
        api_url=Secret(base_url + api.PATH),
    )
    return SlackSink(config)


async def test_slack_bot_message_accepted(
    make_signed_alarm: Callable[..., SignedAlarm], http_client: httpx.AsyncClient
) -> None:
    api = SlackApiReceiver()
    async with serve_receiver(api) as base_url:
        answer = await bot_sink(base_url, api).send(
            make_signed_alarm(), client=http_client, idempotency_key="k1"
        )

    assert answer == "200 ok: ts=1714564800.000001 channel=C0ALARMS01"
    [message] = api.messages
    assert message["channel"] == "C0ALARMS01"
    assert message["blocks"][0]["type"] == "header"


@pytest.mark.parametrize(
    "setup, error, kind",
    [
        ({"token": "xoxb-1-wrong"}, "invalid_auth", SinkPermanentError),
        ({"channel": "C0NOTHERE1"}, "channel_not_found", SinkPermanentError),
        ({"channel": "C0PRIVATE1"}, "not_in_channel", SinkPermanentError),
    ],
)
async def test_slack_bot_refusals(
    setup: dict[str, str],
    error: str,
    kind: type[Exception],
    make_signed_alarm: Callable[..., SignedAlarm],
    http_client: httpx.AsyncClient,
) -> None:
    api = SlackApiReceiver(not_member=["C0PRIVATE1"])
    async with serve_receiver(api) as base_url:
        with pytest.raises(kind) as caught:
            await bot_sink(base_url, api, **setup).send(
                make_signed_alarm(), client=http_client, idempotency_key="k1"
            )
    assert error in str(caught.value)
    assert api.token not in str(caught.value)


async def test_slack_bot_internal_error_is_retryable(
    make_signed_alarm: Callable[..., SignedAlarm], http_client: httpx.AsyncClient
) -> None:
    api = SlackApiReceiver()
    api.respond_next(200, body='{"ok": false, "error": "internal_error"}')
    async with serve_receiver(api) as base_url:
        with pytest.raises(SinkRetryableError, match="internal_error"):
            await bot_sink(base_url, api).send(
                make_signed_alarm(), client=http_client, idempotency_key="k1"
            )


async def test_slack_bot_rate_limit_per_channel(
    make_signed_alarm: Callable[..., SignedAlarm], http_client: httpx.AsyncClient
) -> None:
    api = SlackApiReceiver(burst=1, clock=FakeClock())
    async with serve_receiver(api) as base_url:
        sink = bot_sink(base_url, api)
        await sink.send(make_signed_alarm(), client=http_client, idempotency_key="k1")
        with pytest.raises(SinkRetryableError) as caught:
            await sink.send(
                make_signed_alarm(), client=http_client, idempotency_key="k2"
            )
    assert caught.value.retry_after == 1.0


async def test_slack_group_message_accepted(
    make_signed_alarm: Callable[..., SignedAlarm], http_client: httpx.AsyncClient
) -> None:
    receiver = SlackWebhookReceiver()
    group = [
        make_signed_alarm(incident=f"i{n}", summary="<!channel> " * 400)
        for n in range(30)
    ]
    async with serve_receiver(receiver) as base_url:
        await slack_sink(base_url, receiver).send_group(
            group, client=http_client, idempotency_key="g"
        )
    assert receiver.rejections == []
    [message] = receiver.messages
    assert message["blocks"][0]["text"]["text"].startswith("30 alarms: 30 firing")
    assert "<!channel>" not in str(message)


def test_slack_config_webhook_or_token_not_both() -> None:
    raw = {
        "name": "s",
        "type": "slack",
        "url": "https://hooks.slack.com/x",
        "token": "xoxb-1",
    }
    with pytest.raises(
        SinkConfigError, match=r"sinks\[0\]: url and token are both set"
    ):
        parse_sink_config(0, raw, {})


def test_slack_config_bot_needs_channel() -> None:
    raw = {"name": "s", "type": "slack", "token_env": "T"}
    with pytest.raises(
        SinkConfigError, match=r"sinks\[0\].channel: invalid value None"
    ):
        parse_sink_config(0, raw, {"T": "xoxb-1-2"})
