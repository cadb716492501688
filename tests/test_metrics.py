"""The agent's Prometheus metrics: names, what each counts, and a live mesh."""

from __future__ import annotations

import re
import types

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mesh.membership import Member, State
from mesh.messages import Reported
from mesh.metrics import (
    MESSAGE_TYPES,
    REJECTION_REASONS,
    AgentMetrics,
    MeteredArchive,
    local_health_score,
)
from storage.local import LocalArchive
from tests.agent_processes import AgentProcesses

# The metrics the operations guide promises, by the list.
PROMISED = {
    "alarminati_build_info": "gauge",
    "alarminati_members": "gauge",
    "alarminati_member_state_changes_total": "counter",
    "alarminati_local_health_score": "gauge",
    "alarminati_probes_sent_total": "counter",
    "alarminati_probes_indirect_total": "counter",
    "alarminati_probes_failed_total": "counter",
    "alarminati_probe_nacks_total": "counter",
    "alarminati_probe_round_trip_seconds": "histogram",
    "alarminati_suspicions_raised_total": "counter",
    "alarminati_suspicions_refuted_total": "counter",
    "alarminati_refutations_total": "counter",
    "alarminati_messages_sent_total": "counter",
    "alarminati_messages_received_total": "counter",
    "alarminati_sent_bytes_total": "counter",
    "alarminati_received_bytes_total": "counter",
    "alarminati_send_failures_total": "counter",
    "alarminati_messages_rejected_total": "counter",
    "alarminati_incidents": "gauge",
    "alarminati_incident_decisions_total": "counter",
    "alarminati_alarms_reported_total": "counter",
    "alarminati_alarms_sent_total": "counter",
    "alarminati_alarms_retried_total": "counter",
    "alarminati_alarms_failed_total": "counter",
    "alarminati_alarms_dead_lettered_total": "counter",
    "alarminati_outbox_pending_entries": "gauge",
    "alarminati_outbox_oldest_entry_age_seconds": "gauge",
    "alarminati_archive_writes_total": "counter",
    "alarminati_archive_write_failures_total": "counter",
}


def samples(metrics: AgentMetrics) -> dict[tuple[str, tuple], float]:
    """Return every sample as {(name, sorted labels): value}."""
    text = generate_latest(metrics.registry).decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def value(metrics: AgentMetrics, name: str, **labels: str) -> float:
    return samples(metrics).get((name, tuple(sorted(labels.items()))), 0.0)


def exposition_types(text: str) -> dict[str, str]:
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


# ----------------------------------------------------------------------
# Names
# ----------------------------------------------------------------------


def test_metrics_expose_every_promised_family_with_its_type():
    text = generate_latest(AgentMetrics("seoul").registry).decode()

    found = exposition_types(text)
    for name, kind in PROMISED.items():
        assert found.get(name) == kind, f"{name} is not exposed as a {kind}"


def test_metric_names_follow_prometheus_conventions():
    text = generate_latest(AgentMetrics("seoul").registry).decode()

    for name, kind in exposition_types(text).items():
        if name.startswith("process_"):
            continue
        assert re.fullmatch(r"alarminati_[a-z0-9_]+", name)
        # Counters, and only counters, end in _total.
        assert name.endswith("_total") == (kind == "counter"), name
        # Base units only: seconds and bytes, never a scaled unit.
        assert not re.search(
            r"_(milliseconds|ms|kilobytes|megabytes|percent)(_|$)", name
        )
    # No *_created series: they double the exposition.
    assert "_created" not in text


def test_label_values_known_in_advance_exist_at_zero():
    metrics = AgentMetrics("seoul")
    metrics.add_receivers(["archive", "ops-slack"])
    found = samples(metrics)

    for state in ("alive", "suspect", "dead", "left"):
        assert found[("alarminati_members", (("state", state),))] == 0
    for kind in MESSAGE_TYPES:
        assert found[("alarminati_messages_sent_total", (("type", kind),))] == 0
        assert found[("alarminati_received_bytes_total", (("type", kind),))] == 0
    for reason in REJECTION_REASONS:
        assert found[("alarminati_messages_rejected_total", (("reason", reason),))] == 0
    for receiver in ("archive", "ops-slack"):
        for name in ("sent", "retried", "failed"):
            key = (f"alarminati_alarms_{name}_total", (("receiver", receiver),))
            assert found[key] == 0
    assert found[("alarminati_incidents", (("state", "firing"),))] == 0


def test_build_info_names_version_python_and_member():
    found = samples(AgentMetrics("seoul"))

    (labels,) = [dict(k[1]) for k in found if k[0] == "alarminati_build_info"]
    assert labels["member"] == "seoul"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*|0\+unknown", labels["version"])
    assert re.fullmatch(r"3\.\d+\.\d+.*", labels["python_version"])


def test_agents_in_one_process_keep_separate_counters():
    first, second = AgentMetrics("a"), AgentMetrics("b")
    first.probes_sent.inc(3)

    assert value(first, "alarminati_probes_sent_total") == 3
    assert value(second, "alarminati_probes_sent_total") == 0


# ----------------------------------------------------------------------
# Outbox hooks
# ----------------------------------------------------------------------


def test_outbox_hooks_count_alarms_by_receiver():
    metrics = AgentMetrics("seoul")
    metrics.add_receivers(["ops-slack", "archive"])

    metrics.retrying("ops-slack", "HTTP 503", 2.0)
    metrics.retrying("ops-slack", "HTTP 503", 4.0)
    metrics.delivered("ops-slack", 3, 7.5)
    metrics.delivered("archive", 1, 0.1)
    metrics.dead_lettered("ops-slack", "permanent_error")
    metrics.dead_lettered("", "corrupt_entry")

    assert value(metrics, "alarminati_alarms_sent_total", receiver="ops-slack") == 1
    assert value(metrics, "alarminati_alarms_sent_total", receiver="archive") == 1
    assert value(metrics, "alarminati_alarms_retried_total", receiver="ops-slack") == 2
    # Two retried attempts and the permanent failure; a corrupt entry had none.
    assert value(metrics, "alarminati_alarms_failed_total", receiver="ops-slack") == 3
    assert value(metrics, "alarminati_alarms_failed_total", receiver="unknown") == 0
    assert (
        value(
            metrics,
            "alarminati_alarms_dead_lettered_total",
            receiver="ops-slack",
            reason="permanent_error",
        )
        == 1
    )
    assert (
        value(
            metrics,
            "alarminati_alarms_dead_lettered_total",
            receiver="unknown",
            reason="corrupt_entry",
        )
        == 1
    )


# ----------------------------------------------------------------------
# Gauges from state
# ----------------------------------------------------------------------


def _node(
    states: dict[str, State],
    *,
    refutations=0,
    open_incidents=0,
    records=(),
    awareness=None,
):
    # A stand-in with the parts of mesh.node.Node that refresh() reads.
    members = {n: Member(n, f"{n}:7480", 0, s, 0.0) for n, s in states.items()}
    swim = types.SimpleNamespace(members=members, refutations=refutations)
    if awareness is not None:
        swim.awareness = awareness
    incidents = types.SimpleNamespace(
        open_incidents=lambda: [object()] * open_incidents,
        records=lambda: tuple(records),
    )
    return types.SimpleNamespace(swim=swim, incidents=incidents)


def test_refresh_sets_members_incidents_and_outbox_gauges():
    metrics = AgentMetrics("seoul")
    resolved = Reported("member-down/tokyo@1", "resolved", "seoul", 0.0)
    firing = Reported("member-down/tokyo@1", "firing", "seoul", 0.0)
    node = _node(
        {
            "seoul": State.ALIVE,
            "tokyo": State.ALIVE,
            "busan": State.DEAD,
            "jeju": State.LEFT,
        },
        open_incidents=1,
        records=[firing, resolved],
    )
    outbox = types.SimpleNamespace(
        pending={"archive": 0, "ops-slack": 2}, oldest_pending_age=42.5
    )

    metrics.refresh(node, outbox)

    assert value(metrics, "alarminati_members", state="alive") == 2
    assert value(metrics, "alarminati_members", state="dead") == 1
    assert value(metrics, "alarminati_members", state="left") == 1
    assert value(metrics, "alarminati_members", state="suspect") == 0
    assert value(metrics, "alarminati_incidents", state="firing") == 1
    assert value(metrics, "alarminati_incidents", state="resolved") == 1
    assert (
        value(metrics, "alarminati_outbox_pending_entries", receiver="ops-slack") == 2
    )
    assert value(metrics, "alarminati_outbox_oldest_entry_age_seconds") == 42.5


def test_refresh_counts_each_self_refutation_once():
    metrics = AgentMetrics("seoul")

    metrics.refresh(_node({"seoul": State.ALIVE}, refutations=2))
    metrics.refresh(_node({"seoul": State.ALIVE}, refutations=2))
    metrics.refresh(_node({"seoul": State.ALIVE}, refutations=3))

    assert value(metrics, "alarminati_refutations_total") == 3


@pytest.mark.parametrize(
    ("awareness", "expected"),
    [
        (None, 0.0),
        (types.SimpleNamespace(score=3), 3.0),
        (types.SimpleNamespace(health_score=lambda: 2), 2.0),
    ],
)
def test_local_health_score_read_from_the_node(awareness, expected):
    node = _node({"seoul": State.ALIVE}, awareness=awareness)
    metrics = AgentMetrics("seoul")

    metrics.refresh(node)

    assert local_health_score(node) == expected
    assert value(metrics, "alarminati_local_health_score") == expected


def test_local_health_score_of_the_real_awareness():
    awareness_module = pytest.importorskip("mesh.awareness")
    awareness = awareness_module.Awareness(8)
    awareness.apply_delta(3)
    node = _node({"seoul": State.ALIVE}, awareness=awareness)

    assert local_health_score(node) == 3.0


# ----------------------------------------------------------------------
# Archive
# ----------------------------------------------------------------------


class _BrokenArchive:
    async def put(self, key: str, data: bytes) -> None:
        raise OSError("disk full")


async def test_metered_archive_counts_writes_and_failures(tmp_path):
    metrics = AgentMetrics("seoul")
    archive = MeteredArchive(LocalArchive(tmp_path), metrics)

    await archive.put("keys/seoul.pub", b"key\n")
    assert await archive.get("keys/seoul.pub") == b"key\n"
    broken = MeteredArchive(_BrokenArchive(), metrics)
    with pytest.raises(OSError):
        await broken.put("alarms/x", b"x")

    assert value(metrics, "alarminati_archive_writes_total") == 2
    assert value(metrics, "alarminati_archive_write_failures_total") == 1


# ----------------------------------------------------------------------
# A live mesh
# ----------------------------------------------------------------------


def _scrape(address: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"http://{address}/metrics", timeout=5).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _total(scraped, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in scraped.items() if n == name and wanted <= set(ls))


@pytest.mark.slow
async def test_live_mesh_counts_probes_failure_and_alarm(tmp_path):
    mesh = AgentProcesses(
        tmp_path, ["a", "b", "c"], sinks=[{"name": "stdout", "type": "log"}]
    )
    mesh.start_all()
    try:
        await mesh.wait_states(
            ["a", "b", "c"], {"a": "alive", "b": "alive", "c": "alive"}
        )
        mesh.kill("c")
        await mesh.wait_states(["a", "b"], {"c": "dead"})

        async def alarm_archived() -> bool:
            views = [_scrape(mesh.addresses[n]) for n in ("a", "b")]
            return (
                sum(
                    _total(v, "alarminati_alarms_sent_total", receiver="archive")
                    for v in views
                )
                >= 1
            )

        await mesh.wait_for(alarm_archived, 30, "the firing alarm in the archive")
        views = {n: _scrape(mesh.addresses[n]) for n in ("a", "b")}
    finally:
        mesh.stop_all()

    for name, view in views.items():
        assert _total(view, "alarminati_members", state="alive") == 2, name
        assert _total(view, "alarminati_members", state="dead") == 1, name
        assert (
            _total(
                view, "alarminati_member_state_changes_total", member="c", state="dead"
            )
            == 1
        )
        assert _total(view, "alarminati_probes_sent_total") > 0
        assert _total(view, "alarminati_probe_round_trip_seconds_count") > 0
        assert _total(view, "alarminati_messages_sent_total", type="ping") > 0
        assert _total(view, "alarminati_messages_received_total", type="ack") > 0
        assert _total(view, "alarminati_sent_bytes_total", type="ping") > 0
        assert _total(view, "alarminati_received_bytes_total") > 0
        assert _total(view, "alarminati_send_failures_total", reason="unreachable") > 0
        # The public key, at least.
        assert _total(view, "alarminati_archive_writes_total") >= 1
        assert _total(view, "alarminati_archive_write_failures_total") == 0
        assert _total(view, "process_resident_memory_bytes") > 0
    both = list(views.values())
    # Someone probed c after it died, and at least one of them suspected it.
    assert sum(_total(v, "alarminati_probes_failed_total") for v in both) >= 1
    assert sum(_total(v, "alarminati_suspicions_raised_total") for v in both) >= 1
    assert (
        sum(
            _total(v, "alarminati_alarms_reported_total", status="firing") for v in both
        )
        == 1
    )
    assert sum(_total(v, "alarminati_incidents", state="firing") for v in both) == 2
