"""The queue of updates waiting to be piggybacked on outgoing messages.

Each item is sent a bounded number of times, ``retransmit_mult × ⌈log10(n + 1)⌉``
for a mesh of n members, which is enough for epidemic dissemination to reach
every member with high probability (SWIM section 4.1, memberlist's
``retransmitLimit``). Items sent fewer times go first, so new news spreads
before old news is repeated. A newer item about the same subject replaces the
older one, because the older one can only mislead.
"""

from __future__ import annotations

import math
from collections.abc import Hashable

from .messages import Reported, Update

__all__ = ["BroadcastQueue", "retransmit_limit"]


def retransmit_limit(retransmit_mult: int, members: int) -> int:
    return retransmit_mult * max(1, math.ceil(math.log10(members + 1)))


class BroadcastQueue:
    """Items to piggyback, each with the number of times it has been sent."""

    def __init__(self, retransmit_mult: int) -> None:
        self._retransmit_mult = retransmit_mult
        # Subject key to [transmits, insertion order, item]; the insertion order
        # breaks ties so that older items at equal transmits go first.
        self._items: dict[Hashable, list] = {}
        self._counter = 0

    def __len__(self) -> int:
        return len(self._items)

    def push(self, item: Update | Reported) -> None:
        """Queue ``item``, replacing any queued item about the same subject."""
        if isinstance(item, Update):
            key: Hashable = ("member", item.name)
        else:
            key = ("reported", item.incident, item.status)
        self._counter += 1
        self._items[key] = [0, self._counter, item]

    def take(self, max_items: int, members: int) -> tuple[Update | Reported, ...]:
        """Return up to ``max_items`` items to piggyback and count them as sent."""
        if not self._items:
            return ()
        limit = retransmit_limit(self._retransmit_mult, members)
        chosen = sorted(self._items.items(), key=lambda kv: (kv[1][0], kv[1][1]))
        taken = []
        for key, entry in chosen[:max_items]:
            entry[0] += 1
            taken.append(entry[2])
            if entry[0] >= limit:
                del self._items[key]
        return tuple(taken)
