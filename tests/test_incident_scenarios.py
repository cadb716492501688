"""The randomized incident scenarios of bench/incident_scenarios.py, a few seeds.

The benchmark runs 200 seeds of each class; these seeds must always hold.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import incident_scenarios  # noqa: E402

SEEDS = range(12)


@pytest.mark.parametrize("seed", SEEDS)
def test_clean_incident_delivered_once(seed):
    ok, detail = incident_scenarios.run_clean(seed)
    assert ok, detail


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("point", incident_scenarios.CRASH_POINTS)
def test_reporter_crash_delivers_once_or_twice(seed, point):
    ok, detail = incident_scenarios.run_crash(seed, point)
    assert ok, detail


@pytest.mark.parametrize("seed", SEEDS)
def test_partition_reports_each_side_once(seed):
    ok, detail = incident_scenarios.run_partition(seed)
    assert ok, detail
