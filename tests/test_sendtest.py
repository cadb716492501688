"""``alarminati send-test`` and ``alarminati route``, run as real commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import yaml

from conftest import assert_no_secret
from mesh.keys import generate_key_files
from receivers import TelegramBotApi, serve_receiver

CHAT = -1001234567890


def write_config(tmp_path: Path, sinks: list[dict], **extra) -> Path:
    generate_key_files(tmp_path / "seoul.key")
    config = {
        "name": "seoul",
        "cluster": "seoul",
        "listen": "127.0.0.1:7001",
        "key_file": "seoul.key",
        "data_dir": "data",
        "archive": "archive",
        "sinks": sinks,
        **extra,
    }
    path = tmp_path / "seoul.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def run_cli(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mesh.cli", *args]
    return await trio.to_thread.run_sync(
        lambda: subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **(env or {})},
        )
    )


@pytest.mark.slow
async def test_send_test_prints_receiver_answer(tmp_path):
    api = TelegramBotApi()
    async with serve_receiver(api) as base_url:
        sink = {
            "name": "ops-telegram",
            "type": "telegram",
            "token_env": "TG_TOKEN",
            "chat_id": CHAT,
            "api_url": base_url,
        }
        config = write_config(tmp_path, [sink])
        result = await run_cli(
            "--log-level",
            "debug",
            "send-test",
            "--config",
            str(config),
            "--sink",
            "ops-telegram",
            env={"TG_TOKEN": api.token},
        )

    assert result.returncode == 0, result.stderr
    assert "delivered after 1 attempt: 200 ok: message_id=1" in result.stdout
    [message] = api.messages
    assert "send-test" in message["text"]
    assert_no_secret(api.token, result.stdout, result.stderr)
    # The temporary outbox is gone; the agent's own is untouched.
    assert list((tmp_path / "data").iterdir()) == []


@pytest.mark.slow
async def test_send_test_reports_permanent_refusal(tmp_path):
    api = TelegramBotApi(chats=[])
    async with serve_receiver(api) as base_url:
        sink = {
            "name": "ops-telegram",
            "type": "telegram",
            "token": api.token,
            "chat_id": CHAT,
            "api_url": base_url,
        }
        config = write_config(tmp_path, [sink])
        result = await run_cli(
            "send-test", "--config", str(config), "--sink", "ops-telegram"
        )

    assert result.returncode == 1
    assert "not delivered after 1 attempt: permanent_error:" in result.stdout
    assert "chat not found" in result.stdout
    assert_no_secret(api.token, result.stdout, result.stderr)


async def test_send_test_unknown_sink_exits_2(tmp_path):
    config = write_config(tmp_path, [{"name": "stdout", "type": "log"}])
    result = await run_cli("send-test", "--config", str(config), "--sink", "pager")

    assert result.returncode == 2
    assert "--sink: unknown sink 'pager', expected one of: stdout" in result.stderr


ROUTING = {
    "routes": {
        "default": {"receivers": ["stdout"]},
        "payments": {
            "receivers": ["pay"],
            "severities": ["critical"],
            "fallback": ["stdout"],
        },
    },
    "projects": {
        "payments": {
            "domains": ["*.pay.example.com"],
            "clusters": ["busan"],
            "route": "payments",
        }
    },
}
SINKS = [
    {"name": "stdout", "type": "log"},
    {"name": "pay", "type": "webhook", "url": "http://127.0.0.1:9/x"},
]


async def test_route_explain_names_route_and_reason(tmp_path):
    config = write_config(tmp_path, SINKS, **ROUTING)
    result = await run_cli(
        "route", "--config", str(config), "--explain", "https://shop.pay.example.com/"
    )

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert (
        lines[0]
        == "incident:  subject=https://shop.pay.example.com/ cluster=seoul severity=critical"
    )
    assert "project:   payments (owns the wildcard *.pay.example.com)" in lines
    assert "route:     payments (reason: wildcard_domain)" in lines
    assert "receivers: pay" in lines
    assert "fallback:  stdout after 5m of failures" in lines


async def test_route_explain_filtered_severity_and_cluster(tmp_path):
    config = write_config(tmp_path, SINKS, **ROUTING)
    result = await run_cli(
        "route",
        "--config",
        str(config),
        "--explain",
        "member/busan",
        "--cluster",
        "busan",
        "--severity",
        "info",
    )

    assert "project:   payments (owns the cluster busan)" in result.stdout
    assert "severity:  info is stopped by the filter [critical]" in result.stdout
    assert "receivers: -" in result.stdout


async def test_route_lists_routes_and_projects(tmp_path):
    config = write_config(tmp_path, SINKS, **ROUTING)
    result = await run_cli("route", "--config", str(config))

    assert result.stdout.splitlines() == [
        "route default: receivers stdout; projects -",
        "route payments: receivers pay; projects payments",
        "project payments -> payments: *.pay.example.com, cluster busan",
    ]
