"""Rules shared by every HTTP sink: status classification, transport errors, secrets."""

from __future__ import annotations

import email.utils
import logging
import socket
import sys
import traceback
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
import trio

from receivers import WebhookReceiver, serve_receiver
from sinks import (
    Secret,
    SinkPermanentError,
    SinkRetryableError,
    SlackConfig,
    WebhookConfig,
    classify_response,
    open_sink,
    parse_retry_after,
)
from sinks.http import BODY_EXCERPT_CHARS, post_alarm
from sinks.secret import MASK, RedactSecrets, mask_secret

NOW = 1_714_564_800.0  # 2024-05-01T12:00:00Z
# Long enough to be masked on its own (sinks.secret.MIN_FRAGMENT_CHARS).
SECRET_TOKEN = "s3cr3tT0kenAbCdEfGh12"
SECRET_QUERY = "sig=q9q9q9"
SECRET_PATH = f"/services/T0AAA/B0BBB/{SECRET_TOKEN}"
SECRET_URL = f"https://hooks.example.com{SECRET_PATH}?{SECRET_QUERY}"


def http_date(offset: float) -> str:
    return email.utils.formatdate(NOW + offset, usegmt=True)


def make_response(
    status: int, *, headers: dict[str, str] | None = None, body: bytes = b""
) -> httpx.Response:
    request = httpx.Request("POST", SECRET_URL)
    return httpx.Response(status, headers=headers, content=body, request=request)


OK, RETRY, GIVE_UP = "ok", "retry", "give up"

STATUS_TABLE = [
    # status, headers, outcome, retry_after
    (200, {}, OK, None),
    (201, {}, OK, None),
    (202, {}, OK, None),
    (204, {}, OK, None),
    (408, {}, RETRY, None),
    (429, {}, RETRY, None),
    (429, {"Retry-After": "7"}, RETRY, 7.0),
    (429, {"Retry-After": "0"}, RETRY, 0.0),
    (429, {"Retry-After": http_date(30)}, RETRY, 30.0),
    (429, {"Retry-After": http_date(-30)}, RETRY, 0.0),
    (429, {"Retry-After": "soon"}, RETRY, None),
    (500, {}, RETRY, None),
    (502, {}, RETRY, None),
    (503, {"Retry-After": "120"}, RETRY, None),
    (504, {}, RETRY, None),
    (599, {}, RETRY, None),
    (301, {"Location": "https://elsewhere.example/"}, GIVE_UP, None),
    (302, {}, GIVE_UP, None),
    (304, {}, GIVE_UP, None),
    (400, {}, GIVE_UP, None),
    (401, {}, GIVE_UP, None),
    (403, {}, GIVE_UP, None),
    (404, {}, GIVE_UP, None),
    (405, {}, GIVE_UP, None),
    (409, {}, GIVE_UP, None),
    (410, {}, GIVE_UP, None),
    (413, {}, GIVE_UP, None),
    (422, {}, GIVE_UP, None),
]


@pytest.mark.parametrize(("status", "headers", "outcome", "retry_after"), STATUS_TABLE)
def test_classify_response_table(
    status: int, headers: dict[str, str], outcome: str, retry_after: float | None
) -> None:
    response = make_response(status, headers=headers, body=b"nope")
    if outcome == OK:
        described = classify_response(response, sink="ops-hook", now=lambda: NOW)
        assert described.startswith(f"{status} ")
        return

    expected = SinkRetryableError if outcome == RETRY else SinkPermanentError
    with pytest.raises(expected) as caught:
        classify_response(response, sink="ops-hook", now=lambda: NOW)
    assert caught.value.status == status
    if outcome == RETRY:
        assert caught.value.retry_after == retry_after


def test_retryable_and_permanent_are_distinct() -> None:
    assert not issubclass(SinkRetryableError, SinkPermanentError)
    assert not issubclass(SinkPermanentError, SinkRetryableError)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7", 7.0),
        (" 12 ", 12.0),
        ("1.5", 1.5),
        ("0", 0.0),
        ("-1", None),
        ("inf", None),
        ("nan", None),
        ("", None),
        ("soon", None),
        (http_date(90), 90.0),
        (http_date(-90), 0.0),
        ("Wed, 01 May 2024 12:00:45 GMT", 45.0),
        ("Wed, 01 May 2024 12:00:45 -0000", 45.0),
        ("Wed, 01 May 2024 14:00:45 +0200", 45.0),
    ],
)
def test_parse_retry_after(value: str, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


def test_classify_response_message_names_sink_status_and_body() -> None:
    response = make_response(503, body=b"upstream\n  down")
    with pytest.raises(SinkRetryableError) as caught:
        classify_response(response, sink="ops-hook")
    message = str(caught.value)
    assert message.startswith("sink 'ops-hook': ")
    assert "503 service unavailable" in message
    assert "'upstream down'" in message


def test_classify_response_cuts_long_body() -> None:
    response = make_response(400, body=b"x" * 10_000)
    with pytest.raises(SinkPermanentError) as caught:
        classify_response(response, sink="ops-hook")
    assert "x" * BODY_EXCERPT_CHARS + "…" in str(caught.value)
    assert "x" * (BODY_EXCERPT_CHARS + 1) not in str(caught.value)


def test_classify_response_masks_url_echoed_in_body() -> None:
    body = f"unknown hook {SECRET_URL} (path {SECRET_PATH})"
    response = make_response(404, body=body.encode())
    with pytest.raises(SinkPermanentError) as caught:
        classify_response(response, sink="ops-slack")
    assert SECRET_TOKEN not in str(caught.value)
    assert "q9q9q9" not in str(caught.value)
    assert MASK in str(caught.value)


def test_mask_secret_masks_url_parts() -> None:
    text = f"GET {SECRET_PATH}?{SECRET_QUERY}, token {SECRET_TOKEN}"
    masked = mask_secret(text, SECRET_URL)
    assert SECRET_TOKEN not in masked
    assert "q9q9q9" not in masked
    # Short segments are words, not secrets, and stay readable.
    assert mask_secret("services are up", SECRET_URL) == "services are up"


def closed_port() -> int:
    """Return a loopback port that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def silent_server(
    *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Accept connections on loopback and never respond."""

    async def hold(stream: trio.SocketStream) -> None:
        async with stream:
            await trio.sleep_forever()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        task_status.started(port)
        await trio.serve_listeners(hold, listeners, handler_nursery=nursery)


async def test_post_alarm_connection_refused_is_retryable() -> None:
    url = Secret(f"http://127.0.0.1:{closed_port()}/hooks/{SECRET_TOKEN}")
    async with httpx.AsyncClient() as client:
        with pytest.raises(SinkRetryableError) as caught:
            await post_alarm(
                client, url, sink="ops-hook", content=b"{}", headers={}, timeout=5.0
            )
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert caught.value.status is None
    assert caught.value.retry_after is None


async def test_post_alarm_timeout_is_retryable(nursery: trio.Nursery) -> None:
    port = await nursery.start(silent_server)
    url = Secret(f"http://127.0.0.1:{port}/hooks/{SECRET_TOKEN}")
    async with httpx.AsyncClient() as client:
        with pytest.raises(SinkRetryableError) as caught:
            await post_alarm(
                client, url, sink="ops-hook", content=b"{}", headers={}, timeout=0.05
            )
    cause = caught.value.__cause__
    assert isinstance(cause, (httpx.TimeoutException, trio.TooSlowError))


async def test_post_alarm_unsupported_scheme_is_permanent() -> None:
    url = Secret(f"ftp://127.0.0.1/hooks/{SECRET_TOKEN}")
    async with httpx.AsyncClient() as client:
        with pytest.raises(SinkPermanentError) as caught:
            await post_alarm(
                client, url, sink="ops-hook", content=b"{}", headers={}, timeout=5.0
            )
    assert SECRET_TOKEN not in str(caught.value)


# Secrets must stay out of errors, tracebacks, reprs and logs, whichever way a
# send fails. Each case builds a sink whose URL carries SECRET_TOKEN.

FAILURES = ["answer-500-echoing-url", "answer-404", "connection-refused", "timeout"]


@pytest.fixture
async def failing_url(
    request: pytest.FixtureRequest, nursery: trio.Nursery
) -> AsyncIterator[Callable[[str], str]]:
    """Yield a function that returns a secret URL failing as the test requests."""
    failure = request.param
    receiver = WebhookReceiver()
    async with serve_receiver(receiver) as base_url:
        if failure == "answer-500-echoing-url":
            echo = f"no hook {base_url}{SECRET_PATH}?{SECRET_QUERY}"
            receiver.respond_next(500, 10, body=f"{echo} (token {SECRET_TOKEN})")
        elif failure == "answer-404":
            receiver.respond_next(404, 10, body="no_service")
        elif failure == "connection-refused":
            base_url = f"http://127.0.0.1:{closed_port()}"
        elif failure == "timeout":
            port = await nursery.start(silent_server)
            base_url = f"http://127.0.0.1:{port}"
        yield lambda path: f"{base_url}{path}"


@pytest.mark.parametrize("failing_url", FAILURES, indirect=True)
@pytest.mark.parametrize("sink_type", ["webhook", "slack"])
async def test_sink_hides_secret_url(
    failing_url: Callable[[str], str],
    sink_type: str,
    make_signed_alarm: Callable[..., object],
    signing_key: object,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = Secret(failing_url(f"{SECRET_PATH}?{SECRET_QUERY}"))
    config_type = WebhookConfig if sink_type == "webhook" else SlackConfig
    config = config_type(name="ops", url=url, timeout=0.05)
    sink = open_sink(config, signing_key=signing_key, signer="seoul")
    # Long enough that the Slack sink logs a truncation warning too.
    signed = make_signed_alarm(subject="x" * 500)
    caplog.set_level(logging.DEBUG)

    async with httpx.AsyncClient() as client:
        with pytest.raises((SinkRetryableError, SinkPermanentError)) as caught:
            await sink.send(signed, client=client, idempotency_key="k1")

    shown = [
        str(caught.value),
        repr(caught.value),
        "".join(traceback.format_exception(caught.value)),
        repr(config),
        str(config),
        repr(sink),
    ]
    shown += [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("sinks")
    ]
    for text in shown:
        assert SECRET_TOKEN not in text
        assert SECRET_QUERY not in text


async def test_redact_secrets_masks_httpx_request_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver = WebhookReceiver()
    async with serve_receiver(receiver) as base_url:
        url = Secret(f"{base_url}/hooks/{SECRET_TOKEN}?{SECRET_QUERY}")
        caplog.set_level(logging.INFO, logger="httpx")
        caplog.handler.addFilter(RedactSecrets([url]))
        try:
            async with httpx.AsyncClient() as client:
                await post_alarm(
                    client, url, sink="ops-hook", content=b"{}", headers={}, timeout=5.0
                )
        finally:
            caplog.handler.filters.clear()

    # httpx logs each request with its URL at INFO; the filter must mask it.
    httpx_records = [r for r in caplog.records if r.name.startswith("httpx")]
    assert httpx_records
    assert any(MASK in record.getMessage() for record in httpx_records)
    assert SECRET_TOKEN not in caplog.text
    assert SECRET_QUERY not in caplog.text


def test_redact_secrets_masks_tracebacks() -> None:
    url = Secret(SECRET_URL)
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, None)
    try:
        raise ValueError(f"bad url {SECRET_URL}")
    except ValueError:
        record.exc_info = sys.exc_info()
    RedactSecrets([url]).filter(record)
    formatted = logging.Formatter().format(record)
    assert SECRET_TOKEN not in formatted
    assert "ValueError" in formatted


def test_secret_repr_and_str_are_masked() -> None:
    secret = Secret(SECRET_URL)
    assert repr(secret) == "Secret('***')"
    assert str(secret) == "***"
    assert f"{secret}" == "***"
    assert secret.reveal() == SECRET_URL
