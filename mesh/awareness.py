"""Local health awareness (Lifeguard's LHA-Probe).

A member that is itself slow (CPU starved, paused by the garbage collector,
behind a saturated link) sees acks arrive late and concludes that healthy
members failed. Lifeguard (Dadgar, Phillips, Currey, 2017) lets a member notice
its own trouble and slow down: a health score rises on evidence that the fault
is local and falls on evidence that this member works, and the probe interval
and probe timeout are multiplied by ``score + 1``.

Evidence, as in hashicorp/memberlist's ``probeNode`` and ``refute``:

* a probe that ends with an ack, direct or relayed: ``-1``;
* a failed probe: ``+1`` per indirect prober whose nack did not arrive, since a
  prober that answers nothing while the target is silent points at us; when no
  prober was asked, ``+1``;
* having to refute a suspicion or death of ourselves: ``+1``, since others
  could not reach us.

memberlist stretches only the probe interval; we stretch the probe timeout too,
as the Lifeguard paper does, because over HTTP a starved member also answers
late and waiting longer lets its acks count.
"""

from __future__ import annotations

__all__ = ["Awareness"]


class Awareness:
    """The health score of this member: 0 is healthy, higher is worse."""

    def __init__(self, max_multiplier: int) -> None:
        if max_multiplier < 1:
            raise ValueError(f"invalid max_multiplier {max_multiplier!r}, expected >= 1")
        # Timeouts are multiplied by at most this; the score stays below it.
        self.max_multiplier = max_multiplier
        # Current score in [0, max_multiplier - 1]; changed only by apply_delta.
        self.score = 0

    def apply_delta(self, delta: int) -> int:
        """Add ``delta`` to the score, clamped to its range, and return the score."""
        self.score = min(max(self.score + delta, 0), self.max_multiplier - 1)
        return self.score

    def scale(self, duration: float) -> float:
        """Return ``duration`` stretched by the current score, in the same unit."""
        return duration * (self.score + 1)
