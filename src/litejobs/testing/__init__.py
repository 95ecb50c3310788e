"""Tools for testing code built on litejobs, and litejobs itself.

The public surface is re-exported here; the code lives in private modules.
"""

from litejobs._machines import QueueContract, hierarchy_machine, queue_machine
from litejobs._model import QueueModel
from litejobs._runtime import InlineRuntime, TrioTimeClock
from litejobs.testing._choosers import (
    FairChooser,
    HypothesisChooser,
    PCTChooser,
    RandomChooser,
    ReplayChooser,
    ReplayDivergedError,
)
from litejobs.testing._interleaving import InvariantError, interleaving_machine
from litejobs.testing._mutants import MUTANTS, Mutant, mutant
from litejobs.testing._profiles import PROFILES, default_profile, register_profiles
from litejobs.testing._scheduler import (
    Chooser,
    DeadlockError,
    Option,
    Scheduler,
    SchedulerClock,
    Step,
    WorkerCrashed,
    format_trace,
)

__all__ = [
    "MUTANTS",
    "PROFILES",
    "Chooser",
    "DeadlockError",
    "FairChooser",
    "HypothesisChooser",
    "InlineRuntime",
    "InvariantError",
    "Mutant",
    "Option",
    "PCTChooser",
    "QueueContract",
    "QueueModel",
    "RandomChooser",
    "ReplayChooser",
    "ReplayDivergedError",
    "Scheduler",
    "SchedulerClock",
    "Step",
    "TrioTimeClock",
    "WorkerCrashed",
    "default_profile",
    "format_trace",
    "hierarchy_machine",
    "interleaving_machine",
    "mutant",
    "queue_machine",
    "register_profiles",
]

for _name in __all__:
    if isinstance(globals()[_name], type):
        globals()[_name].__module__ = "litejobs.testing"
del _name
