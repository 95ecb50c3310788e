"""litejobs: a fenced SQLite job queue with a job hierarchy, built to be
proven correct under concurrency.

The public surface is re-exported here; the code lives in private modules.
"""

from litejobs._clock import Clock, SystemClock, VirtualClock
from litejobs._db import Database
from litejobs._errors import (
    BusyError,
    ConfigError,
    InvalidPayloadError,
    InvalidTransitionError,
    LiteJobsError,
    NotFoundError,
    SchemaError,
    StaleReceiptError,
    StorageError,
)
from litejobs._jobs import ChildStats, Job, JobStatus, JobStore, Tolerance, ToleranceAction
from litejobs._queue import DeadLetter, Message, Queue, QueueStats
from litejobs._retry import RetryMetrics, RetryPolicy
from litejobs._runtime import Runtime, TrioRuntime, run_db
from litejobs._worker import JobContext, PoolStats, WorkerPool, WorkerStats

__version__ = "0.1.0"

__all__ = [
    "BusyError",
    "ChildStats",
    "Clock",
    "ConfigError",
    "Database",
    "DeadLetter",
    "InvalidPayloadError",
    "InvalidTransitionError",
    "Job",
    "JobContext",
    "JobStatus",
    "JobStore",
    "LiteJobsError",
    "Message",
    "NotFoundError",
    "PoolStats",
    "Queue",
    "QueueStats",
    "RetryMetrics",
    "RetryPolicy",
    "Runtime",
    "SchemaError",
    "StaleReceiptError",
    "StorageError",
    "SystemClock",
    "Tolerance",
    "ToleranceAction",
    "TrioRuntime",
    "VirtualClock",
    "WorkerPool",
    "WorkerStats",
    "run_db",
]

# Public objects report "litejobs" as their module, so tracebacks and reprs
# show the name users import.
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("litejobs._"):
        _obj.__module__ = "litejobs"
del _name, _obj
