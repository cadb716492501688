"""Parsing of the sinks section, secrets in it, and building sinks from it."""

from __future__ import annotations

import io
import math
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from mesh.alarm import SignedAlarm, Status
from mesh.keys import SigningKey
from sinks import (
    LogConfig,
    LogSink,
    Secret,
    Sink,
    SinkConfigError,
    SinkRetryableError,
    SlackConfig,
    SlackSink,
    WebhookConfig,
    WebhookSink,
    open_sink,
    parse_sink_config,
    parse_sink_configs,
    resolve_secret,
)
from sinks.log import format_line

TOKEN = "SlackT0kenAbCdEfGh1234"
SLACK_URL = f"https://hooks.slack.com/services/T0AAA/B0BBB/{TOKEN}"
ENVIRON = {"SLACK_WEBHOOK_URL": SLACK_URL, "EMPTY": "  "}


# Valid entries


def test_parse_webhook_inline_url() -> None:
    raw = {"name": "ops-hook", "type": "webhook", "url": "http://127.0.0.1:9000/alarms"}
    config = parse_sink_config(0, raw, ENVIRON)
    assert config == WebhookConfig(
        name="ops-hook", url=Secret("http://127.0.0.1:9000/alarms"), timeout=10.0
    )
    assert config.url.source == "sinks[0].url"


def test_parse_slack_url_from_environment() -> None:
    raw = {"name": "ops-slack", "type": "slack", "url_env": "SLACK_WEBHOOK_URL"}
    config = parse_sink_config(1, raw, ENVIRON)
    assert isinstance(config, SlackConfig)
    assert config.url.reveal() == SLACK_URL
    assert config.url.source == "sinks[1].url_env"


def test_parse_url_from_file_is_stripped(tmp_path: Path) -> None:
    path = tmp_path / "slack-url"
    path.write_text(f"\n  {SLACK_URL}  \n")
    raw = {"name": "ops-slack", "type": "slack", "url_file": str(path)}
    config = parse_sink_config(0, raw, {})
    assert config.url.reveal() == SLACK_URL


def test_parse_log() -> None:
    assert parse_sink_config(2, {"name": "stdout", "type": "log"}, {}) == LogConfig(
        name="stdout"
    )


@pytest.mark.parametrize(("value", "expected"), [(5, 5.0), (0.5, 0.5), (30, 30.0)])
def test_parse_timeout(value: Any, expected: float) -> None:
    raw = {"name": "ops", "type": "webhook", "url": "https://h.example/"}
    raw["timeout"] = value
    config = parse_sink_config(0, raw, {})
    assert config.timeout == expected
    assert isinstance(config.timeout, float)


def test_parse_sink_configs_list() -> None:
    configs = parse_sink_configs(
        [
            {"name": "ops-hook", "type": "webhook", "url": "http://127.0.0.1:9/a"},
            {"name": "ops-slack", "type": "slack", "url_env": "SLACK_WEBHOOK_URL"},
            {"name": "stdout", "type": "log"},
        ],
        ENVIRON,
    )
    assert [type(c) for c in configs] == [WebhookConfig, SlackConfig, LogConfig]
    assert [c.name for c in configs] == ["ops-hook", "ops-slack", "stdout"]


def test_parse_sink_configs_empty_list() -> None:
    assert parse_sink_configs([], {}) == ()


# Invalid entries: the message names the key, the bad value and what is expected.

INVALID = [
    (
        "not a mapping",
        SLACK_URL,
        "sinks[0]: invalid value of type str, "
        "expected a mapping with keys name and type",
    ),
    (
        "missing type",
        {"name": "ops"},
        "sinks[0].type: missing, expected one of webhook, slack, telegram, discord, googlechat, teams, log",
    ),
    (
        "unknown type",
        {"name": "ops", "type": "pager"},
        "sinks[0].type: invalid value 'pager', expected one of webhook, slack, telegram, discord, googlechat, teams, log",
    ),
    (
        "unknown key",
        {"name": "ops", "type": "webhook", "url": "http://h.example/", "urll": "x"},
        "sinks[0].urll: unknown key for type 'webhook', "
        "expected one of name, type, url, url_env, url_file, timeout",
    ),
    (
        "url on a log sink",
        {"name": "ops", "type": "log", "url": "http://h.example/"},
        "sinks[0].url: unknown key for type 'log', expected one of name, type",
    ),
    (
        "non-string key",
        {"name": "ops", "type": "log", 5: "x"},
        "sinks[0]: invalid key 5, expected a string",
    ),
    (
        "missing name",
        {"type": "log"},
        "sinks[0].name: missing, expected a name such as 'ops-slack'",
    ),
    (
        "name with capitals and spaces",
        {"name": "Ops Hook", "type": "log"},
        "sinks[0].name: invalid value 'Ops Hook', expected lowercase letters, "
        "digits and '-', starting with a letter or digit",
    ),
    (
        "name starting with a dash",
        {"name": "-ops", "type": "log"},
        "sinks[0].name: invalid value '-ops', expected lowercase letters, "
        "digits and '-', starting with a letter or digit",
    ),
    (
        "name not a string",
        {"name": 7, "type": "log"},
        "sinks[0].name: invalid value 7, expected a string, got int",
    ),
    (
        "missing url",
        {"name": "ops", "type": "webhook"},
        "sinks[0]: missing 'url', expected exactly one of url, url_env, url_file",
    ),
    (
        "url and url_env",
        {"name": "ops", "type": "slack", "url": SLACK_URL, "url_env": "SLACK_URL"},
        "sinks[0]: url and url_env are both set, "
        "expected exactly one of url, url_env, url_file",
    ),
    (
        "empty url",
        {"name": "ops", "type": "webhook", "url": "  "},
        "sinks[0].url: empty value, expected the url",
    ),
    (
        "url not a string",
        {"name": "ops", "type": "webhook", "url": ["http://h.example/"]},
        "sinks[0].url: invalid value of type list, expected a string",
    ),
    (
        "unset environment variable",
        {"name": "ops", "type": "slack", "url_env": "NOT_SET_ANYWHERE"},
        "sinks[0].url_env: environment variable 'NOT_SET_ANYWHERE' is not set",
    ),
    (
        "empty environment variable",
        {"name": "ops", "type": "slack", "url_env": "EMPTY"},
        "sinks[0].url_env: environment variable 'EMPTY' is empty",
    ),
    (
        "missing file",
        {"name": "ops", "type": "slack", "url_file": "/nonexistent/slack-url"},
        "sinks[0].url_file: cannot read file '/nonexistent/slack-url': "
        "No such file or directory",
    ),
    (
        "unsupported scheme",
        {"name": "ops", "type": "webhook", "url": f"ftp://files.example/{TOKEN}"},
        "sinks[0].url: invalid scheme 'ftp', expected http or https",
    ),
    (
        "missing scheme",
        {"name": "ops", "type": "slack", "url": f"hooks.slack.com/services/{TOKEN}"},
        "sinks[0].url: missing scheme, expected an http or https URL such as "
        "https://host/path",
    ),
    (
        "missing host",
        {"name": "ops", "type": "webhook", "url": f"http:///{TOKEN}"},
        "sinks[0].url: missing host, expected an http or https URL such as "
        "https://host/path",
    ),
    (
        "invalid URL",
        {"name": "ops", "type": "webhook", "url": f"http://[::1/{TOKEN}"},
        "sinks[0].url: invalid URL, expected an http or https URL such as "
        "https://host/path",
    ),
    (
        "zero timeout",
        {"name": "ops", "type": "webhook", "url": "http://h.example/", "timeout": 0},
        "sinks[0].timeout: invalid value 0, "
        "expected a number of seconds greater than 0",
    ),
    (
        "negative timeout",
        {"name": "ops", "type": "webhook", "url": "http://h.example/", "timeout": -1.5},
        "sinks[0].timeout: invalid value -1.5, "
        "expected a number of seconds greater than 0",
    ),
    (
        "infinite timeout",
        {"name": "ops", "type": "webhook", "url": "http://h.e/", "timeout": math.inf},
        "sinks[0].timeout: invalid value inf, "
        "expected a number of seconds greater than 0",
    ),
    (
        "timeout with unit",
        {"name": "ops", "type": "slack", "url": SLACK_URL, "timeout": "10s"},
        "sinks[0].timeout: invalid value '10s', expected a number of seconds, got str",
    ),
    (
        "boolean timeout",
        {"name": "ops", "type": "slack", "url": SLACK_URL, "timeout": True},
        "sinks[0].timeout: invalid value True, expected a number of seconds, got bool",
    ),
]


@pytest.mark.parametrize(
    ("raw", "message"),
    [(raw, message) for _, raw, message in INVALID],
    ids=[case for case, _, _ in INVALID],
)
def test_parse_invalid_entry(raw: Any, message: str) -> None:
    with pytest.raises(SinkConfigError) as caught:
        parse_sink_config(0, raw, ENVIRON)
    assert str(caught.value) == message
    assert TOKEN not in str(caught.value)


def test_parse_error_names_entry_index() -> None:
    raw = {"name": "ops-slack", "type": "slack", "url_env": "SLACK_WEBHOOK_URL"}
    with pytest.raises(SinkConfigError) as caught:
        parse_sink_config(1, raw, {})
    assert str(caught.value) == (
        "sinks[1].url_env: environment variable 'SLACK_WEBHOOK_URL' is not set"
    )


def test_parse_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "slack-url"
    path.write_text("\n")
    raw = {"name": "ops", "type": "slack", "url_file": str(path)}
    with pytest.raises(SinkConfigError) as caught:
        parse_sink_config(0, raw, {})
    assert str(caught.value) == f"sinks[0].url_file: file {str(path)!r} is empty"


def test_parse_non_utf8_file_hides_content(tmp_path: Path) -> None:
    path = tmp_path / "slack-url"
    path.write_bytes(b"https://h.example/\xffSecretBytes")
    raw = {"name": "ops", "type": "slack", "url_file": str(path)}
    with pytest.raises(SinkConfigError) as caught:
        parse_sink_config(0, raw, {})
    assert str(caught.value) == (
        f"sinks[0].url_file: cannot read file {str(path)!r}: not UTF-8 text"
    )
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_parse_scheme_error_names_environment_key() -> None:
    raw = {"name": "ops", "type": "slack", "url_env": "BAD_URL"}
    with pytest.raises(SinkConfigError) as caught:
        parse_sink_config(3, raw, {"BAD_URL": f"ws://h.example/{TOKEN}"})
    assert str(caught.value) == (
        "sinks[3].url_env: invalid scheme 'ws', expected http or https"
    )


def test_parse_sink_configs_rejects_duplicate_names() -> None:
    with pytest.raises(SinkConfigError) as caught:
        parse_sink_configs(
            [
                {"name": "ops", "type": "log"},
                {"name": "other", "type": "log"},
                {"name": "ops", "type": "webhook", "url": "http://h.example/"},
            ],
            {},
        )
    assert str(caught.value) == (
        "sinks[2].name: duplicate name 'ops', already used by sinks[0]"
    )


def test_parse_sink_configs_rejects_mapping() -> None:
    with pytest.raises(SinkConfigError) as caught:
        parse_sink_configs({"name": "ops", "type": "log"}, {})
    assert str(caught.value) == "sinks: invalid value of type dict, expected a list"


def test_sink_config_error_is_value_error() -> None:
    assert issubclass(SinkConfigError, ValueError)


def test_resolve_secret_uses_where_in_messages() -> None:
    with pytest.raises(SinkConfigError) as caught:
        resolve_secret({}, "token", "receivers[4]", {})
    assert str(caught.value) == (
        "receivers[4]: missing 'token', "
        "expected exactly one of token, token_env, token_file"
    )


def test_config_repr_hides_url() -> None:
    raw = {"name": "ops", "type": "slack", "url": SLACK_URL}
    config = parse_sink_config(0, raw, {})
    assert TOKEN not in repr(config)
    assert "Secret('***')" in repr(config)


def test_secret_equality_and_pickling() -> None:
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    with pytest.raises(TypeError):
        pickle.dumps(Secret("a"))


# Building sinks


@pytest.mark.parametrize(
    ("raw", "sink_type"),
    [
        ({"name": "hook", "type": "webhook", "url": "http://h.example/"}, WebhookSink),
        ({"name": "ops-slack", "type": "slack", "url": SLACK_URL}, SlackSink),
        ({"name": "stdout", "type": "log"}, LogSink),
    ],
)
def test_open_sink_builds_matching_sink(
    raw: dict[str, Any], sink_type: type, signing_key: SigningKey
) -> None:
    config = parse_sink_config(0, raw, {})
    sink = open_sink(config, signing_key=signing_key, signer="seoul")
    assert type(sink) is sink_type
    assert isinstance(sink, Sink)
    assert sink.name == raw["name"]


def test_open_sink_rejects_unknown_config(signing_key: SigningKey) -> None:
    with pytest.raises(TypeError):
        not_a_config: Any = object()
        open_sink(not_a_config, signing_key=signing_key, signer="seoul")


async def test_log_sink_prints_one_line(
    capsys: pytest.CaptureFixture[str],
    make_signed_alarm: Callable[..., SignedAlarm],
    signing_key: SigningKey,
) -> None:
    sink = open_sink(LogConfig(name="stdout"), signing_key=signing_key, signer="seoul")
    signed = make_signed_alarm(summary="line one\nline two")
    async with httpx.AsyncClient() as client:
        described = await sink.send(signed, client=client, idempotency_key="k1")

    assert described == "printed"
    assert capsys.readouterr().out == (
        "2024-05-01T12:00:00.000Z FIRING critical member/busan cluster=busan "
        "reporter=seoul incident=member-down/busan@3 since=2024-05-01T11:58:30.000Z: "
        "line one\\nline two\n"
    )


def test_log_line_of_resolved_alarm_has_end(
    make_signed_alarm: Callable[..., SignedAlarm],
) -> None:
    alarm = make_signed_alarm(status=Status.RESOLVED, ended_at=1_714_564_800.0).alarm
    line = format_line(alarm)
    assert " RESOLVED " in line
    assert "ended=2024-05-01T12:00:00.000Z" in line


class BrokenPipe(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


async def test_log_sink_write_failure_is_retryable(
    make_signed_alarm: Callable[..., SignedAlarm],
) -> None:
    sink = LogSink(LogConfig(name="stdout"), stream=BrokenPipe())
    async with httpx.AsyncClient() as client:
        with pytest.raises(SinkRetryableError) as caught:
            await sink.send(make_signed_alarm(), client=client, idempotency_key="k1")
    message = str(caught.value)
    assert message.startswith("sink 'stdout': cannot write to standard output")
    assert isinstance(caught.value.__cause__, BrokenPipeError)
