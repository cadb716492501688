"""Glue between the outbox and the rest of the agent: sinks and metrics."""

from __future__ import annotations

import logging

import httpx

from sinks.base import Sink

from .alarm import SignedAlarm
from .metrics import AgentMetrics

__all__ = ["SinkDestination", "MetricsObserver"]

logger = logging.getLogger(__name__)


class SinkDestination:
    """A sink as an outbox destination, sharing the agent's HTTP client."""

    def __init__(self, sink: Sink, client: httpx.AsyncClient) -> None:
        self.name = sink.name
        self._sink = sink
        self._client = client

    async def deliver(self, signed: SignedAlarm, idempotency_key: str) -> str:
        return await self._sink.send(
            signed, client=self._client, idempotency_key=idempotency_key
        )


class MetricsObserver:
    """Counts outbox outcomes in the agent's Prometheus metrics."""

    def __init__(self, metrics: AgentMetrics) -> None:
        self._metrics = metrics

    def delivered(self, destination: str, attempts: int, seconds_since_enqueue: float) -> None:
        self._metrics.deliveries.labels(destination).inc()

    def retrying(self, destination: str, error: str, delay: float) -> None:
        self._metrics.delivery_retries.labels(destination).inc()

    def dead_lettered(self, destination: str, reason: str) -> None:
        self._metrics.dead_letters.labels(destination).inc()
