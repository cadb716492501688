"""Simulation scenarios: the mesh, its network and the faults, from YAML or flags.

A scenario file looks like this (every key but ``members`` is optional)::

    members: 100            # simulated agents, named m0 .. m99
    duration: 600           # simulated seconds
    seed: 1                 # the same seed gives the same run
    profile: lan            # timing profile, as in the agent's configuration
    timing: {probe_interval: 1.0}   # profile overrides, as in the agent's
                            # (also handoff_delay, group_wait, group_share)
    bootstrap: converged    # or "join": every member joins through m0
    network:
      loss: 0.1             # share of messages dropped, each independently
      latency: lognormal:0.002,0.5    # one-way delay distribution, seconds
    events:
      - {at: 60, crash: [m7], mode: silent}     # silent or refuse
      - {at: 120, restart: [m7]}
      - {at: 200, partition: [m0-m49]}          # these against the rest
      - {at: 260, heal: true}
      - {at: 30, starve: [m1, m2, m3], for: 5, every: 30}
      - {at: 100, slow: [m9], for: 60, delay: 0.8}
      - {at: 300, leave: [m12]}
      - {at: 400, crash_reporter: before_record, for: 30}

A ``crash_reporter`` event crashes the member that sends the first firing
alarm reported at or after ``at``, at one point of its send path:
``before_write`` (before the alarm is in its outbox), ``before_record``
(before the signed ``reported`` record leaves) or ``before_delivery`` (before
the outbox delivers). The member restarts ``for`` seconds later (never when
``for`` is 0 or missing), with its outbox and stored records. Member-down
alarms are grouped as the agent groups them, by the profile's ``group_wait``
and ``group_share``; ``timing: {group_wait: 0}`` turns grouping off.

Members are selected by name (``m7``), by index range (``m0-m49``), by a
seeded random choice (``random:3``) or as ``all``. Latency distributions are
``constant:D``, ``uniform:LOW,HIGH``, ``normal:MEAN,SD``,
``lognormal:MEDIAN,SIGMA`` and ``exponential:MEAN``, in seconds.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..profiles import PROFILES
from ..swim import SwimConfig

__all__ = [
    "Latency",
    "FaultEvent",
    "Scenario",
    "parse_latency",
    "parse_scenario",
    "load_scenario",
    "parse_event_flag",
]

SCENARIO_KEYS = {
    "members",
    "duration",
    "seed",
    "profile",
    "timing",
    "bootstrap",
    "network",
    "events",
    "resolution",
    "wire_bytes",
}
EVENT_ACTIONS = (
    "crash",
    "restart",
    "partition",
    "heal",
    "starve",
    "slow",
    "leave",
    "crash_reporter",
)
CRASH_MODES = ("silent", "refuse")
# Points of a reporter's send path where a crash_reporter event strikes, in the
# order the agent passes them: write the alarm to the outbox, send the signed
# reported record, let the outbox deliver.
SEND_PATH_POINTS = ("before_write", "before_record", "before_delivery")
BOOTSTRAPS = ("converged", "join")
WIRE_BYTES = ("exact", "uncompressed")
# Keys of ``timing`` outside SwimConfig.
PROFILE_TIMING_KEYS = ("handoff_delay", "group_wait", "group_share")


@dataclasses.dataclass(frozen=True, slots=True)
class Latency:
    """A one-way delay distribution, in seconds."""

    kind: str
    params: tuple[float, ...]

    def sample(self, rng: random.Random) -> float:
        """Draw one delay; never negative."""
        p = self.params
        match self.kind:
            case "constant":
                value = p[0]
            case "uniform":
                value = rng.uniform(p[0], p[1])
            case "normal":
                value = rng.gauss(p[0], p[1])
            case "lognormal":
                value = p[0] * math.exp(p[1] * rng.gauss(0.0, 1.0))
            case "exponential":
                value = rng.expovariate(1.0 / p[0])
            case _:  # pragma: no cover - parse_latency admits only the above
                raise AssertionError(self.kind)
        return max(value, 0.0)

    def describe(self) -> str:
        return f"{self.kind}:{','.join(f'{v:g}' for v in self.params)}"


_LATENCY_ARITY = {"constant": 1, "uniform": 2, "normal": 2, "lognormal": 2, "exponential": 1}


def parse_latency(spec: Any) -> Latency:
    """Parse ``KIND:P1[,P2]`` or a mapping ``{distribution: KIND, ...}``.

    Raises:
        ConfigError: unknown distribution, wrong number or sign of parameters.
    """
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        spec = f"constant:{spec}"
    if isinstance(spec, Mapping):
        kind = spec.get("distribution")
        names = {
            "constant": ("value",),
            "uniform": ("low", "high"),
            "normal": ("mean", "sd"),
            "lognormal": ("median", "sigma"),
            "exponential": ("mean",),
        }.get(kind)
        if names is None:
            raise ConfigError(_latency_error(spec))
        try:
            params = tuple(float(spec[n]) for n in names)
        except (KeyError, TypeError, ValueError):
            raise ConfigError(
                f"network.latency: invalid value {dict(spec)!r}, expected the keys "
                f"distribution, {', '.join(names)}"
            ) from None
    elif isinstance(spec, str) and ":" in spec:
        kind, _, rest = spec.partition(":")
        try:
            params = tuple(float(v) for v in rest.split(","))
        except ValueError:
            raise ConfigError(_latency_error(spec)) from None
    else:
        raise ConfigError(_latency_error(spec))
    if _LATENCY_ARITY.get(kind) != len(params) or any(v < 0 for v in params):
        raise ConfigError(_latency_error(spec))
    if kind == "uniform" and params[0] > params[1]:
        raise ConfigError(_latency_error(spec))
    return Latency(kind, params)


def _latency_error(spec: Any) -> str:
    return (
        f"network.latency: invalid value {spec!r}, expected constant:D, uniform:LOW,HIGH, "
        "normal:MEAN,SD, lognormal:MEDIAN,SIGMA or exponential:MEAN with "
        "non-negative seconds"
    )


@dataclasses.dataclass(frozen=True, slots=True)
class FaultEvent:
    """One scheduled fault, with its members resolved to names."""

    at: float
    action: str
    # Members it applies to; for a partition, the first side.
    members: tuple[str, ...] = ()
    # Further sides of a partition; members listed nowhere form the last side.
    groups: tuple[tuple[str, ...], ...] = ()
    # crash: "silent" (a dead host) or "refuse" (a dead process, the host
    # refuses connections at once).
    mode: str = "silent"
    # starve and slow: length of each episode, seconds.
    duration: float = 0.0
    # starve: time between the starts of episodes, 0 for one episode.
    every: float = 0.0
    # slow: extra delay before the member handles each inbound message, seconds.
    delay: float = 0.0
    # crash_reporter: the point of the send path, one of SEND_PATH_POINTS.
    # Its duration is the time until the restart, 0 for none.
    point: str = ""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    members: int
    duration: float
    seed: int
    profile: str
    swim: SwimConfig
    handoff_delay: float
    # Node's grouping of member-down alarms: the wait for other members going
    # down, seconds (0 turns grouping off), and the share of the mesh that
    # must go down together to be reported as one alarm.
    group_wait: float
    group_share: float
    bootstrap: str
    loss: float
    latency: Latency
    events: tuple[FaultEvent, ...]
    # Simulated time is advanced in steps of this many seconds; events in one
    # step run together, in order. Smaller is finer and slower.
    resolution: float
    # "exact" sizes frames as the wire does, compression included;
    # "uncompressed" skips zlib, which is faster and overstates large frames.
    wire_bytes: str

    @property
    def names(self) -> list[str]:
        return member_names(self.members)


def member_names(count: int) -> list[str]:
    return [f"m{i}" for i in range(count)]


# ----------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------


def _number(key: str, value: Any, *, minimum: float = 0.0, integer: bool = False) -> Any:
    valid = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not valid or value < minimum or (integer and value != int(value)):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{key}: invalid value {value!r}, expected {kind} >= {minimum:g}")
    return int(value) if integer else float(value)


def select_members(key: str, spec: Any, names: Sequence[str], rng: random.Random) -> tuple[str, ...]:
    """Resolve a member selector (name, ``mA-mB``, ``random:K``, ``all``, a list)."""
    if isinstance(spec, (list, tuple)):
        chosen: list[str] = []
        for item in spec:
            chosen.extend(n for n in select_members(key, item, names, rng) if n not in chosen)
        return tuple(chosen)
    if not isinstance(spec, str):
        raise ConfigError(f"{key}: invalid value {spec!r}, expected member names")
    known = set(names)
    if spec == "all":
        return tuple(names)
    if spec.startswith("random:"):
        count = spec.partition(":")[2]
        if not count.isdigit() or not 0 < int(count) <= len(names):
            raise ConfigError(f"{key}: invalid value {spec!r}, expected random:K with 1 <= K <= {len(names)}")
        return tuple(rng.sample(list(names), int(count)))
    if "-" in spec:
        first, _, last = spec.partition("-")
        if first in known and last in known:
            low, high = names.index(first), names.index(last)
            if low <= high:
                return tuple(names[low : high + 1])
    if spec in known:
        return (spec,)
    raise ConfigError(
        f"{key}: unknown member {spec!r}, expected m0 .. m{len(names) - 1}, a range "
        "such as m0-m9, random:K or all"
    )


def _parse_event(index: int, raw: Any, names: list[str], rng: random.Random) -> FaultEvent:
    key = f"events[{index}]"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{key}: invalid value {raw!r}, expected a mapping")
    actions = [a for a in EVENT_ACTIONS if a in raw]
    if len(actions) != 1:
        raise ConfigError(
            f"{key}: expected exactly one of {', '.join(EVENT_ACTIONS)}, got {sorted(raw)!r}"
        )
    action = actions[0]
    allowed = {"at", action, "mode", "for", "every", "delay"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: unknown key")
    at = _number(f"{key}.at", raw.get("at", 0.0))
    value = raw[action]

    if action == "heal":
        return FaultEvent(at, "heal")
    if action == "crash_reporter":
        return _parse_reporter_crash(key, at, raw)
    if action == "partition":
        sides = value if isinstance(value, list) and value and isinstance(value[0], list) else [value]
        groups = tuple(select_members(f"{key}.partition", side, names, rng) for side in sides)
        return FaultEvent(at, "partition", groups[0], groups[1:])

    members = select_members(f"{key}.{action}", value, names, rng)
    if action == "crash":
        mode = raw.get("mode", "silent")
        if mode not in CRASH_MODES:
            raise ConfigError(f"{key}.mode: invalid value {mode!r}, expected silent or refuse")
        return FaultEvent(at, "crash", members, mode=mode)
    if action == "starve":
        duration = _number(f"{key}.for", raw.get("for", 5.0))
        every = _number(f"{key}.every", raw.get("every", 0.0))
        if every and every <= duration:
            raise ConfigError(f"{key}.every: {every!r} must exceed for ({duration!r}) or be 0")
        return FaultEvent(at, "starve", members, duration=duration, every=every)
    if action == "slow":
        duration = _number(f"{key}.for", raw.get("for", 60.0))
        delay = _number(f"{key}.delay", raw.get("delay", 0.5))
        return FaultEvent(at, "slow", members, duration=duration, delay=delay)
    return FaultEvent(at, action, members)


def _parse_reporter_crash(key: str, at: float, raw: Mapping[str, Any]) -> FaultEvent:
    point = raw["crash_reporter"]
    if point not in SEND_PATH_POINTS:
        raise ConfigError(
            f"{key}.crash_reporter: invalid value {point!r}, expected one of "
            f"{', '.join(SEND_PATH_POINTS)}"
        )
    mode = raw.get("mode", "silent")
    if mode not in CRASH_MODES:
        raise ConfigError(f"{key}.mode: invalid value {mode!r}, expected silent or refuse")
    restart_after = _number(f"{key}.for", raw.get("for", 0.0))
    return FaultEvent(at, "crash_reporter", mode=mode, duration=restart_after, point=point)


def _parse_swim(raw: Mapping[str, Any]) -> tuple[str, SwimConfig, dict[str, float]]:
    """Return the profile's name, its SwimConfig and its PROFILE_TIMING_KEYS values."""
    name = raw.get("profile", "lan")
    if name not in PROFILES:
        raise ConfigError(f"profile: invalid value {name!r}, expected one of {', '.join(PROFILES)}")
    profile = PROFILES[name]
    timing = raw.get("timing") or {}
    if not isinstance(timing, Mapping):
        raise ConfigError(f"timing: invalid value {timing!r}, expected a mapping")
    fields = {f.name: f.type for f in dataclasses.fields(SwimConfig)}
    changes: dict[str, Any] = {}
    profile_values = {
        "handoff_delay": profile.handoff_delay,
        "group_wait": profile.group_wait,
        "group_share": profile.group_share,
    }
    for key, value in timing.items():
        if key == "group_share":
            valid = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not valid or not 0 < value <= 1:
                raise ConfigError(
                    f"timing.group_share: invalid value {value!r}, expected a share "
                    "of the mesh above 0 and at most 1"
                )
            profile_values[key] = float(value)
        elif key in PROFILE_TIMING_KEYS:
            profile_values[key] = _number(f"timing.{key}", value)
        elif key in fields:
            integer = fields[key] in (int, "int")
            changes[key] = _number(f"timing.{key}", value, integer=integer)
        else:
            expected = ", ".join(sorted([*fields, *PROFILE_TIMING_KEYS]))
            raise ConfigError(f"timing.{key}: unknown key, expected one of {expected}")
    try:
        swim = dataclasses.replace(profile.swim, **changes)
    except ValueError as exc:
        raise ConfigError(f"timing: {exc}") from None
    return name, swim, profile_values


def parse_scenario(raw: Any, extra_events: Sequence[Mapping[str, Any]] = ()) -> Scenario:
    """Validate a decoded scenario and resolve its member selectors.

    Args:
        raw: the decoded YAML mapping (or the mapping built from flags).
        extra_events: more events, as mappings, appended to the file's.

    Raises:
        ConfigError: names the key, the bad value and what is expected.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"scenario must be a mapping, got {raw!r}")
    unknown = sorted(set(raw) - SCENARIO_KEYS)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key, expected one of {', '.join(sorted(SCENARIO_KEYS))}")
    members = _number("members", raw.get("members", 20), minimum=2, integer=True)
    duration = _number("duration", raw.get("duration", 600.0), minimum=1.0)
    seed = _number("seed", raw.get("seed", 1), integer=True)
    resolution = _number("resolution", raw.get("resolution", 0.001), minimum=1e-6)
    profile, swim, profile_values = _parse_swim(raw)

    bootstrap = raw.get("bootstrap", "converged")
    if bootstrap not in BOOTSTRAPS:
        raise ConfigError(f"bootstrap: invalid value {bootstrap!r}, expected converged or join")
    wire_bytes = raw.get("wire_bytes", "exact")
    if wire_bytes not in WIRE_BYTES:
        raise ConfigError(f"wire_bytes: invalid value {wire_bytes!r}, expected exact or uncompressed")

    network = raw.get("network") or {}
    if not isinstance(network, Mapping):
        raise ConfigError(f"network: invalid value {network!r}, expected a mapping")
    for key in sorted(set(network) - {"loss", "latency"}):
        raise ConfigError(f"network.{key}: unknown key, expected loss or latency")
    loss = _number("network.loss", network.get("loss", 0.0))
    if loss >= 1:
        raise ConfigError(f"network.loss: invalid value {loss!r}, expected a share below 1")
    latency = parse_latency(network.get("latency", "lognormal:0.002,0.5"))

    events_raw = list(raw.get("events") or []) + list(extra_events)
    # Random member choices draw from their own generator, so that they do not
    # shift when the protocol's random draws change.
    rng = random.Random(f"members/{seed}")
    names = member_names(members)
    events = [_parse_event(i, e, names, rng) for i, e in enumerate(events_raw)]
    events.sort(key=lambda e: e.at)
    return Scenario(
        members=members,
        duration=duration,
        seed=seed,
        profile=profile,
        swim=swim,
        handoff_delay=profile_values["handoff_delay"],
        group_wait=profile_values["group_wait"],
        group_share=profile_values["group_share"],
        bootstrap=bootstrap,
        loss=loss,
        latency=latency,
        events=tuple(events),
        resolution=resolution,
        wire_bytes=wire_bytes,
    )


def load_scenario(path: Path) -> dict[str, Any]:
    """Read a scenario file and return its decoded mapping.

    Raises:
        ConfigError: the file is missing or is not a YAML mapping.
    """
    import yaml

    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read scenario {str(path)!r}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"scenario {str(path)!r} is not valid YAML: {exc}") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"scenario {str(path)!r} must be a YAML mapping")
    return dict(raw)


def parse_event_flag(action: str, text: str) -> list[dict[str, Any]]:
    """Turn a command-line event into event mappings.

    Forms: ``--crash SEL@T[:refuse]``, ``--restart SEL@T``, ``--leave SEL@T``,
    ``--partition SEL@T-HEAL``, ``--starve SEL@T+FOR[/EVERY]``,
    ``--slow SEL@T+FOR:DELAY``. SEL is a member selector; commas separate
    several members.

    Raises:
        ConfigError: the text does not match its form.
    """
    forms = {
        "crash": "SEL@T or SEL@T:refuse",
        "restart": "SEL@T",
        "leave": "SEL@T",
        "partition": "SEL@T-HEAL",
        "starve": "SEL@T+FOR or SEL@T+FOR/EVERY",
        "slow": "SEL@T+FOR:DELAY",
    }
    selector, _, when = text.partition("@")
    members = selector.split(",") if selector else []
    error = ConfigError(f"--{action}: invalid value {text!r}, expected {forms[action]}")
    try:
        if action == "crash":
            at, _, mode = when.partition(":")
            event = {"at": float(at), "crash": members}
            if mode:
                event["mode"] = mode
            return [event]
        if action in ("restart", "leave"):
            return [{"at": float(when), action: members}]
        if action == "partition":
            at, _, heal = when.partition("-")
            return [
                {"at": float(at), "partition": members},
                {"at": float(heal), "heal": True},
            ]
        at, _, rest = when.partition("+")
        if action == "starve":
            length, _, every = rest.partition("/")
            event = {"at": float(at), "starve": members, "for": float(length)}
            return [event | {"every": float(every or 0)}]
        length, _, delay = rest.partition(":")
        return [{"at": float(at), "slow": members, "for": float(length), "delay": float(delay)}]
    except ValueError:
        raise error from None
