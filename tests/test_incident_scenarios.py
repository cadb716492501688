"""The randomized incident scenarios of bench/incident_scenarios.py, a few seeds.

The benchmark runs 200 seeds of each class. These seeds must hold, except the
partition seeds listed as known failures, which fail until the protocol is
fixed.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import incident_scenarios  # noqa: E402

SEEDS = range(12)
# Partition seeds that fail on the protocol as it is. In seed 11, the two
# members of one side declare a member dead 1.5 s apart, a hand-off delay, so
# ranks 0 and 1 report it at the same moment.
PARTITION_FAILURES = {11}


@pytest.mark.parametrize("seed", SEEDS)
def test_clean_incident_delivered_once(seed):
    ok, detail = incident_scenarios.run_clean(seed)
    assert ok, detail


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("point", incident_scenarios.CRASH_POINTS)
def test_reporter_crash_delivers_once_or_twice(seed, point):
    ok, detail = incident_scenarios.run_crash(seed, point)
    assert ok, detail


def partition_seed(seed):
    if seed not in PARTITION_FAILURES:
        return seed
    reason = "members of one side declare a member dead a hand-off delay apart"
    return pytest.param(seed, marks=pytest.mark.xfail(strict=True, reason=reason))


@pytest.mark.parametrize("seed", [partition_seed(seed) for seed in SEEDS])
def test_partition_reports_each_side_once(seed):
    ok, detail = incident_scenarios.run_partition(seed)
    assert ok, detail
