"""Shared checks: every member's damped verdict, gossiped, and the quorum over them.

A shared check (a public domain watched from every cluster) fires only when a
quorum of the members that run it see it failing, so one cluster's broken
egress pages no team for a healthy domain. Each member publishes one
:class:`Observed` per shared check, versioned so that the newest wins, and
piggybacks it like a membership update.

Every member computes the verdict from the same gossiped table. The incident
id must also come out the same everywhere, so it is derived from the table:
the start of a quorum failure is the moment the quorum-th member started
failing, which every member reads from the ``since`` times it has received.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

__all__ = ["Observed", "Verdict", "ObservationTable", "required_quorum"]


@dataclasses.dataclass(frozen=True, slots=True)
class Observed:
    """One member's damped verdict on one shared check."""

    check: str
    member: str
    failing: bool
    # Wall-clock time (Unix seconds) the member's verdict last changed.
    since: float
    # Raised by the member on every change; the highest version wins.
    version: int


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    check: str
    failing: tuple[str, ...]
    passing: tuple[str, ...]
    # Failing members needed for a quorum.
    required: int
    # Start of the quorum failure (the required-th earliest ``since`` among
    # failing members), or None without a quorum.
    started: float | None
    # Without a quorum, when it was lost: the moment enough members passed
    # that the rest could no longer make a quorum. None while no member passes.
    ended: float | None = None

    @property
    def reached(self) -> bool:
        return self.started is not None


def required_quorum(quorum: float | int, runners: int) -> int:
    """Return how many of ``runners`` members must fail for a quorum.

    A float is a share that must be exceeded (0.5 is a strict majority); an int
    is a count, capped at the number of runners.
    """
    if runners <= 0:
        return 1
    if isinstance(quorum, int) and not isinstance(quorum, bool):
        return max(1, min(quorum, runners))
    return max(1, min(math.floor(quorum * runners) + 1, runners))


class ObservationTable:
    """The latest :class:`Observed` of every member for every shared check."""

    def __init__(self) -> None:
        # Check name to member name to that member's latest observation.
        self._table: dict[str, dict[str, Observed]] = {}

    def merge(self, observed: Observed) -> bool:
        """Keep ``observed`` if it is newer than what we hold; return whether it was."""
        members = self._table.setdefault(observed.check, {})
        current = members.get(observed.member)
        if current is not None and current.version >= observed.version:
            return False
        members[observed.member] = observed
        return True

    def publish(self, check: str, member: str, failing: bool, since: float) -> Observed:
        """Record this member's own new verdict and return it for gossip.

        The version is the wall-clock time in milliseconds, so that after a
        restart the member's new verdicts still beat the old ones that the
        others keep and pass on.
        """
        current = self._table.get(check, {}).get(member)
        version = int(since * 1000)
        if current is not None:
            version = max(version, current.version + 1)
        observed = Observed(check, member, failing, since, version)
        self.merge(observed)
        return observed

    def get(self, check: str, member: str) -> Observed | None:
        return self._table.get(check, {}).get(member)

    def all(self) -> list[Observed]:
        return [o for members in self._table.values() for o in members.values()]

    def verdict(self, check: str, active: Iterable[str], quorum: float | int) -> Verdict:
        """Judge ``check`` over the active members that run it."""
        active = set(active)
        runners = [o for m, o in self._table.get(check, {}).items() if m in active]
        failing = sorted(runners, key=lambda o: (o.since, o.member))
        failing = [o for o in failing if o.failing]
        passing = sorted(o.member for o in runners if not o.failing)
        required = required_quorum(quorum, len(runners))
        started = failing[required - 1].since if len(failing) >= required else None
        ended = None
        passes = sorted(o.since for o in runners if not o.failing)
        needed = len(runners) - required + 1
        if started is None and passes:
            ended = passes[min(needed, len(passes)) - 1]
        return Verdict(
            check, tuple(o.member for o in failing), tuple(passing), required, started, ended
        )
