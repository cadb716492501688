"""Logging setup: the text default, and JSON lines with stable field names."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys

import pytest

from mesh.logs import JsonFormatter, configure_logging, parse_fields
from tests.agent_processes import AgentProcesses


@pytest.mark.parametrize(
    ("message", "fields"),
    [
        (
            "member dead member=busan incarnation=3 previous=suspect source=local",
            {
                "member": "busan",
                "incarnation": 3,
                "previous": "suspect",
                "source": "local",
            },
        ),
        (
            "reporting incident=member-down/busan@3 status=firing rank=0 destinations=2",
            {
                "incident": "member-down/busan@3",
                "status": "firing",
                "rank": 0,
                "destinations": 2,
            },
        ),
        # The outbox's sink= is the stable field receiver.
        (
            "delivered: HTTP 200 sink=ops-slack key=a/b attempt=2",
            {"receiver": "ops-slack", "key": "a/b", "attempt": 2},
        ),
        # A value with spaces runs to the next pair or the end.
        (
            "rejected inbound message reason=bad_signature detail=frame from 'x' is bad",
            {"reason": "bad_signature", "detail": "frame from 'x' is bad"},
        ),
        (
            "waiting for hand-off delay=1.5 peer=127.0.0.1:7001",
            {"delay": 1.5, "peer": "127.0.0.1:7001"},
        ),
        ("agent stopped", {}),
        # An = inside a word is not a pair.
        ("url http://x/?a=b ok", {}),
    ],
)
def test_parse_fields_reads_key_value_pairs(message, fields):
    assert parse_fields(message) == fields


def _record(
    message: str, *args, level=logging.INFO, exc_info=None, extra=None
) -> logging.LogRecord:
    logger = logging.getLogger("mesh.agent")
    return logger.makeRecord(
        logger.name, level, __file__, 1, message, args, exc_info, extra=extra
    )


def test_json_line_has_base_fields_and_pairs():
    record = _record(
        "member %s member=%s incarnation=%d", "dead", "busan", 3, level=logging.WARNING
    )

    line = json.loads(JsonFormatter().format(record))

    assert line["level"] == "warning"
    assert line["logger"] == "mesh.agent"
    assert line["message"] == "member dead member=busan incarnation=3"
    assert line["member"] == "busan"
    assert line["incarnation"] == 3
    assert line["time"].endswith("Z") and "T" in line["time"]


def test_json_line_takes_extra_fields_over_the_message():
    record = _record(
        "sent alarm receiver=old", extra={"receiver": "ops-slack", "incident": "i-1"}
    )

    line = json.loads(JsonFormatter().format(record))

    assert line["receiver"] == "ops-slack"
    assert line["incident"] == "i-1"


def test_json_line_keeps_base_fields_from_pairs_and_holds_exceptions():
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record("odd message=x level=debug", exc_info=sys.exc_info())

    output = JsonFormatter().format(record)
    line = json.loads(output)

    assert "\n" not in output
    assert line["level"] == "info"
    assert line["message"] == "odd message=x level=debug"
    assert "ValueError: boom" in line["exception"]


def test_configure_logging_replaces_only_its_own_handler():
    root = logging.getLogger()
    other = logging.NullHandler()
    root.addHandler(other)
    first, second = io.StringIO(), io.StringIO()
    saved_level = root.level
    try:
        configure_logging("info", "text", stream=first)
        handler = configure_logging("debug", "json", stream=second)
        logging.getLogger("mesh.test").debug("probe sent peer=%s", "tokyo")

        assert other in root.handlers
        assert [h for h in root.handlers if h.get_name() == "alarminati"] == [handler]
        assert first.getvalue() == ""
        assert json.loads(second.getvalue())["peer"] == "tokyo"
    finally:
        root.removeHandler(other)
        for h in [h for h in root.handlers if h.get_name() == "alarminati"]:
            root.removeHandler(h)
        root.setLevel(saved_level)


def test_configure_logging_rejects_unknown_format():
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        configure_logging("info", "xml")


def test_text_format_is_the_default_and_human_readable():
    result = subprocess.run(
        [sys.executable, "-m", "mesh.cli", "agent", "--config", "/nonexistent.yaml"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert not result.stderr.lstrip().startswith("{")


@pytest.mark.slow
async def test_agents_write_json_lines_with_member_fields(tmp_path):
    mesh = AgentProcesses(
        tmp_path, ["a", "b"], sinks=[{"name": "stdout", "type": "log"}]
    )
    processes = {}
    logs = {}
    try:
        for name in mesh.names:
            logs[name] = open(tmp_path / f"{name}.json.log", "wb")
            command = [
                sys.executable,
                "-m",
                "mesh.cli",
                "--log-format",
                "json",
                "agent",
                "--config",
                str(mesh.config_path(name)),
            ]
            processes[name] = subprocess.Popen(
                # Logs go to standard error; the log sink prints alarms on
                # standard output.
                command,
                cwd=tmp_path,
                stdout=subprocess.DEVNULL,
                stderr=logs[name],
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
        await mesh.wait_states(["a", "b"], {"a": "alive", "b": "alive"})
        processes.pop("b").send_signal(signal.SIGKILL)
        await mesh.wait_states(["a"], {"b": "dead"})

        async def incident_logged() -> bool:
            return '"incident": ' in (tmp_path / "a.json.log").read_text()

        await mesh.wait_for(incident_logged, 30, "a log line about b's incident")
        processes["a"].send_signal(signal.SIGTERM)
        assert processes["a"].wait(15) == 0
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        for log in logs.values():
            log.close()

    lines = [
        json.loads(line) for line in (tmp_path / "a.json.log").read_text().splitlines()
    ]
    started = [x for x in lines if x["message"].startswith("agent started")]
    assert started and started[0]["member"] == "a"
    dead = [x for x in lines if x["message"].startswith("member dead")]
    assert dead and dead[0]["member"] == "b" and dead[0]["level"] == "warning"
    incidents = [x["incident"] for x in lines if "incident" in x]
    assert incidents and "b" in incidents[0]
