"""Flap damping of one check's results, as a pure state machine.

A check's raw results pass through four states::

    passing --fail--> pending --failing for fail_for--> failing
    failing --pass--> recovering --passing for resolve_for--> passing

Only the edges into ``failing`` and back into ``passing`` are reported, so a
check that fails once and passes again (``pending`` back to ``passing``) or
passes once in a long failure (``recovering`` back to ``failing``) raises
nothing. ``min_alarm_interval`` bounds what still gets through: a failure that
starts less than that after the previous one is held back until the interval
has passed, and dropped if it resolves first.
"""

from __future__ import annotations

import dataclasses
import enum

__all__ = ["Phase", "Damper", "Edge"]


class Phase(enum.Enum):
    PASSING = "passing"
    PENDING = "pending"
    FAILING = "failing"
    RECOVERING = "recovering"


class Edge(enum.Enum):
    """A reported change of a damped check."""

    STARTED_FAILING = "started_failing"
    STOPPED_FAILING = "stopped_failing"


@dataclasses.dataclass(slots=True)
class Damper:
    """Turns raw pass/fail results into damped start and stop edges."""

    # Seconds a check must keep failing before it counts as failing.
    fail_for: float
    # Seconds it must keep passing before a failure counts as over.
    resolve_for: float
    # Minimum seconds between the starts of two reported failures.
    min_alarm_interval: float
    phase: Phase = Phase.PASSING
    # Monotonic time the current phase's condition started to hold.
    phase_since: float = 0.0
    # Monotonic time the current or last failure started to count as failing.
    failing_since: float | None = None
    # Monotonic time of the last reported start, for the flap limit.
    last_started: float | None = None

    def observe(self, ok: bool, now: float) -> Edge | None:
        """Feed one result; return the edge it completes, if any."""
        match self.phase, ok:
            case Phase.PASSING, False:
                self._enter(Phase.PENDING, now)
                return self._promote(now)
            case Phase.PENDING, True:
                self._enter(Phase.PASSING, now)
            case Phase.PENDING, False:
                return self._promote(now)
            case Phase.FAILING, True:
                self._enter(Phase.RECOVERING, now)
                return self._demote(now)
            case Phase.RECOVERING, False:
                self._enter(Phase.FAILING, now)
            case Phase.RECOVERING, True:
                return self._demote(now)
        return None

    def _enter(self, phase: Phase, now: float) -> None:
        self.phase, self.phase_since = phase, now

    def _promote(self, now: float) -> Edge | None:
        if now - self.phase_since < self.fail_for:
            return None
        if self.last_started is not None:
            if now - self.last_started < self.min_alarm_interval:
                return None
        self._enter(Phase.FAILING, now)
        self.failing_since = now
        self.last_started = now
        return Edge.STARTED_FAILING

    def _demote(self, now: float) -> Edge | None:
        if now - self.phase_since < self.resolve_for:
            return None
        self._enter(Phase.PASSING, now)
        return Edge.STOPPED_FAILING

    @property
    def is_failing(self) -> bool:
        """Whether the check counts as failing (recovering included)."""
        return self.phase in (Phase.FAILING, Phase.RECOVERING)
