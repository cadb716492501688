"""Reporter election by rendezvous hashing.

Every member ranks the eligible members for an incident with the same function
of (incident id, member name), so that all members that agree on who is alive
agree on the order without exchanging a message. Rendezvous (highest random
weight) hashing spreads incidents evenly over members, and when a member leaves
only the incidents it ranked first move, each to its own runner-up.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable

__all__ = ["rank_members", "rendezvous_weight"]


@functools.lru_cache(maxsize=65536)
def rendezvous_weight(incident: str, member: str) -> int:
    # Cached: every member ranks the same (incident, member) pairs, which the
    # simulator does for a thousand members in one process.
    # Member names never contain NUL (the config rejects it), so the pair is
    # encoded without ambiguity.
    data = incident.encode() + b"\0" + member.encode()
    digest = hashlib.blake2b(data, digest_size=8, person=b"alarminati").digest()
    return int.from_bytes(digest, "big")


def rank_members(incident: str, members: Iterable[str]) -> list[str]:
    """Return ``members`` ordered from the first reporter to the last.

    Ties (equal 64-bit weights) are broken by name, so the order is total.
    """
    return list(_ranking(incident, frozenset(members)))


@functools.lru_cache(maxsize=1024)
def _ranking(incident: str, members: frozenset[str]) -> tuple[str, ...]:
    # Cached for the simulator, where a thousand members rank the same
    # members for the same incident; an agent ranks each incident a few times.
    return tuple(sorted(members, key=lambda m: (-rendezvous_weight(incident, m), m)))
