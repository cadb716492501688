"""Prometheus metrics of one agent.

Each agent owns a registry, so that several agents can run in one process (the
simulator, tests) without sharing counters. Names follow the Prometheus
conventions: the ``alarminati_`` prefix, base units, ``_total`` for counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from .membership import State

__all__ = ["AgentMetrics"]

VERSION = "0.1.0"


class AgentMetrics:
    def __init__(self, name: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry

        self.build_info = Info("alarminati_build", "Version of the running agent.", registry=r)
        self.build_info.info({"version": VERSION, "member": name})

        self.members = Gauge(
            "alarminati_members",
            "Members known to this agent, by state, this agent included.",
            ["state"],
            registry=r,
        )
        for state in State:
            self.members.labels(state.label)

        self.probes = Counter(
            "alarminati_probes_total",
            "Probes by outcome: ack, indirect_ack or failed.",
            ["outcome"],
            registry=r,
        )
        self.probe_rtt = Histogram(
            "alarminati_probe_rtt_seconds",
            "Round-trip time of acked direct probes.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.member_changes = Counter(
            "alarminati_member_state_changes_total",
            "Member state changes seen by this agent, by new state.",
            ["state"],
            registry=r,
        )
        self.refutations = Gauge(
            "alarminati_refutations",
            "Times this agent refuted a suspicion or death of itself.",
            registry=r,
        )
        self.messages_sent = Counter(
            "alarminati_messages_sent_total",
            "Messages sent to other agents, by type.",
            ["type"],
            registry=r,
        )
        self.messages_received = Counter(
            "alarminati_messages_received_total",
            "Messages accepted from other agents, by type.",
            ["type"],
            registry=r,
        )
        self.bytes_sent = Counter(
            "alarminati_sent_bytes_total", "Bytes of frames sent to other agents.", registry=r
        )
        self.bytes_received = Counter(
            "alarminati_received_bytes_total",
            "Bytes of frames received from other agents.",
            registry=r,
        )
        self.send_failures = Counter(
            "alarminati_send_failures_total",
            "Requests to other agents that failed or timed out, by message type.",
            ["type"],
            registry=r,
        )
        self.rejected = Counter(
            "alarminati_messages_rejected_total",
            "Inbound frames or records rejected, by reason.",
            ["reason"],
            registry=r,
        )
        self.incident_decisions = Counter(
            "alarminati_incident_decisions_total",
            "Reporter decisions by status and decision.",
            ["status", "decision"],
            registry=r,
        )
        self.incidents_open = Gauge(
            "alarminati_incidents_open", "Incidents currently firing.", registry=r
        )
        self.alarms_reported = Counter(
            "alarminati_alarms_reported_total",
            "Alarms this agent reported, by status.",
            ["status"],
            registry=r,
        )
        self.deliveries = Counter(
            "alarminati_deliveries_total",
            "Alarm deliveries that succeeded, by destination.",
            ["destination"],
            registry=r,
        )
        self.delivery_retries = Counter(
            "alarminati_delivery_retries_total",
            "Failed delivery attempts that will be retried, by destination.",
            ["destination"],
            registry=r,
        )
        self.dead_letters = Counter(
            "alarminati_dead_letters_total",
            "Deliveries given up and moved to dead letters, by destination.",
            ["destination"],
            registry=r,
        )
        self.outbox_depth = Gauge(
            "alarminati_outbox_pending", "Deliveries waiting in the outbox.", registry=r
        )
        self.outbox_oldest = Gauge(
            "alarminati_outbox_oldest_age_seconds",
            "Age of the oldest delivery waiting in the outbox.",
            registry=r,
        )
