"""Real agents route a real alarm to the owning team's receiver, and keep its
secrets out of their logs, /peers, /metrics, the outbox and the archive."""

from __future__ import annotations

import httpx
import pytest
import trio

from agent_processes import AgentProcesses
from conftest import assert_no_secret
from receivers import (
    DiscordWebhookReceiver,
    TelegramBotApi,
    WebhookReceiver,
    serve_receiver,
)

pytestmark = pytest.mark.slow

CHAT = -1001234567890


async def test_alarm_routed_by_cluster_and_secrets_stay_hidden(tmp_path):
    telegram, discord, hook = (
        TelegramBotApi(),
        DiscordWebhookReceiver(),
        WebhookReceiver(),
    )
    # The first answer quotes the token back, as a misbehaving proxy might.
    telegram.respond_next(
        500, body=f"upstream failed for /bot{telegram.token}/sendMessage"
    )
    async with (
        serve_receiver(telegram) as tg_url,
        serve_receiver(discord) as dc_url,
        serve_receiver(hook) as hook_url,
    ):
        discord_url = dc_url + discord.path
        sinks = [
            {"name": "ops-hook", "type": "webhook", "url": f"{hook_url}/alarms"},
            {
                "name": "platform-tg",
                "type": "telegram",
                "token_env": "TG_TOKEN",
                "chat_id": CHAT,
                "api_url": tg_url,
            },
            {"name": "platform-discord", "type": "discord", "url_env": "DISCORD_URL"},
        ]
        env = {"TG_TOKEN": telegram.token, "DISCORD_URL": discord_url}
        mesh = AgentProcesses(
            tmp_path, ["seoul", "busan", "daegu"], sinks=sinks, env=env
        )
        routing = {
            "routes": {
                "default": {"receivers": ["ops-hook"]},
                "platform": {
                    "receivers": ["platform-tg", "platform-discord"],
                    "group_window": 1,
                },
            },
            "projects": {"platform": {"clusters": ["busan"], "route": "platform"}},
            "outbox": {"initial_delay": 0.2, "max_delay": 1},
        }
        for name in mesh.names:
            mesh.write_config(name, **routing)
        try:
            mesh.start_all()
            await mesh.wait_states(mesh.names, {n: "alive" for n in mesh.names})
            mesh.kill("busan")
            with trio.fail_after(40):
                await telegram.wait_for_messages(1)
                await discord.wait_for_messages(1)

            # Routed by the cluster to the platform team only.
            assert "member/busan" in telegram.messages[0]["text"]
            assert discord.messages[0]["embeds"][0]["title"].endswith("member/busan")
            # (Another member falsely suspected on a loaded machine would go
            # to the default route; busan's death must not.)
            assert not [
                r for r in hook.requests if r.json and r.json["cluster"] == "busan"
            ]

            pages = []
            async with httpx.AsyncClient() as client:
                for name in ("seoul", "daegu"):
                    for path in ("/peers", "/metrics"):
                        response = await client.get(
                            f"http://{mesh.addresses[name]}{path}"
                        )
                        pages.append(response.text)
        finally:
            mesh.stop_all()

    logs = [mesh.log(name) for name in mesh.names]
    assert any("route=platform" in log for log in logs)
    assert any("upstream failed" in log for log in logs), "the 500 was not logged"
    stored = [
        path.read_bytes().decode("utf-8", "replace")
        for folder in (tmp_path / "archive", tmp_path / "data")
        for path in folder.rglob("*")
        if path.is_file()
    ]
    texts = [*logs, *pages, *stored]
    assert_no_secret(telegram.token, *texts)
    assert_no_secret(discord.token, *texts)
    assert_no_secret(discord_url, *texts)
