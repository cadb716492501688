"""run_check's error handling and run_checks_forever's schedule, on trio's MockClock."""

from __future__ import annotations

import logging
import random
from functools import partial
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from mesh.checks.config import parse_check_config, parse_checks
from mesh.checks.observation import CheckReason, Observation
from mesh.checks.runner import run_check, run_checks_forever


def make_http_check(**keys: Any) -> Any:
    raw = {"name": "shop", "kind": "http", "url": "https://shop.example/", **keys}
    return parse_check_config(0, raw)


async def test_unexpected_error_becomes_observation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def crash(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("transport bug")

    async with httpx.AsyncClient(transport=httpx.MockTransport(crash)) as client:
        observation = await run_check(make_http_check(), client=client)

    assert observation.ok is False
    assert observation.reason == CheckReason.ERROR
    assert observation.summary == (
        "GET https://shop.example/ failed: RuntimeError: transport bug"
    )
    assert "check raised an unexpected error check=shop" in caplog.text


async def test_deadline_on_mock_clock(autojump_clock: trio.testing.MockClock) -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    started = trio.current_time()
    async with httpx.AsyncClient(transport=httpx.MockTransport(hang)) as client:
        observation = await run_check(make_http_check(timeout=4), client=client)

    assert trio.current_time() - started == 4.0
    assert observation.reason == CheckReason.TIMEOUT
    assert observation.summary == (
        "GET https://shop.example/ failed: no result within 4s"
    )


async def test_cancellation_propagates(autojump_clock: trio.testing.MockClock) -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    result = []
    async with httpx.AsyncClient(transport=httpx.MockTransport(hang)) as client:
        with trio.move_on_after(1) as scope:
            result.append(await run_check(make_http_check(timeout=4), client=client))

    assert scope.cancelled_caught
    assert result == []


async def test_checks_run_on_their_intervals(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mesh.checks.runner")
    # Numeric hosts resolve without a thread, so the virtual clock is exact.
    checks = parse_checks(
        [
            {"name": "fast", "kind": "dns", "host": "127.0.0.1", "interval": 10,
             "timeout": 1},
            {"name": "slow", "kind": "dns", "host": "127.0.0.1", "interval": 30,
             "timeout": 1, "expect": ["192.0.2.1"]},
        ]
    )
    seen: list[tuple[float, Observation]] = []
    start = trio.current_time()

    def record(observation: Observation) -> None:
        seen.append((trio.current_time() - start, observation))

    async with trio.open_nursery() as nursery:
        run = partial(run_checks_forever, rng=random.Random(7))
        await nursery.start(run, checks, record)
        await trio.sleep(65)
        nursery.cancel_scope.cancel()

    offsets = random.Random(7)
    fast_offset = offsets.uniform(0, 1.0)
    slow_offset = offsets.uniform(0, 3.0)
    fast = [at for at, o in seen if o.check == "fast"]
    slow = [at for at, o in seen if o.check == "slow"]
    assert fast == pytest.approx([fast_offset + 10 * i for i in range(7)])
    assert slow == pytest.approx([slow_offset + 30 * i for i in range(3)])
    assert all(o.ok for _, o in seen if o.check == "fast")
    slow_reasons = {o.reason for _, o in seen if o.check == "slow"}
    assert slow_reasons == {CheckReason.DNS_MISMATCH}
    # Three failed runs of "slow", one warning: only changes are logged.
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "check failing check=slow reason=dns_mismatch" in warnings[0].getMessage()


async def test_no_checks_returns() -> None:
    seen: list[Observation] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(run_checks_forever, (), seen.append)

    assert seen == []


def test_observation_reason_must_match_ok() -> None:
    with pytest.raises(ValueError, match="contradicts ok=True"):
        Observation(check="a", ok=True, summary="", latency=None, reason="timeout")
