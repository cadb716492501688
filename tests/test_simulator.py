"""The simulator: the real protocol core over an in-memory network, virtual time."""

import json

import pytest
import trio
import trio.testing

from mesh.cli import main
from mesh.errors import ConfigError
from mesh.keys import SigningKey
from mesh.membership import State
from mesh.messages import Ack, Ping, Sync, Update, encode_message
from mesh.simulator import (
    Simulation,
    load_scenario,
    parse_event_flag,
    parse_scenario,
    run_simulation,
)
from mesh.simulator.scenario import parse_latency
from mesh.wire import seal


def scenario(**raw):
    raw.setdefault("members", 10)
    raw.setdefault("duration", 60)
    return parse_scenario(raw)


def without_wall_time(report):
    data = report.to_dict()
    del data["wall_seconds"]
    return data


# ----------------------------------------------------------------------
# Reproducibility and the clock
# ----------------------------------------------------------------------


def test_simulation_same_seed_same_report():
    events = [{"at": 20, "crash": ["m3"]}]
    first = run_simulation(scenario(seed=7, events=events, network={"loss": 0.05}))
    second = run_simulation(scenario(seed=7, events=events, network={"loss": 0.05}))
    assert without_wall_time(first) == without_wall_time(second)


def test_simulation_other_seed_other_run():
    events = [{"at": 20, "crash": ["m3"]}]
    first = run_simulation(scenario(seed=1, events=events, network={"loss": 0.05}))
    second = run_simulation(scenario(seed=2, events=events, network={"loss": 0.05}))
    assert without_wall_time(first) != without_wall_time(second)


def test_simulation_runs_on_trio_mock_clock():
    simulation = Simulation(scenario(members=5, duration=42))
    clock = trio.testing.MockClock(autojump_threshold=0)
    trio.run(simulation.run, clock=clock)
    assert clock.current_time() == pytest.approx(42.0)
    # Every member kept probing all along: about one ping per member per second.
    pings = simulation.collector.messages["ping"]
    assert 5 * 38 <= pings <= 5 * 43


# ----------------------------------------------------------------------
# What it measures
# ----------------------------------------------------------------------


def test_crash_detected_by_every_survivor():
    report = run_simulation(scenario(events=[{"at": 20, "crash": ["m3"]}]))
    [crash] = report.crashes
    assert crash.member == "m3"
    assert crash.observers == 9
    assert 0 < crash.first_suspect < crash.first_dead <= crash.all_dead
    # lan profile, N = 10: at least the 4 s minimum suspicion after suspecting.
    assert crash.first_dead >= crash.first_suspect + 4.0
    assert report.false_dead_members == 0
    assert report.alarms["firing"] == 1


def test_refused_crash_suspected_within_milliseconds():
    report = run_simulation(
        scenario(members=5, events=[{"at": 20, "crash": ["m1"], "mode": "refuse"}])
    )
    [crash] = report.crashes
    # The first probe of m1 fails as soon as the refusal comes back, without
    # the 0.5 s probe timeout or the rest of the period.
    assert crash.first_suspect is not None
    probe_start_bound = 1.0  # every member probes someone each second
    assert crash.first_suspect < 4 * probe_start_bound


def test_restart_resolves_incident():
    events = [{"at": 10, "crash": ["m2"]}, {"at": 40, "restart": ["m2"]}]
    report = run_simulation(scenario(duration=80, events=events))
    assert report.alarms["firing"] == 1
    assert report.alarms["resolved"] == 1
    assert report.refutations >= 1


def test_partition_heal_converges():
    events = [{"at": 10, "partition": ["m0-m4"]}, {"at": 40, "heal": True}]
    report = run_simulation(scenario(duration=120, events=events))
    [heal] = report.heals
    assert heal.converged is not None
    assert report.partition_events > 0
    assert report.false_dead_members == 0


def test_starved_member_suspected_not_declared_dead():
    events = [{"at": 10, "starve": ["m1"], "for": 3, "every": 20}]
    report = run_simulation(scenario(members=20, duration=70, events=events))
    assert report.suspicion_events > 0
    assert report.impaired_suspicion_events > 0
    assert report.false_dead_members == 0
    assert report.refutations > 0


def test_slow_member_raises_its_health_score():
    # Acks reach its protocol after its probe periods end: it fails probes.
    events = [{"at": 5, "slow": ["m1"], "for": 40, "delay": 1.5}]
    report = run_simulation(scenario(members=8, duration=50, events=events))
    assert report.max_health_score >= 3


def test_graceful_leave_raises_no_alarm():
    report = run_simulation(scenario(events=[{"at": 15, "leave": ["m4"]}]))
    assert report.alarms == {}
    assert report.false_dead_events == 0


@pytest.mark.slow
def test_join_bootstrap_converges_with_loss():
    report = run_simulation(
        scenario(members=30, duration=60, bootstrap="join", network={"loss": 0.05})
    )
    assert report.false_dead_members == 0
    assert report.messages["sync"] >= 29


@pytest.mark.slow
def test_lossy_mesh_with_starvation_keeps_everyone_alive():
    events = [{"at": 15, "starve": ["m1", "m2", "m3"], "for": 5, "every": 30}]
    raw = {"members": 50, "duration": 180, "network": {"loss": 0.1}, "events": events}
    report = run_simulation(parse_scenario(raw))
    assert report.false_dead_members == 0
    assert report.suspicion_events > 0


def test_traffic_counted_per_type():
    report = run_simulation(scenario(members=5, duration=30))
    assert set(report.messages) >= {"ping", "ack"}
    per_member = report.per_member_second(report.messages["ping"])
    assert 0.8 <= per_member <= 1.05
    # Every frame carries at least its 64-byte signature.
    assert report.bytes["ping"] > 64 * report.messages["ping"]


# ----------------------------------------------------------------------
# The reporter's send path
# ----------------------------------------------------------------------


def run_collecting(parsed):
    simulation = Simulation(parsed)
    trio.run(simulation.run, clock=trio.testing.MockClock(autojump_threshold=0))
    return simulation


def reporter_crash(point, restart_after):
    """Crash m3 at 10 s and its reporter at ``point``, restarting it after ``restart_after`` s."""
    events = [
        {"at": 10, "crash": ["m3"]},
        {"at": 10, "crash_reporter": point, "for": restart_after},
    ]
    return run_collecting(scenario(members=6, duration=60, events=events))


def victim_firing(simulation):
    return sum(
        n
        for (incident, status), n in simulation.collector.deliveries.items()
        if incident.startswith("member-down/m3@") and status == "firing"
    )


def test_before_write_crash_next_rank_delivers():
    simulation = reporter_crash("before_write", 0)
    [(_, crashed, point)] = simulation.collector.reporter_crashes
    assert point == "before_write"
    assert not simulation.members[crashed].up
    assert victim_firing(simulation) == 1
    reporters = [
        reporter
        for _, reporter, report in simulation.collector.reports
        if report.incident.startswith("member-down/m3@") and report.status == "firing"
    ]
    assert reporters[0] == crashed
    assert len(reporters) == 2
    assert reporters[1] != crashed


def test_before_record_crash_delivers_twice():
    # The next rank reports because no record came, and the restarted
    # member's outbox still delivers the alarm it held: two deliveries.
    assert victim_firing(reporter_crash("before_record", 0)) == 1
    simulation = reporter_crash("before_record", 20)
    assert victim_firing(simulation) == 2
    [(_, crashed, _)] = simulation.collector.reporter_crashes
    assert simulation.members[crashed].up
    assert simulation.members[crashed].outbox == []


def test_before_delivery_crash_delivers_on_restart():
    # The record left before the crash, so no other member reports. The alarm
    # waits in the outbox until the restart.
    stays_down = reporter_crash("before_delivery", 0)
    [(_, crashed, _)] = stays_down.collector.reporter_crashes
    assert victim_firing(stays_down) == 0
    assert len(stays_down.members[crashed].outbox) == 1
    assert stays_down.members[crashed].stored_records
    restarted = reporter_crash("before_delivery", 20)
    assert victim_firing(restarted) == 1


def test_reports_recorded_with_reporter():
    events = [{"at": 10, "crash": ["m2"]}, {"at": 40, "restart": ["m2"]}]
    simulation = run_collecting(scenario(duration=80, events=events))
    statuses = [report.status for _, _, report in simulation.collector.reports]
    assert statuses == ["firing", "resolved"]
    for at, reporter, report in simulation.collector.reports:
        assert report.subject == "m2"
        assert reporter != "m2"
        assert 10 < at < 80
        assert simulation.collector.deliveries[(report.incident, report.status)] == 1


def test_group_wait_groups_members_down():
    # On the lan profile the four deaths are declared over about 5 s: the
    # wait must chain them.
    events = [{"at": 10, "crash": ["m0", "m1", "m2", "m3"]}]
    timing = {"group_wait": 5, "group_share": 0.3}
    simulation = run_collecting(scenario(duration=40, timing=timing, events=events))
    [(_, _, report)] = simulation.collector.reports
    assert report.subject == "m0,m1,m2,m3"
    assert len(report.members) == 4


def test_grouping_off_by_default():
    events = [{"at": 10, "crash": ["m0", "m1", "m2", "m3"]}]
    simulation = run_collecting(scenario(duration=40, events=events))
    subjects = sorted(report.subject for _, _, report in simulation.collector.reports)
    assert subjects == ["m0", "m1", "m2", "m3"]


@pytest.mark.parametrize(
    "message",
    [
        Ping(3, "m1"),
        Ack(9, tuple(Update(f"m{i}", f"m{i}", i, State.ALIVE) for i in range(12))),
        Sync(tuple(Update(f"m{i}", f"m{i}", 0, State.ALIVE) for i in range(40)), (), True),
    ],
)
def test_frame_size_matches_sealed_frame(message):
    simulation = Simulation(scenario(members=5))
    sealed = seal(SigningKey.generate(), "m1", [encode_message(message)], 1.7e9)
    # Sync tables are compressed apart from the rest: within a few bytes.
    assert abs(simulation.frame_size("m1", message) - len(sealed)) <= 8


# ----------------------------------------------------------------------
# Scenarios
# ----------------------------------------------------------------------


def test_scenario_file_loaded(tmp_path):
    path = tmp_path / "scenario.yaml"
    path.write_text(
        "members: 12\nduration: 30\nnetwork: {loss: 0.1, latency: 'uniform:0.001,0.003'}\n"
        "events:\n  - {at: 5, crash: random:2}\n  - {at: 9, starve: [m1, m2], for: 2}\n"
    )
    parsed = parse_scenario(load_scenario(path))
    assert parsed.members == 12
    assert parsed.loss == pytest.approx(0.1)
    assert parsed.latency.describe() == "uniform:0.001,0.003"
    assert len(parsed.events[0].members) == 2
    assert parsed.events[1].members == ("m1", "m2")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"members": 1}, "members: invalid value 1"),
        ({"colour": 1}, "colour: unknown key"),
        ({"network": {"loss": 1.5}}, "network.loss: invalid value 1.5"),
        ({"network": {"latency": "gamma:1"}}, "network.latency: invalid value 'gamma:1'"),
        ({"events": [{"at": 1, "crash": ["m99"]}]}, "events[0].crash: unknown member 'm99'"),
        ({"events": [{"at": 1}]}, "events[0]: expected exactly one of"),
        ({"events": [{"at": 1, "crash": ["m1"], "mode": "x"}]}, "events[0].mode: invalid value 'x'"),
        ({"timing": {"probe_timeout": 3}}, "timing: invalid probe_timeout 3.0"),
        ({"timing": {"speed": 3}}, "timing.speed: unknown key"),
        ({"events": [{"at": 1, "starve": "m1", "for": 5, "every": 4}]}, "events[0].every: 4.0"),
        (
            {"events": [{"at": 1, "crash_reporter": "later"}]},
            "events[0].crash_reporter: invalid value 'later'",
        ),
        ({"timing": {"group_share": 0}}, "timing.group_share: invalid value 0"),
        ({"timing": {"group_wait": -1}}, "timing.group_wait: invalid value -1"),
    ],
)
def test_scenario_invalid_value_named(raw, expected):
    raw = {"members": 10} | raw
    with pytest.raises(ConfigError) as caught:
        parse_scenario(raw)
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    ("spec", "kind"),
    [
        ("constant:0.002", "constant"),
        (0.002, "constant"),
        ("lognormal:0.002,0.5", "lognormal"),
        ({"distribution": "normal", "mean": 0.01, "sd": 0.002}, "normal"),
        ("exponential:0.003", "exponential"),
    ],
)
def test_latency_forms(spec, kind):
    assert parse_latency(spec).kind == kind


@pytest.mark.parametrize(
    ("action", "text", "expected"),
    [
        ("crash", "m1,m2@30:refuse", [{"at": 30.0, "crash": ["m1", "m2"], "mode": "refuse"}]),
        ("restart", "m1@60", [{"at": 60.0, "restart": ["m1"]}]),
        ("partition", "m0-m4@10-40", [{"at": 10.0, "partition": ["m0-m4"]}, {"at": 40.0, "heal": True}]),
        ("starve", "random:3@20+5/30", [{"at": 20.0, "starve": ["random:3"], "for": 5.0, "every": 30.0}]),
        ("slow", "m9@5+60:0.8", [{"at": 5.0, "slow": ["m9"], "for": 60.0, "delay": 0.8}]),
    ],
)
def test_event_flag_forms(action, text, expected):
    assert parse_event_flag(action, text) == expected


def test_event_flag_invalid_named():
    with pytest.raises(ConfigError, match="--starve: invalid value 'm1@x'"):
        parse_event_flag("starve", "m1@x")


def test_cli_simulate_prints_json(capsys):
    code = main(["simulate", "--members", "6", "--duration", "40", "--crash", "m2@10", "--json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["members"] == 6
    assert data["crashes"][0]["member"] == "m2"
    assert data["crashes"][0]["all_dead"] is not None


def test_cli_simulate_rejects_bad_scenario(capsys):
    assert main(["simulate", "--members", "5", "--crash", "m9@10"]) == 2
    assert "unknown member 'm9'" in capsys.readouterr().err


@pytest.mark.parametrize("incarnation", [0, 127, 128, 300, 70000])
def test_uncompressed_frame_size_exact(incarnation):
    import msgpack

    from mesh.wire import VERSION

    simulation = Simulation(scenario(members=5, wire_bytes="uncompressed"))
    table = tuple(Update(f"m{i}", f"10.0.0.{i}:7001", incarnation, State.SUSPECT, "m1") for i in range(300))
    message = Sync(table, (), True)
    body = msgpack.packb([encode_message(message)], use_bin_type=True)
    frame = 64 + len(msgpack.packb([VERSION, "m1", 1.7e9, 0, body], use_bin_type=True))
    assert simulation.frame_size("m1", message) == frame


@pytest.mark.parametrize("age", [0.05, 0.2, 1.5, 100.0])
def test_uncompressed_frame_size_exact_with_death_ages(age):
    import msgpack

    from mesh.wire import VERSION

    simulation = Simulation(scenario(members=5, wire_bytes="uncompressed"))
    table = tuple(Update(f"m{i}", f"10.0.0.{i}:7001", 4, State.DEAD, age=age) for i in range(50))
    message = Sync(table, (), True)
    body = msgpack.packb([encode_message(message)], use_bin_type=True)
    frame = 64 + len(msgpack.packb([VERSION, "m1", 1.7e9, 0, body], use_bin_type=True))
    assert simulation.frame_size("m1", message) == frame
