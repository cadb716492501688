"""The queue of updates waiting to be piggybacked on outgoing messages.

Each item is sent a bounded number of times, ``retransmit_mult × ⌈log10(n + 1)⌉``
for a mesh of n members, which is enough for epidemic dissemination to reach
every member with high probability (SWIM section 4.1, memberlist's
``retransmitLimit``). Items sent fewer times go first and, among those, newer
items first (memberlist's ``TransmitLimitedQueue`` order), so fresh news spreads
before old news is repeated. A newer item about the same subject replaces the
older one, because the older one can only mislead.

The items live in a heap ordered by (transmits, newest first), so taking a few
items costs O(log n) each however long the queue is: a mesh of 1,000 members
queues 1,000 alive updates when it forms.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable

from .messages import Reported, Update
from .observations import Observed

__all__ = ["BroadcastQueue", "retransmit_limit"]


def retransmit_limit(retransmit_mult: int, members: int) -> int:
    return retransmit_mult * max(1, math.ceil(math.log10(members + 1)))


class _Entry:
    __slots__ = ("transmits", "key", "item", "queued")

    def __init__(self, key: Hashable, item: Update | Reported | Observed) -> None:
        self.transmits = 0
        self.key = key
        self.item = item
        # False once replaced or sent its last time; the heap drops it lazily.
        self.queued = True


class BroadcastQueue:
    """Items to piggyback, each with the number of times it has been sent."""

    def __init__(self, retransmit_mult: int) -> None:
        self._retransmit_mult = retransmit_mult
        # Queued entry by subject key.
        self._entries: dict[Hashable, _Entry] = {}
        # (transmits, negated insertion counter, entry): tuples compare in C,
        # newer entries first at equal transmits. An entry whose transmits
        # moved on, or that is no longer queued, is dropped when popped.
        self._heap: list[tuple[int, int, _Entry]] = []
        self._counter = 0

    def __len__(self) -> int:
        return len(self._entries)

    def push(self, item: Update | Reported | Observed) -> None:
        """Queue ``item``, replacing any queued item about the same subject."""
        if isinstance(item, Update):
            key: Hashable = ("member", item.name)
        elif isinstance(item, Observed):
            key = ("observed", item.check, item.member)
        else:
            key = ("reported", item.incident, item.status)
        old = self._entries.get(key)
        if old is not None:
            old.queued = False
        self._counter += 1
        entry = _Entry(key, item)
        self._entries[key] = entry
        heapq.heappush(self._heap, (0, -self._counter, entry))
        # Stale tuples stay in the heap until popped; rebuild it when they
        # outnumber the queued ones, so it stays O(queued).
        if len(self._heap) > 2 * len(self._entries) + 64:
            self._heap = [t for t in self._heap if _current(t)]
            heapq.heapify(self._heap)

    def peek(self, max_items: int) -> tuple[Update | Reported | Observed, ...]:
        """Return the items ``take`` would return, without counting them as sent."""
        chosen = heapq.nsmallest(max_items, (t for t in self._heap if _current(t)))
        return tuple(t[2].item for t in chosen)

    def take(
        self, max_items: int, members: int
    ) -> tuple[Update | Reported | Observed, ...]:
        """Return up to ``max_items`` items to piggyback and count them as sent."""
        if not self._entries:
            return ()
        limit = retransmit_limit(self._retransmit_mult, members)
        heap = self._heap
        taken: list[tuple[int, int, _Entry]] = []
        while heap and len(taken) < max_items:
            top = heapq.heappop(heap)
            if _current(top):
                taken.append(top)
        items = []
        for transmits, order, entry in taken:
            items.append(entry.item)
            entry.transmits = transmits + 1
            if entry.transmits >= limit:
                entry.queued = False
                del self._entries[entry.key]
            else:
                heapq.heappush(heap, (entry.transmits, order, entry))
        return tuple(items)


def _current(heap_item: tuple[int, int, _Entry]) -> bool:
    transmits, _, entry = heap_item
    return entry.queued and entry.transmits == transmits
