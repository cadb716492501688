"""Rounds of the dedup benchmark and the statistics over them.

A round fires a batch of incidents at one moment (the event). Its outcome maps
each incident to the firing notifications that reached the receiver; a
latency is the first notification's arrival minus the event, in seconds.
"""

from __future__ import annotations

import collections
import dataclasses
import socket
import statistics
from collections.abc import Callable

import trio

from dedup_http import Delivery

__all__ = [
    "RoundOutcome",
    "Summary",
    "describe_round",
    "summarize",
    "free_port",
    "wait_for_deliveries",
]


@dataclasses.dataclass(frozen=True, slots=True)
class RoundOutcome:
    """Notifications the receiver got for the incidents of one round."""

    # The member or replica killed just before the event, or None.
    killed: str | None
    # time.monotonic() of the event, in seconds.
    event: float
    # Incident number (0..incidents-1) to its firing notifications.
    deliveries: dict[int, list[Delivery]]
    # Incidents whose first-ranked reporter was the killed member.
    first_rank_killed: set[int]
    # Incident number to its resolved notifications; empty when the system
    # was set up not to send them.
    resolved: dict[int, list[Delivery]] = dataclasses.field(default_factory=dict)

    def latency(self, incident: int) -> float | None:
        arrivals = [d.arrived for d in self.deliveries[incident]]
        return min(arrivals) - self.event if arrivals else None


@dataclasses.dataclass(frozen=True, slots=True)
class Summary:
    """Deliveries and latencies over the incidents of several rounds."""

    rounds: int
    incidents: int
    # Incidents with exactly one, with none and with more than one notification.
    exactly_one: int
    missing: int
    duplicated: int
    max_deliveries: int
    # Latency of every delivered incident, in seconds.
    latencies: list[float]
    # Latency of the delivered incidents whose first rank was killed.
    handoff_latencies: list[float]
    # Notifications beyond the first, summed over incidents.
    extra: int
    # Incidents with a resolved notification, and those with more than one.
    resolved: int
    resolved_duplicated: int

    @property
    def mean_deliveries(self) -> float:
        delivered = self.incidents - self.missing
        return (delivered + self.extra) / self.incidents if self.incidents else 0.0


def describe_round(outcome: RoundOutcome) -> str:
    """Return one line on a round: delivery counts, latency, when duplicates came."""
    counts = collections.Counter(len(d) for d in outcome.deliveries.values())
    spread = ", ".join(f"{n} with {c}" for c, n in sorted(counts.items()))
    latencies = [outcome.latency(n) for n in outcome.deliveries]
    latency = median([x for x in latencies if x is not None])
    later = sorted(
        d.arrived - outcome.event
        for deliveries in outcome.deliveries.values()
        for d in sorted(deliveries, key=lambda d: d.arrived)[1:]
    )
    line = f"killed={outcome.killed or '-'}: incidents by notifications {spread}; "
    line += "latency median "
    line += "n/a" if latency is None else f"{latency:.2f}s"
    if later:
        line += (
            f"; duplicates arrived {later[0]:.1f}s to {later[-1]:.1f}s after the event"
        )
        split = sum(
            1 for d in outcome.deliveries.values() if len({x.incident for x in d}) > 1
        )
        line += f", {split} incidents under more than one id"
    if outcome.resolved:
        counts = collections.Counter(len(d) for d in outcome.resolved.values())
        spread = ", ".join(f"{n} with {c}" for c, n in sorted(counts.items()))
        line += f"; incidents by resolved notifications {spread}"
    return line


def summarize(outcomes: list[RoundOutcome]) -> Summary:
    counts, latencies, handoff, resolved = [], [], [], []
    for outcome in outcomes:
        resolved.extend(len(d) for d in outcome.resolved.values())
        for incident, deliveries in outcome.deliveries.items():
            counts.append(len(deliveries))
            latency = outcome.latency(incident)
            if latency is None:
                continue
            latencies.append(latency)
            if incident in outcome.first_rank_killed:
                handoff.append(latency)
    return Summary(
        rounds=len(outcomes),
        incidents=len(counts),
        exactly_one=sum(1 for c in counts if c == 1),
        missing=sum(1 for c in counts if c == 0),
        duplicated=sum(1 for c in counts if c > 1),
        max_deliveries=max(counts, default=0),
        latencies=latencies,
        handoff_latencies=handoff,
        extra=sum(c - 1 for c in counts if c > 1),
        resolved=sum(1 for c in resolved if c > 0),
        resolved_duplicated=sum(1 for c in resolved if c > 1),
    )


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def p90(values: list[float]) -> float | None:
    if len(values) < 2:
        return values[0] if values else None
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


def free_port() -> int:
    # Another process may take the port before the child binds it. That race
    # is rare on loopback, and losing it makes the child fail to start.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_for_deliveries(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` every 50 ms for at most ``timeout`` seconds; return it."""
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(0.05)
        return True
    return condition()
