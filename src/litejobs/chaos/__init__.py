"""Reliability harnesses: worker processes killed at any instant, a lock
storm across processes, and a VFS that injects disk faults. See
docs/reliability.md.

The public surface is re-exported here; the code lives in private modules.
"""

# Disk faults: a VFS that fails one chosen read, write or fsync.
from litejobs.chaos._faults import Fault, FaultKind, FaultyVFS, FiredFault, IOCounts
from litejobs.chaos._kill import (
    KILL_POINTS,
    KillConfig,
    KillReport,
    PlannedKill,
    TrialResult,
    format_kill,
    plan_kills,
    run_kill,
    run_trial,
)
from litejobs.chaos._storm import StormConfig, StormResult, format_storm, run_storm
from litejobs.chaos._tree import TreeCheck, TreeShape, check_tree, seed_tree

__all__ = [
    "KILL_POINTS",
    "Fault",
    "FaultKind",
    "FaultyVFS",
    "FiredFault",
    "IOCounts",
    "KillConfig",
    "KillReport",
    "PlannedKill",
    "StormConfig",
    "StormResult",
    "TreeCheck",
    "TreeShape",
    "TrialResult",
    "check_tree",
    "format_kill",
    "format_storm",
    "plan_kills",
    "run_kill",
    "run_storm",
    "run_trial",
    "seed_tree",
]

for _name in __all__:
    if isinstance(globals()[_name], type):
        globals()[_name].__module__ = "litejobs.chaos"
del _name
