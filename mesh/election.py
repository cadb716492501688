"""Reporter election by rendezvous hashing.

Every member ranks the eligible members for an incident with the same function
of (incident id, member name), so that all members that agree on who is alive
agree on the order without exchanging a message. Rendezvous (highest random
weight) hashing spreads incidents evenly over members, and when a member leaves
only the incidents it ranked first move, each to its own runner-up.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["rank_members", "rendezvous_weight"]


def rendezvous_weight(incident: str, member: str) -> int:
    # Member names never contain NUL (the config rejects it), so the pair is
    # encoded without ambiguity.
    data = incident.encode() + b"\0" + member.encode()
    digest = hashlib.blake2b(data, digest_size=8, person=b"alarminati").digest()
    return int.from_bytes(digest, "big")


def rank_members(incident: str, members: Iterable[str]) -> list[str]:
    """Return ``members`` ordered from the first reporter to the last.

    Ties (equal 64-bit weights) are broken by name, so the order is total.
    """
    return sorted(set(members), key=lambda m: (-rendezvous_weight(incident, m), m))
