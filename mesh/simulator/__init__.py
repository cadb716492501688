"""``alarminati simulate``: many members of the real protocol core in one process.

:func:`run_simulation` runs a :class:`Scenario` under trio's MockClock over an
in-memory transport and returns a :class:`SimulationReport`; see
:mod:`mesh.simulator.scenario` for the scenario format and
:mod:`mesh.simulator.engine` for the network and fault model.
"""

from .engine import Simulation, run_simulation
from .report import SimulationReport, format_report
from .scenario import Scenario, load_scenario, parse_event_flag, parse_scenario

__all__ = [
    "Scenario",
    "Simulation",
    "SimulationReport",
    "format_report",
    "load_scenario",
    "parse_event_flag",
    "parse_scenario",
    "run_simulation",
]
