"""Piggyback items survive the wire format, with their optional elements."""

import msgpack
import pytest

from mesh.membership import State
from mesh.messages import Gossip, Update, decode_message, encode_message


def round_trip(message):
    packed = msgpack.packb(encode_message(message), use_bin_type=True)
    return decode_message(msgpack.unpackb(packed, raw=False))


@pytest.mark.parametrize(
    "update, elements",
    [
        (Update("m1", "10.0.0.1:7946", 3, State.ALIVE), 5),
        (Update("m1", "10.0.0.1:7946", 3, State.SUSPECT, source="m2"), 6),
        (Update("m1", "10.0.0.1:7946", 3, State.DEAD, age=2.345), 7),
    ],
)
def test_update_round_trip(update, elements):
    assert round_trip(Gossip((update,))) == Gossip((update,))
    assert len(encode_message(Gossip((update,)))[1][0]) == elements


def test_death_age_sent_in_milliseconds():
    update = Update("m1", "a:1", 0, State.DEAD, age=1.23456)
    assert round_trip(Gossip((update,))).piggyback[0].age == 1.235
