"""Prometheus metrics of one agent.

Each agent owns a registry, so that several agents can run in one process (the
simulator, tests) without sharing counters. Names follow the Prometheus
conventions: the ``alarminati_`` prefix, base units (seconds, bytes), ``_total``
for counters, ``_info`` for the build information. docs/operations.md explains
each metric and the alerts built on them.

Counters are incremented where things happen. Gauges that mirror state
(members by state, incidents, outbox depth, the local health score) are set
from that state by :meth:`AgentMetrics.refresh`, which the ``/metrics`` handler
calls before each scrape, so that a scrape never sees them stale.

Every label value that is known in advance (states, message types, rejection
reasons, receivers) is created at start, so that each series exists with 0
before its first event. Alert rules that use ``rate()`` or ``increase()`` need
the series to exist before the first increment to see it.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
)

from . import __version__
from .errors import Reason
from .membership import State
from .messages import Ack, Gossip, Nack, Ping, PingReq, Sync

# The *_created series (a timestamp per counter) double the exposition and no
# rule or dashboard uses them; process_start_time_seconds tells restarts.
# This is a process-wide switch of prometheus_client.
disable_created_metrics()

__all__ = [
    "AgentMetrics",
    "MeteredArchive",
    "local_health_score",
    "message_type",
    "package_version",
]

# Message types, as the ``type`` label spells them: the class name in lowercase.
MESSAGE_TYPES = tuple(
    cls.__name__.lower() for cls in (Ping, Ack, PingReq, Nack, Sync, Gossip)
)

# Why a send failed, as the ``reason`` label of alarminati_send_failures_total.
SEND_QUEUE_FULL = "queue_full"  # dropped before sending: the send queue was full
SEND_UNREACHABLE = "unreachable"  # connection error or timeout
SEND_REJECTED = "rejected"  # the peer answered with a status other than 200
SEND_FAILURE_REASONS = (SEND_QUEUE_FULL, SEND_UNREACHABLE, SEND_REJECTED)

# Rejection reason of a gossiped "reported" record whose signature fails; the
# other reasons are the wire checks of mesh.errors.Reason.
BAD_RECORD_SIGNATURE = "bad_record_signature"
REJECTION_REASONS = (*(r.value for r in Reason), BAD_RECORD_SIGNATURE)

# Dead letter reasons after which a delivery attempt had failed (the others
# are found before any attempt: an unreadable entry, an unknown receiver).
_FAILED_ATTEMPT_REASONS = {"permanent_error", "expired"}
# Receiver label of a dead letter whose entry was too damaged to name one.
UNKNOWN_RECEIVER = "unknown"

INCIDENT_STATES = ("firing", "resolved")

# Probe round trips: from a loopback millisecond to a slow WAN link just under
# the longest probe timeout of the profiles.
RTT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


def package_version() -> str:
    """Return the version of this source tree, the distribution's version."""
    return __version__


def message_type(message: Any) -> str:
    """Return the ``type`` label of a message: its class name in lowercase."""
    return type(message).__name__.lower()


def local_health_score(node: Any) -> float:
    """Return the Lifeguard local health score of ``node``; 0 means healthy.

    The score is read from an ``awareness`` object on the node or on its SWIM
    machine, as its ``score`` or ``health_score`` (a value or a method).
    """
    # TODO: Lifeguard's local health awareness (mesh/awareness.py) is not
    # merged yet; until a node carries one, the gauge stays at 0 (healthy) and
    # the AlarminatiLocalHealthDegraded alert cannot fire.
    for owner in (node, getattr(node, "swim", None)):
        awareness = getattr(owner, "awareness", None)
        if awareness is None:
            continue
        for attribute in ("score", "health_score"):
            score = getattr(awareness, attribute, None)
            if score is not None:
                return float(score() if callable(score) else score)
    return 0.0


class AgentMetrics:
    """The metrics of one agent, in a registry of their own.

    Args:
        name: the agent's member name, a label of ``alarminati_build_info``.
    """

    def __init__(self, name: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # process_* metrics (resident memory, CPU seconds, open files, start
        # time): the figures that the pod's resources are sized from.
        ProcessCollector(registry=r)

        self.build_info = Info(
            "alarminati_build",
            "Version of the running agent, its Python and its member name.",
            registry=r,
        )
        self.build_info.info(
            {
                "version": package_version(),
                "python_version": platform.python_version(),
                "member": name,
            }
        )

        # --- Membership -------------------------------------------------
        self.members = Gauge(
            "alarminati_members",
            "Members known to this agent, by state, this agent included.",
            ["state"],
            registry=r,
        )
        for state in State:
            self.members.labels(state.label)
        self.member_changes = Counter(
            "alarminati_member_state_changes_total",
            "Member state changes seen by this agent, by member and new state.",
            ["member", "state"],
            registry=r,
        )
        self.local_health = Gauge(
            "alarminati_local_health_score",
            "Lifeguard local health score of this agent: 0 is healthy, higher "
            "means its own probes are unreliable and its timeouts are stretched.",
            registry=r,
        )

        # --- Failure detection ------------------------------------------
        self.probes_sent = Counter(
            "alarminati_probes_sent_total",
            "Probes this agent started, one direct ping each.",
            registry=r,
        )
        self.probes_indirect = Counter(
            "alarminati_probes_indirect_total",
            "Probes whose direct ping timed out, so that other members were asked "
            "to ping the target (ping-req).",
            registry=r,
        )
        self.probes_failed = Counter(
            "alarminati_probes_failed_total",
            "Probes that got no ack, direct or indirect, by the end of the period.",
            registry=r,
        )
        self.probe_nacks = Counter(
            "alarminati_probe_nacks_total",
            "Nacks from members asked to probe indirectly: they hear this agent, "
            "but not the target.",
            registry=r,
        )
        self.probe_rtt = Histogram(
            "alarminati_probe_round_trip_seconds",
            "Round-trip time of acked direct probes.",
            buckets=RTT_BUCKETS,
            registry=r,
        )
        self.suspicions_raised = Counter(
            "alarminati_suspicions_raised_total",
            "Suspicions this agent raised itself after a failed probe.",
            registry=r,
        )
        self.suspicions_refuted = Counter(
            "alarminati_suspicions_refuted_total",
            "Suspect members seen alive again at a higher incarnation.",
            registry=r,
        )
        self.refutations = Counter(
            "alarminati_refutations_total",
            "Times this agent refuted a suspicion or death of itself.",
            registry=r,
        )
        # swim.refutations already counted into self.refutations.
        self._refutations_seen = 0

        # --- Messages ---------------------------------------------------
        self.messages_sent = Counter(
            "alarminati_messages_sent_total",
            "Messages sent to other agents and accepted by them, by type.",
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
            "alarminati_sent_bytes_total",
            "Bytes of signed frames sent to other agents, by message type.",
            ["type"],
            registry=r,
        )
        self.bytes_received = Counter(
            "alarminati_received_bytes_total",
            "Bytes of signed frames accepted from other agents, by the type of "
            "their first message.",
            ["type"],
            registry=r,
        )
        for kind in MESSAGE_TYPES:
            for counter in (
                self.messages_sent,
                self.messages_received,
                self.bytes_sent,
                self.bytes_received,
            ):
                counter.labels(kind)
        self.send_failures = Counter(
            "alarminati_send_failures_total",
            "Messages to other agents that were not delivered, by type and reason: "
            "queue_full, unreachable or rejected.",
            ["type", "reason"],
            registry=r,
        )
        for kind in MESSAGE_TYPES:
            for reason in SEND_FAILURE_REASONS:
                self.send_failures.labels(kind, reason)
        self.rejected = Counter(
            "alarminati_messages_rejected_total",
            "Inbound frames or gossiped records rejected, by reason.",
            ["reason"],
            registry=r,
        )
        for reason in REJECTION_REASONS:
            self.rejected.labels(reason)

        # --- Incidents and alarms ---------------------------------------
        self.incidents = Gauge(
            "alarminati_incidents",
            "Incidents this agent knows, by state: firing, or resolved (its "
            "resolved alarm reported) within the retention period.",
            ["state"],
            registry=r,
        )
        for state in INCIDENT_STATES:
            self.incidents.labels(state)
        self.incident_decisions = Counter(
            "alarminati_incident_decisions_total",
            "Reporter decisions by alarm status and decision.",
            ["status", "decision"],
            registry=r,
        )
        self.alarms_reported = Counter(
            "alarminati_alarms_reported_total",
            "Alarms this agent reported as the elected reporter, by status.",
            ["status"],
            registry=r,
        )
        self.alarms_sent = Counter(
            "alarminati_alarms_sent_total",
            "Alarms delivered, by receiver (the archive is the receiver 'archive').",
            ["receiver"],
            registry=r,
        )
        self.alarms_retried = Counter(
            "alarminati_alarms_retried_total",
            "Failed delivery attempts followed by a retry, by receiver.",
            ["receiver"],
            registry=r,
        )
        self.alarms_failed = Counter(
            "alarminati_alarms_failed_total",
            "Failed delivery attempts, retried or given up, by receiver.",
            ["receiver"],
            registry=r,
        )
        self.alarms_dead_lettered = Counter(
            "alarminati_alarms_dead_lettered_total",
            "Alarms given up and moved to the dead letters, by receiver and reason.",
            ["receiver", "reason"],
            registry=r,
        )
        self.outbox_pending = Gauge(
            "alarminati_outbox_pending_entries",
            "Deliveries waiting in the outbox, by receiver, the one being "
            "attempted included.",
            ["receiver"],
            registry=r,
        )
        self.outbox_oldest_age = Gauge(
            "alarminati_outbox_oldest_entry_age_seconds",
            "Age of the oldest delivery waiting in the outbox; 0 when it is empty.",
            registry=r,
        )

        # --- Archive ----------------------------------------------------
        self.archive_writes = Counter(
            "alarminati_archive_writes_total",
            "Objects this agent tried to write to the archive.",
            registry=r,
        )
        self.archive_write_failures = Counter(
            "alarminati_archive_write_failures_total",
            "Archive writes that failed.",
            registry=r,
        )

    # ------------------------------------------------------------------

    def add_receivers(self, names: Iterable[str]) -> None:
        """Create the per-receiver series of ``names`` at 0."""
        for name in names:
            for counter in (
                self.alarms_sent,
                self.alarms_retried,
                self.alarms_failed,
                self.outbox_pending,
            ):
                counter.labels(name)

    def refresh(self, node: Any, outbox: Any = None) -> None:
        """Set the gauges that mirror state, and count new self-refutations.

        Args:
            node: the agent's :class:`mesh.node.Node`.
            outbox: the outbox's :class:`sinks.outbox.OutboxStatistics`, once
                the outbox runs.
        """
        counts = dict.fromkeys(State, 0)
        for member in node.swim.members.values():
            counts[member.state] += 1
        for state, count in counts.items():
            self.members.labels(state.label).set(count)

        refutations = node.swim.refutations
        self.refutations.inc(max(0, refutations - self._refutations_seen))
        self._refutations_seen = refutations
        self.local_health.set(local_health_score(node))

        # Resolved incidents are those whose resolved alarm was reported; their
        # records stay for the retention period, as the incidents do.
        incidents = node.incidents
        resolved = {r.incident for r in incidents.records() if r.status == "resolved"}
        self.incidents.labels("firing").set(len(incidents.open_incidents()))
        self.incidents.labels("resolved").set(len(resolved))

        if outbox is not None:
            for receiver, count in outbox.pending.items():
                self.outbox_pending.labels(receiver).set(count)
            self.outbox_oldest_age.set(outbox.oldest_pending_age)

    # --- Outbox observer hooks (sinks.outbox.OutboxObserver) ----------------

    def delivered(
        self, destination: str, attempts: int, seconds_since_enqueue: float
    ) -> None:
        self.alarms_sent.labels(destination).inc()

    def retrying(self, destination: str, error: str, delay: float) -> None:
        self.alarms_retried.labels(destination).inc()
        self.alarms_failed.labels(destination).inc()

    def dead_lettered(self, destination: str, reason: str) -> None:
        receiver = destination or UNKNOWN_RECEIVER
        self.alarms_dead_lettered.labels(receiver, reason).inc()
        if reason in _FAILED_ATTEMPT_REASONS:
            self.alarms_failed.labels(receiver).inc()


class MeteredArchive:
    """An archive that counts its writes and write failures.

    Reads and listings pass through uncounted; any other attribute is the
    wrapped archive's.

    Args:
        archive: the archive to wrap (a :class:`storage.archive.Archive`).
        metrics: the agent's metrics.
    """

    def __init__(self, archive: Any, metrics: AgentMetrics) -> None:
        self._archive = archive
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        return getattr(self._archive, name)

    def __repr__(self) -> str:
        return f"MeteredArchive({self._archive!r})"

    async def put(self, key: str, data: bytes) -> None:
        self._metrics.archive_writes.inc()
        try:
            await self._archive.put(key, data)
        except Exception:  # a cancelled write (trio.Cancelled) is not counted
            self._metrics.archive_write_failures.inc()
            raise

    async def get(self, key: str) -> bytes:
        return await self._archive.get(key)

    async def list(self, prefix: str) -> list[str]:
        return await self._archive.list(prefix)
