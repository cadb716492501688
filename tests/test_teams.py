"""The Teams sink: Adaptive Cards, and sending to a local Workflows stand-in."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import FakeClock, as_request, assert_no_secret, random_alarms
from mesh.alarm import Severity, Status
from receivers import (
    TEAMS_MESSAGE_BYTES,
    TeamsWorkflowReceiver,
    _check_teams_payload,
    serve_receiver,
)
from sinks import Secret, SinkPermanentError, SinkRetryableError
from sinks._chat import Links, json_body
from sinks.teams import MAX_MESSAGE_BYTES, TeamsConfig, TeamsSink, render_card


def sink_for(
    base_url: str, flow: TeamsWorkflowReceiver, sig: str | None = None
) -> TeamsSink:
    url = f"{base_url}{flow.path}?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig={sig or flow.sig}"
    return TeamsSink(TeamsConfig(name="ops-teams", url=Secret(url)))


def card_of(payload):
    [attachment] = payload["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    return attachment["content"]


@pytest.mark.parametrize(
    "severity, status, colour",
    [
        (Severity.CRITICAL, Status.FIRING, "Attention"),
        (Severity.WARNING, Status.FIRING, "Warning"),
        (Severity.INFO, Status.FIRING, "Accent"),
        (Severity.CRITICAL, Status.RESOLVED, "Good"),
    ],
)
def test_render_colour_by_severity(make_signed_alarm, severity, status, colour):
    alarm = make_signed_alarm(severity=severity, status=status).alarm
    title = card_of(render_card([alarm]).payload)["body"][0]["items"][0]

    assert title["color"] == colour


def test_render_links_as_actions(make_signed_alarm):
    links = Links(ui_url="https://ui.example.com/{incident}")
    items = card_of(render_card([make_signed_alarm().alarm], links).payload)["body"][0][
        "items"
    ]

    assert items[-1] == {
        "type": "ActionSet",
        "actions": [
            {
                "type": "Action.OpenUrl",
                "title": "Open in UI",
                "url": "https://ui.example.com/member-down%2Fbusan%403",
            }
        ],
    }


def test_render_oversized_fits(make_signed_alarm):
    alarms = [
        make_signed_alarm(incident=f"i{n}", summary="ü" * 20000).alarm
        for n in range(10)
    ]
    assert len(json_body(render_card(alarms).payload)) <= MAX_MESSAGE_BYTES


async def test_sink_accepted_with_202(make_signed_alarm, http_client):
    flow = TeamsWorkflowReceiver()
    async with serve_receiver(flow) as base_url:
        answer = await sink_for(base_url, flow).send_group(
            [make_signed_alarm(incident=f"i{n}") for n in range(3)],
            client=http_client,
            idempotency_key="g",
        )

    assert answer == "202 accepted"
    assert flow.rejections == []
    body = card_of(flow.messages[0])["body"]
    assert body[0]["text"] == "3 alarms: 3 firing"


async def test_sink_429_retryable(make_signed_alarm, http_client):
    flow = TeamsWorkflowReceiver(burst=1, clock=FakeClock())
    async with serve_receiver(flow) as base_url:
        sink = sink_for(base_url, flow)
        await sink.send(make_signed_alarm(), client=http_client, idempotency_key="k1")
        with pytest.raises(SinkRetryableError):
            await sink.send(
                make_signed_alarm(), client=http_client, idempotency_key="k2"
            )


async def test_sink_wrong_sig_is_permanent_and_hidden(make_signed_alarm, http_client):
    flow = TeamsWorkflowReceiver()
    wrong = "S" * 43
    async with serve_receiver(flow) as base_url:
        with pytest.raises(SinkPermanentError) as caught:
            await sink_for(base_url, flow, sig=wrong).send(
                make_signed_alarm(), client=http_client, idempotency_key="k1"
            )
    assert caught.value.status == 401
    assert_no_secret(wrong, str(caught.value))


@settings(max_examples=60, deadline=None)
@given(
    summary=st.text(max_size=20000),
    subject=st.text(min_size=1, max_size=400),
    count=st.integers(1, 10),
)
def test_render_always_within_teams_limits(summary, subject, count):
    request = as_request(render_card(random_alarms(summary, count, subject)).payload)

    assert len(request.body) <= TEAMS_MESSAGE_BYTES
    assert _check_teams_payload(request) is None
