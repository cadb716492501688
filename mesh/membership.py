"""Member states and the merge rules for membership updates.

These are pure functions of (state, incarnation) pairs, shared by the SWIM state
machine, push-pull merges and the simulator.

The order of updates about one member:

* a higher incarnation always wins, whatever the states, because only the member
  itself raises its incarnation (to refute a suspicion or to rejoin);
* at equal incarnation, alive < suspect < dead < left, so a suspicion overrides
  the alive it suspects, a death confirms a suspicion, and a graceful leave is
  final for that incarnation.
"""

from __future__ import annotations

import dataclasses
import enum

__all__ = ["State", "Member", "supersedes"]


class State(enum.Enum):
    """Membership state of one member.

    The integer codes go on the wire: append new states, never reorder.
    """

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def is_active(self) -> bool:
        """Whether the member is probed and counted as part of the mesh."""
        return self in (State.ALIVE, State.SUSPECT)


# Precedence at equal incarnation; the wire codes happen to match it.
_PRECEDENCE = {State.ALIVE: 0, State.SUSPECT: 1, State.DEAD: 2, State.LEFT: 3}


def supersedes(
    new_state: State, new_incarnation: int, state: State, incarnation: int
) -> bool:
    """Return whether an update (new_state, new_incarnation) replaces what we hold."""
    if new_incarnation != incarnation:
        return new_incarnation > incarnation
    return _PRECEDENCE[new_state] > _PRECEDENCE[state]


@dataclasses.dataclass(slots=True)
class Member:
    """What this agent believes about one member of the mesh."""

    name: str
    # HOST:PORT that peers use to reach the member's HTTP endpoint.
    address: str
    # The member's own counter; raised only by the member, to refute or rejoin.
    incarnation: int
    state: State
    # Monotonic time of the last state change, seconds (runtime clock).
    since: float
