"""Timing profiles: ``local``, ``lan`` and ``wan``.

The SWIM values start from memberlist's ``DefaultLocalConfig``,
``DefaultLANConfig`` and ``DefaultWANConfig`` (hashicorp/memberlist config.go),
which Serf and Consul have run in production for years. The differences come
from carrying SWIM over HTTP instead of UDP, and are noted on each value.
"""

from __future__ import annotations

import dataclasses

from .swim import SwimConfig

__all__ = ["Profile", "PROFILES"]

SECONDS = 1.0
MINUTES = 60 * SECONDS


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    name: str
    swim: SwimConfig
    # Wait of each reporter rank after the one above it. Must exceed the time a
    # reported record takes to reach the next rank (one direct message, plus
    # gossip as a fallback), or two members report the same incident.
    handoff_delay: float
    # Wait of a member-down alarm for other members going down, so that a
    # partition or a network outage pages once, grouped. Adds to the time
    # from detection to alarm; 0 disables grouping.
    group_wait: float
    # Share of the mesh that must go down within the wait to be grouped.
    group_share: float
    # Deadline of one HTTP request between agents other than a probe's ping,
    # whose deadline is the probe timeout.
    request_timeout: float
    # Accepted difference between a message's timestamp and the receiver's
    # clock. Larger tolerates clock skew, smaller narrows the replay window.
    replay_window: float


PROFILES: dict[str, Profile] = {
    # One machine, loopback only: a crash is detected in about 4 s (one period
    # to probe, the period's end to suspect, 3 s of suspicion for N < 10 once
    # another member confirms it; 18 s when nobody can).
    "local": Profile(
        name="local",
        swim=SwimConfig(
            probe_interval=1 * SECONDS,
            probe_timeout=0.2 * SECONDS,  # memberlist local: 200 ms
            indirect_checks=1,  # memberlist local: 1
            suspicion_mult=3,  # memberlist local: 3
            retransmit_mult=2,  # memberlist local: 2
            gossip_interval=0.1 * SECONDS,  # memberlist local: 100 ms
            gossip_nodes=3,
            push_pull_interval=15 * SECONDS,  # memberlist local: 15 s
            reconnect_interval=5 * SECONDS,
            # Lifeguard, memberlist local values: suspicion max 6 × min, health
            # stretches timing up to 8×, gossip to the dead for 15 s.
            suspicion_max_timeout_mult=6,
            awareness_max_multiplier=8,
            gossip_to_the_dead_time=15 * SECONDS,
        ),
        handoff_delay=1.5 * SECONDS,
        group_wait=2 * SECONDS,
        group_share=0.3,
        request_timeout=2 * SECONDS,
        replay_window=30 * SECONDS,
    ),
    # One data centre or region: memberlist's LAN defaults.
    "lan": Profile(
        name="lan",
        swim=SwimConfig(
            probe_interval=1 * SECONDS,
            probe_timeout=0.5 * SECONDS,
            indirect_checks=3,
            suspicion_mult=4,
            retransmit_mult=4,
            gossip_interval=0.2 * SECONDS,
            gossip_nodes=3,
            push_pull_interval=30 * SECONDS,
            reconnect_interval=30 * SECONDS,  # Serf's reconnect_interval
            # Lifeguard, memberlist LAN values, which Serf's lan profile uses.
            suspicion_max_timeout_mult=6,
            awareness_max_multiplier=8,
            gossip_to_the_dead_time=30 * SECONDS,
        ),
        handoff_delay=3 * SECONDS,
        group_wait=3 * SECONDS,
        group_share=0.3,
        request_timeout=5 * SECONDS,
        replay_window=60 * SECONDS,
    ),
    # Clusters in different regions or clouds: memberlist's WAN defaults.
    "wan": Profile(
        name="wan",
        swim=SwimConfig(
            probe_interval=5 * SECONDS,
            probe_timeout=3 * SECONDS,
            indirect_checks=3,
            suspicion_mult=6,
            retransmit_mult=4,
            gossip_interval=0.5 * SECONDS,
            gossip_nodes=4,
            push_pull_interval=1 * MINUTES,
            reconnect_interval=30 * SECONDS,
            # Lifeguard, memberlist WAN values.
            suspicion_max_timeout_mult=6,
            awareness_max_multiplier=8,
            gossip_to_the_dead_time=60 * SECONDS,
        ),
        handoff_delay=10 * SECONDS,
        group_wait=15 * SECONDS,
        group_share=0.3,
        request_timeout=10 * SECONDS,
        replay_window=2 * MINUTES,
    ),
}
