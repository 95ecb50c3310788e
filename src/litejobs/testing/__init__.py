"""Tools for testing code built on litejobs, and litejobs itself.

The public surface is re-exported here; the code lives in private modules.
"""

from litejobs._machines import QueueContract, hierarchy_machine, queue_machine
from litejobs._model import QueueModel
from litejobs._runtime import InlineRuntime, TrioTimeClock

__all__ = [
    "InlineRuntime",
    "QueueContract",
    "QueueModel",
    "TrioTimeClock",
    "hierarchy_machine",
    "queue_machine",
]

for _name in __all__:
    if isinstance(globals()[_name], type):
        globals()[_name].__module__ = "litejobs.testing"
del _name
