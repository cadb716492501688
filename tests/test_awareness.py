"""Lifeguard local health: the score's range and how it stretches timeouts."""

import pytest

from mesh.awareness import Awareness


@pytest.mark.parametrize(
    ("deltas", "expected"),
    [
        ([], 0),
        ([1], 1),
        ([3, -1], 2),
        ([-1], 0),
        ([-5, 2], 2),
        ([10], 7),
        ([10, -1], 6),
        ([1] * 20, 7),
    ],
)
def test_awareness_score_clamped(deltas, expected):
    awareness = Awareness(8)
    for delta in deltas:
        awareness.apply_delta(delta)
    assert awareness.score == expected


@pytest.mark.parametrize(("score", "expected"), [(0, 0.5), (1, 1.0), (3, 2.0), (7, 4.0)])
def test_awareness_scales_by_score_plus_one(score, expected):
    awareness = Awareness(8)
    awareness.apply_delta(score)
    assert awareness.scale(0.5) == pytest.approx(expected)


def test_awareness_apply_delta_returns_score():
    awareness = Awareness(4)
    assert awareness.apply_delta(2) == 2
    assert awareness.apply_delta(5) == 3


def test_awareness_multiplier_of_one_never_stretches():
    awareness = Awareness(1)
    awareness.apply_delta(5)
    assert awareness.score == 0
    assert awareness.scale(1.0) == 1.0


def test_awareness_rejects_zero_multiplier():
    with pytest.raises(ValueError, match="max_multiplier 0"):
        Awareness(0)
