"""A real Prometheus server scraping three real agents on loopback.

The server is Debian's ``prometheus`` package (scripts/install-test-deps), bound
to 127.0.0.1 with a temporary storage folder and a one-second scrape interval,
and loaded with deploy/prometheus/alarminati-rules.yml. The test asks it,
through its HTTP API, what an operator's Prometheus would tell: a member's
state change, the targets' health, the rules' health, and whether every query
of the Grafana dashboard runs. The server is stopped by its PID afterwards.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import trio
import yaml

from tests.agent_processes import AgentProcesses, free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "deploy" / "prometheus" / "alarminati-rules.yml"
DASHBOARD = REPO / "deploy" / "prometheus" / "grafana-dashboard.json"
NAMES = ["a", "b", "c"]


class PrometheusServer:
    """One Prometheus process on loopback, scraping ``targets``."""

    def __init__(self, root: Path, targets: list[str]) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus not found; run scripts/install-test-deps")
        self.address = f"127.0.0.1:{free_port()}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {
                    "job_name": "alarminati",
                    "scrape_timeout": "900ms",
                    "static_configs": [{"targets": targets}],
                }
            ],
        }
        config_path = root / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.log_path = root / "prometheus.log"
        command = [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={root / 'tsdb'}",
            f"--web.listen-address={self.address}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
        ]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT
            )

    def stop(self) -> None:
        # By PID: this process only, never every prometheus on the machine.
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    async def get(self, path: str, **params) -> dict:
        async with httpx.AsyncClient() as client:
            response = await client.get(
                f"http://{self.address}{path}", params=params, timeout=5
            )
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]

    async def query(self, expression: str) -> list[dict]:
        return (await self.get("/api/v1/query", query=expression))["result"]

    async def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                assert self.process.poll() is None, self.log_path.read_text()
                try:
                    response = await client.get(
                        f"http://{self.address}/-/ready", timeout=1
                    )
                    if response.status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await trio.sleep(0.2)
        raise AssertionError(f"prometheus not ready:\n{self.log_path.read_text()}")


async def wait_until(condition, timeout: float, what: str) -> None:
    with trio.move_on_after(timeout):
        while not await condition():
            await trio.sleep(0.5)
        return
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    # The variables Grafana fills in, as it would for "All" over 1s scrapes.
    return [
        q.replace("$instance", ".*").replace("$__rate_interval", "1m") for q in queries
    ]


async def test_prometheus_sees_a_member_die_through_the_agents_metrics(tmp_path):
    (tmp_path / "mesh").mkdir()
    mesh = AgentProcesses(
        tmp_path / "mesh", NAMES, sinks=[{"name": "stdout", "type": "log"}]
    )
    mesh.start_all()
    prometheus = PrometheusServer(tmp_path, [mesh.addresses[n] for n in NAMES])
    a, c = mesh.addresses["a"], mesh.addresses["c"]
    try:
        await prometheus.wait_ready()
        await mesh.wait_states(NAMES, {n: "alive" for n in NAMES})

        # Every agent is scraped, and reports three alive members.
        async def all_up() -> bool:
            up = await prometheus.query('up{job="alarminati"} == 1')
            return len(up) == 3

        await wait_until(all_up, 30, "three targets up")

        async def three_alive() -> bool:
            seen = await prometheus.query('alarminati_members{state="alive"} == 3')
            return len(seen) == 3

        await wait_until(three_alive, 30, "three members alive in every agent's view")

        # c dies; a and b declare it dead, and Prometheus records the change.
        mesh.kill("c")

        async def c_dead() -> bool:
            query = 'alarminati_member_state_changes_total{member="c", state="dead"}'
            return len(await prometheus.query(f"{query} >= 1")) == 2

        await wait_until(c_dead, 60, "a and b to count c's death")
        dead = await prometheus.query(
            f'alarminati_members{{state="dead", instance="{a}"}}'
        )
        assert float(dead[0]["value"][1]) == 1
        went_suspect = await prometheus.query(
            'max by (instance) (max_over_time(alarminati_members{state="suspect"}[5m]))'
        )
        assert {r["metric"]["instance"] for r in went_suspect} >= {a}
        down = await prometheus.query(f'up{{instance="{c}"}}')
        assert down[0]["value"][1] == "0"

        # The change over time, as a graph would show it: dead went 0 -> 1.
        now = time.time()
        series = (
            await prometheus.get(
                "/api/v1/query_range",
                query=f'alarminati_members{{state="dead", instance="{a}"}}',
                start=now - 120,
                end=now,
                step=1,
            )
        )["result"]
        values = [float(v) for _, v in series[0]["values"]]
        assert values[0] == 0 and values[-1] == 1

        # The rules load and evaluate without error, and every dashboard
        # query is valid PromQL that this server runs.
        groups = (await prometheus.get("/api/v1/rules"))["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert len(rules) == len(
            yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
        )
        assert all(r["health"] in ("ok", "unknown") for r in rules), rules
        for query in _dashboard_queries():
            await prometheus.query(query)
        assert any(
            r["metric"]["member"] == "a"
            for r in await prometheus.query("alarminati_build_info")
        )
    finally:
        prometheus.stop()
        mesh.stop_all()

    assert prometheus.process.returncode is not None
