"""Member states and the merge rules for membership updates.

These are pure functions of (state, incarnation) pairs, shared by the SWIM state
machine, push-pull merges and the simulator, and checked by property tests.

The order of updates about one member:

* a higher incarnation always wins, whatever the states, because only the member
  itself raises its incarnation (to refute a suspicion or to rejoin);
* at equal incarnation, alive < suspect < dead < left, so a suspicion overrides
  the alive it suspects, a death confirms a suspicion, and a graceful leave is
  final for that incarnation.

Updates about this member itself are never merged: :func:`refutation` decides
whether to answer them with a higher incarnation, so that no other member can
raise or lower the number that this member announces.
"""

from __future__ import annotations

import dataclasses
import enum

__all__ = ["State", "Member", "Merge", "supersedes", "merge_decision", "refutation"]


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


class Merge(enum.Enum):
    """What to do with an update about another member."""

    # A member not known before: add it.
    ADD = "add"
    # A suspicion of a member never seen alive carries nothing worth keeping:
    # its address and liveness come from the member's own alive update.
    IGNORE_UNKNOWN_SUSPECT = "ignore_unknown_suspect"
    # Older or equal news: keep what we hold.
    IGNORE_STALE = "ignore_stale"
    # The same suspicion we hold, perhaps from another member: count it as a
    # confirmation when its source is new.
    CONFIRM = "confirm"
    # Newer news: replace what we hold.
    APPLY = "apply"


def merge_decision(
    held: tuple[State, int] | None, new_state: State, new_incarnation: int
) -> Merge:
    """Decide how an update about another member merges into what we hold.

    Args:
        held: the (state, incarnation) we hold for the member, or None.
        new_state: the state the update claims.
        new_incarnation: the incarnation the update claims.

    Returns:
        The named decision; only ADD and APPLY change the table.
    """
    if held is None:
        if new_state is State.SUSPECT:
            return Merge.IGNORE_UNKNOWN_SUSPECT
        return Merge.ADD
    state, incarnation = held
    if supersedes(new_state, new_incarnation, state, incarnation):
        return Merge.APPLY
    if new_state is State.SUSPECT and state is State.SUSPECT:
        if new_incarnation == incarnation:
            return Merge.CONFIRM
    return Merge.IGNORE_STALE


def refutation(own_incarnation: int, claim_state: State, claim_incarnation: int) -> int | None:
    """Return the incarnation that refutes a claim about this member, or None.

    A suspicion, death or leave claimed at our incarnation or above is refuted
    by announcing ourselves alive one above it. An older claim is already
    refuted, and an alive claim needs no answer.

    Args:
        own_incarnation: the incarnation this member announces now.
        claim_state: the state another member claims for us.
        claim_incarnation: the incarnation of that claim.
    """
    if claim_state is State.ALIVE or claim_incarnation < own_incarnation:
        return None
    return claim_incarnation + 1


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
