"""The piggyback queue: transmit limits, order, replacement."""

import pytest

from mesh.broadcasts import BroadcastQueue, retransmit_limit
from mesh.membership import State
from mesh.messages import Update


def alive(name, incarnation=0):
    return Update(name, name, incarnation, State.ALIVE)


@pytest.mark.parametrize(
    ("mult", "members", "expected"), [(4, 1, 4), (4, 9, 4), (4, 10, 8), (4, 100, 12), (2, 1000, 8)]
)
def test_retransmit_limit_table(mult, members, expected):
    assert retransmit_limit(mult, members) == expected


def test_queue_sends_each_item_limit_times():
    queue = BroadcastQueue(2)
    queue.push(alive("a"))
    sent = [queue.take(12, members=5) for _ in range(4)]
    assert sent == [(alive("a"),), (alive("a"),), (), ()]
    assert len(queue) == 0


def test_queue_fewer_transmits_first_then_newest():
    queue = BroadcastQueue(4)
    queue.push(alive("a"))
    queue.push(alive("b"))
    assert queue.take(1, members=5) == (alive("b"),)
    queue.push(alive("c"))
    # c and a were sent 0 times, c is newer; b was sent once.
    assert queue.take(3, members=5) == (alive("c"), alive("a"), alive("b"))


def test_queue_newer_item_replaces_older():
    queue = BroadcastQueue(4)
    queue.push(alive("a", 1))
    queue.take(1, members=5)
    queue.push(alive("a", 2))
    assert len(queue) == 1
    assert queue.take(12, members=5) == (alive("a", 2),)


def test_queue_peek_counts_nothing():
    queue = BroadcastQueue(1)
    queue.push(alive("a"))
    assert queue.peek(12) == (alive("a"),)
    assert queue.peek(12) == (alive("a"),)
    assert queue.take(12, members=5) == (alive("a"),)
    assert queue.peek(12) == ()


def test_queue_take_respects_max_items():
    queue = BroadcastQueue(4)
    for i in range(30):
        queue.push(alive(f"m{i}"))
    assert len(queue.take(12, members=30)) == 12
    assert len(queue) == 30


def test_queue_stays_bounded_under_replacement():
    queue = BroadcastQueue(4)
    for i in range(10_000):
        queue.push(alive("a", i))
    assert len(queue) == 1
    assert len(queue._heap) < 200
