"""Glue between the outbox and the rest of the agent: sinks as destinations.

The agent's metrics observe the outbox themselves: see mesh.metrics.AgentMetrics.
"""

from __future__ import annotations

import logging

import httpx

from sinks.base import Sink

from .alarm import SignedAlarm

__all__ = ["SinkDestination"]

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
