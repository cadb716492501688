"""Dynamic suspicion timeouts with independent confirmations (Lifeguard).

SWIM gives a suspect member a fixed time to refute before it is declared dead.
A long timeout rarely declares a healthy member dead but detects real failures
late; a short one does the opposite. Lifeguard's LHA-Suspicion starts the timer
at a maximum and shrinks it towards a minimum as independent members report
the same suspicion: one member's failed probe may be its own fault (it is slow,
its link is lossy), but k members failing to reach the target independently is
strong evidence, and then waiting the maximum only delays the alarm.

With n confirmations out of the k expected, the timeout measured from the
start of the suspicion is::

    max - (max - min) × log(n + 1) / log(k + 1),   never below min

so the first confirmations shrink it most. As in hashicorp/memberlist:

* min = suspicion_mult × max(1, log10 N) × probe_interval, which grows slowly
  with the mesh because gossip needs about log N rounds to reach everyone;
* max = suspicion_max_timeout_mult × min;
* k = suspicion_mult - 2, so that the timer reaches min two probe periods before
  the nominal timeout, and k = 0 when fewer than k other members could confirm
  (then the timer starts at min);
* the member that raised the suspicion is counted once and never confirms it.
"""

from __future__ import annotations

import math

__all__ = [
    "Suspicion",
    "suspicion_bounds",
    "expected_confirmations",
    "remaining_suspicion",
]


def suspicion_bounds(
    suspicion_mult: float, max_timeout_mult: float, members: int, probe_interval: float
) -> tuple[float, float]:
    """Return the (min, max) suspicion timeouts in seconds for a mesh of ``members``."""
    scale = max(1.0, math.log10(max(members, 1)))
    minimum = suspicion_mult * scale * probe_interval
    return minimum, max_timeout_mult * minimum


def expected_confirmations(suspicion_mult: float, members: int) -> int:
    """Return k, the confirmations that drive the timeout to its minimum.

    ``members`` counts the whole mesh; the suspecting member and the suspect
    cannot confirm, so when fewer than k others remain no confirmation is
    expected.
    """
    k = max(int(suspicion_mult) - 2, 0)
    if members - 2 < k:
        return 0
    return k


def remaining_suspicion(
    confirmations: int, k: int, elapsed: float, min_timeout: float, max_timeout: float
) -> float:
    """Return the seconds left before a suspicion expires; may be negative.

    Args:
        confirmations: independent confirmations received, the raiser excluded.
        k: confirmations that drive the timeout to ``min_timeout``.
        elapsed: seconds since the suspicion started.
        min_timeout: timeout with k or more confirmations, seconds.
        max_timeout: timeout without confirmations, seconds.
    """
    if k < 1:
        timeout = min_timeout
    else:
        fraction = math.log(confirmations + 1) / math.log(k + 1)
        raw = max_timeout - fraction * (max_timeout - min_timeout)
        # Whole milliseconds, as memberlist computes it.
        timeout = max(math.floor(raw * 1000) / 1000, min_timeout)
    return timeout - elapsed


class Suspicion:
    """The timer of one suspected member and the members that confirmed it."""

    __slots__ = ("incarnation", "source", "started", "k", "min", "max", "sources", "deadline")

    def __init__(
        self,
        *,
        incarnation: int,
        source: str,
        started: float,
        k: int,
        min_timeout: float,
        max_timeout: float,
    ) -> None:
        # Incarnation of the suspect this suspicion is about.
        self.incarnation = incarnation
        # Member that raised the suspicion first, as far as we know.
        self.source = source
        # Monotonic time the suspicion started here, seconds.
        self.started = started
        # Confirmations that drive the timeout to min.
        self.k = k
        # Bounds of the timeout, seconds.
        self.min = min_timeout
        self.max = max_timeout
        # Members counted so far, the raiser included; each counts once.
        self.sources = {source}
        # Monotonic time the suspect is declared dead unless it refutes.
        self.deadline = started + remaining_suspicion(0, k, 0.0, min_timeout, max_timeout)

    @property
    def confirmations(self) -> int:
        return len(self.sources) - 1

    def confirm(self, source: str, now: float) -> bool:
        """Count ``source`` as an independent confirmation; return whether it was new.

        Once k confirmations are in, further ones change nothing and are not new,
        so they are not gossiped again.
        """
        if self.confirmations >= self.k or source in self.sources:
            return False
        self.sources.add(source)
        elapsed = now - self.started
        remaining = remaining_suspicion(
            self.confirmations, self.k, elapsed, self.min, self.max
        )
        self.deadline = now + remaining
        return True
