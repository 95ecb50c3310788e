"""Tools for testing code built on litejobs, and litejobs itself.

The public surface is re-exported here; the code lives in private modules.
"""

from litejobs._runtime import InlineRuntime, TrioTimeClock

__all__ = ["InlineRuntime", "TrioTimeClock"]

for _name in __all__:
    globals()[_name].__module__ = "litejobs.testing"
del _name
