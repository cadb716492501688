"""SWIM messages and the records piggybacked on them, with their wire encoding.

Each message is a frozen class. On the wire it is a msgpack array whose first
element is its :class:`MessageType` and whose last is the piggyback: a list of
membership updates and ``reported`` records. Arrays rather than maps keep a ping
with a full piggyback to a few hundred bytes.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Union

import msgpack

from .membership import State
from .observations import Observed

__all__ = [
    "MessageType",
    "Update",
    "Reported",
    "Ping",
    "Ack",
    "PingReq",
    "Nack",
    "Gossip",
    "Sync",
    "Message",
    "Piggyback",
    "encode_message",
    "decode_message",
]


class MessageType(enum.IntEnum):
    """Wire codes of the messages: append new types, never reorder or reuse."""

    PING = 1
    ACK = 2
    PING_REQ = 3
    NACK = 4
    GOSSIP = 5
    SYNC = 6


class _ItemType(enum.IntEnum):
    """Wire codes of piggyback items: append new types, never reorder or reuse."""

    UPDATE = 0
    REPORTED = 1
    OBSERVED = 2


@dataclasses.dataclass(frozen=True, slots=True)
class Update:
    """A membership update: ``name`` is in ``state`` at ``incarnation``."""

    name: str
    address: str
    incarnation: int
    state: State
    # For a suspicion, the member whose probe raised it, so that receivers
    # count independent suspicions of one member (Lifeguard's confirmations);
    # empty otherwise. Sent only when set.
    source: str = ""
    # For a death, seconds since the sender marked the member dead, as of the
    # moment the message was built. Receivers date the death back by it, so
    # that every member counts reporter turns from the same moment without
    # comparing clocks. Sent in milliseconds, only when set.
    age: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class Reported:
    """A reporter's signed statement that it sent ``status`` for ``incident``.

    The signature is the reporter's own, so the record can be relayed by any
    member and still be trusted.
    """

    incident: str
    status: str
    reporter: str
    # Reporter's wall clock when it sent the alarm, Unix seconds.
    reported_at: float
    signature: bytes = b""

    def signed_bytes(self) -> bytes:
        fields = ["reported", self.incident, self.status, self.reporter, self.reported_at]
        return msgpack.packb(fields, use_bin_type=True)


Piggyback = tuple[Union[Update, Reported, Observed], ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Ping:
    seq: int
    # Name of the member the ping is for; a member acks only pings addressed to
    # it, so a new process on a dead member's address cannot answer for it.
    target: str
    piggyback: Piggyback = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Ack:
    seq: int
    piggyback: Piggyback = ()


@dataclasses.dataclass(frozen=True, slots=True)
class PingReq:
    """Asks the receiver to probe ``target`` on the sender's behalf."""

    seq: int
    target: str
    target_address: str
    piggyback: Piggyback = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Nack:
    """An indirect prober's answer that the target did not ack in time.

    It tells the requester that the prober itself is reachable, so a missing ack
    is more likely the target's fault than the requester's.
    """

    seq: int
    piggyback: Piggyback = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Gossip:
    piggyback: Piggyback = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Sync:
    """Push-pull: the sender's whole membership table and its reported records.

    ``reply`` asks the receiver to answer with its own table; a join is a sync
    with ``reply`` set, sent to each seed.
    """

    members: tuple[Update, ...]
    records: tuple[Reported, ...]
    reply: bool
    piggyback: Piggyback = ()


Message = Union[Ping, Ack, PingReq, Nack, Gossip, Sync]


def _encode_item(item: Update | Reported) -> list[Any]:
    if isinstance(item, Update):
        fields = [_ItemType.UPDATE, item.name, item.address, item.incarnation, item.state.value]
        age_ms = round(item.age * 1000)
        if age_ms > 0:
            fields += [item.source, age_ms]
        elif item.source:
            fields.append(item.source)
        return fields
    if isinstance(item, Observed):
        return [
            _ItemType.OBSERVED,
            item.check,
            item.member,
            item.failing,
            item.since,
            item.version,
        ]
    return [
        _ItemType.REPORTED,
        item.incident,
        item.status,
        item.reporter,
        item.reported_at,
        item.signature,
    ]


def _decode_item(raw: Any) -> Update | Reported:
    kind = raw[0]
    if kind == _ItemType.UPDATE:
        age = 0.0
        if len(raw) == 7:
            _, name, address, incarnation, state, source, age_ms = raw
            source, age = _text(source), _count(age_ms) / 1000
        elif len(raw) == 6:
            _, name, address, incarnation, state, source = raw
            source = _text(source)
        else:
            _, name, address, incarnation, state = raw
            source = ""
        return Update(_text(name), _text(address), _count(incarnation), State(state), source, age)
    if kind == _ItemType.REPORTED:
        _, incident, status, reporter, reported_at, signature = raw
        if not isinstance(signature, bytes):
            raise ValueError("reported signature is not bytes")
        return Reported(
            _text(incident), _text(status), _text(reporter), float(reported_at), signature
        )
    if kind == _ItemType.OBSERVED:
        _, check, member, failing, since, version = raw
        if not isinstance(failing, bool):
            raise ValueError("observed failing flag is not a boolean")
        return Observed(_text(check), _text(member), failing, float(since), _count(version))
    raise ValueError(f"unknown piggyback item type {kind!r}")


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


def _count(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"expected a non-negative integer, got {value!r}")
    return value


def encode_message(message: Message) -> list[Any]:
    """Return the msgpack-ready array for ``message``."""
    piggyback = [_encode_item(item) for item in message.piggyback]
    match message:
        case Ping(seq, target):
            return [MessageType.PING, seq, target, piggyback]
        case Ack(seq):
            return [MessageType.ACK, seq, piggyback]
        case PingReq(seq, target, target_address):
            return [MessageType.PING_REQ, seq, target, target_address, piggyback]
        case Nack(seq):
            return [MessageType.NACK, seq, piggyback]
        case Gossip():
            return [MessageType.GOSSIP, piggyback]
        case Sync(members, records, reply):
            return [
                MessageType.SYNC,
                [_encode_item(m) for m in members],
                [_encode_item(r) for r in records],
                reply,
                piggyback,
            ]
    raise TypeError(f"not a message: {message!r}")


def decode_message(raw: Any) -> Message:
    """Build a message from its decoded wire array.

    Raises:
        ValueError: the array does not match any message's layout.
    """
    try:
        kind = MessageType(raw[0])
        piggyback = tuple(_decode_item(item) for item in raw[-1])
        match kind:
            case MessageType.PING:
                _, seq, target, _ = raw
                return Ping(_count(seq), _text(target), piggyback)
            case MessageType.ACK:
                _, seq, _ = raw
                return Ack(_count(seq), piggyback)
            case MessageType.PING_REQ:
                _, seq, target, address, _ = raw
                return PingReq(_count(seq), _text(target), _text(address), piggyback)
            case MessageType.NACK:
                _, seq, _ = raw
                return Nack(_count(seq), piggyback)
            case MessageType.GOSSIP:
                _, _ = raw
                return Gossip(piggyback)
            case MessageType.SYNC:
                _, members, records, reply, _ = raw
                updates = tuple(_decode_item(m) for m in members)
                reported = tuple(_decode_item(r) for r in records)
                if not all(isinstance(u, Update) for u in updates):
                    raise ValueError("sync members must be updates")
                if not all(isinstance(r, Reported) for r in reported):
                    raise ValueError("sync records must be reported records")
                return Sync(updates, reported, bool(reply), piggyback)  # type: ignore[arg-type]
    except (TypeError, IndexError, KeyError) as exc:
        raise ValueError(f"malformed message: {exc}") from None
    raise ValueError(f"unhandled message type {kind!r}")  # pragma: no cover
