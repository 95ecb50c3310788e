"""Long-budget fuzzing of the litejobs machines.

``litejobs fuzz`` feeds Hypothesis's ``fuzz_one_input`` fresh random bytes in
several processes; every failure lands in a Hypothesis example database,
from which the next ``pytest`` run replays and shrinks it. See
docs/fuzzing.md.
"""

from litejobs.fuzz._budget import parse_budget
from litejobs.fuzz._databases import default_database, open_database, shared_database
from litejobs.fuzz._display import LiveDisplay, render
from litejobs.fuzz._plan import FuzzPlan
from litejobs.fuzz._runner import FuzzProgress, run_fuzz
from litejobs.fuzz._stats import MachineStats
from litejobs.fuzz._summary import FuzzSummary, write_report
from litejobs.fuzz._target import BUFFER_BYTES, FuzzTarget

__all__ = [
    "BUFFER_BYTES",
    "FuzzPlan",
    "FuzzProgress",
    "FuzzSummary",
    "FuzzTarget",
    "LiveDisplay",
    "MachineStats",
    "default_database",
    "open_database",
    "parse_budget",
    "render",
    "run_fuzz",
    "shared_database",
    "write_report",
]

for _name in __all__:
    if isinstance(globals()[_name], type):
        globals()[_name].__module__ = "litejobs.fuzz"
del _name
