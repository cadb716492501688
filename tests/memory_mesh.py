"""An in-memory transport that drives :class:`mesh.node.Node` without I/O.

Messages are delivered after a fixed latency in time order; a crashed member
drops everything sent to it. Used by unit tests of the protocol core.
"""

from __future__ import annotations

import heapq
import itertools
import random

from mesh.node import Node
from mesh.swim import Outbound, SwimConfig

FAST = SwimConfig(
    probe_interval=1.0,
    probe_timeout=0.2,
    indirect_checks=1,
    suspicion_mult=3,
    retransmit_mult=2,
    gossip_interval=0.1,
    gossip_nodes=3,
    push_pull_interval=15.0,
    reconnect_interval=5.0,
)


def _sign(name):
    return lambda data: name.encode() + b":" + data


def _verify(name, data, signature):
    return signature == name.encode() + b":" + data


class MemoryMesh:
    """Members on one virtual clock; ``node_options`` go to every Node."""

    def __init__(self, names, *, seed=0, latency=0.001, handoff_delay=2.0, **node_options):
        self.node_options = node_options
        self.sides: list[set[str]] = []
        self.now = 0.0
        self.latency = latency
        self.handoff_delay = handoff_delay
        self.rng = random.Random(seed)
        self.nodes: dict[str, Node] = {}
        self.crashed: set[str] = set()
        self.reports = []  # (time, member, Report)
        self._queue = []
        self._order = itertools.count()
        for name in names:
            self.start(name, seeds=[names[0]])

    def new_node(self, name, seeds):
        return Node(
            name=name,
            address=name,
            swim_config=FAST,
            handoff_delay=self.handoff_delay,
            sign=_sign(name),
            verify=_verify,
            now=self.now,
            seeds=seeds,
            rng=random.Random(self.rng.random()),
            **self.node_options,
        )

    def start(self, name, seeds=()):
        node = self.new_node(name, seeds)
        self.nodes[name] = node
        self.crashed.discard(name)
        self._send(name, node.join(self.now))

    def crash(self, name):
        self.crashed.add(name)

    def partition(self, *sides):
        """Drop every message between members of different ``sides``."""
        self.sides = [set(side) for side in sides]

    def heal(self):
        self.sides = []

    def is_cut(self, sender, receiver):
        return any(sender in side and receiver not in side for side in self.sides)

    def leave(self, name):
        self._send(name, self.nodes[name].leave(self.now))

    def _send(self, sender, outbound: list[Outbound], reply_to=None):
        for o in outbound:
            if o.reply:
                o = Outbound(reply_to, reply_to, o.message)
            at = self.now + self.latency
            heapq.heappush(self._queue, (at, next(self._order), sender, o))
        self._collect(sender)

    def _collect(self, name):
        node = self.nodes[name]
        for report in node.drain_reports():
            self.reports.append((self.now, name, report))
            self._send(name, node.confirm_report(report, self.now, self.now))

    def run_until(self, until):
        while True:
            live = [n for n in self.nodes if n not in self.crashed]
            next_timer = min(self.nodes[n].next_deadline() for n in live)
            next_msg = self._queue[0][0] if self._queue else float("inf")
            at = min(next_timer, next_msg)
            if at > until:
                self.now = until
                return
            self.now = max(self.now, at)
            if next_msg <= next_timer:
                _, _, sender, o = heapq.heappop(self._queue)
                if o.address in self.crashed or sender in self.crashed:
                    continue
                if self.is_cut(sender, o.address):
                    continue
                receiver = self.nodes[o.address]
                out = receiver.handle(sender, o.message, self.now)
                self._send(o.address, out, reply_to=sender)
            else:
                for n in live:
                    if self.nodes[n].next_deadline() <= self.now:
                        self._send(n, self.nodes[n].tick(self.now))

    def states(self, observer):
        return {n: m.state.label for n, m in self.nodes[observer].swim.members.items()}
