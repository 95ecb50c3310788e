"""One worker process of a kill trial: a real :class:`WorkerPool` on the
trial's file, which may be told to SIGKILL itself at a chosen instant.

Run as ``python -m litejobs.chaos._victim SPEC`` where SPEC is the JSON of
:class:`VictimSpec`. It works until every parent is terminal (then exits 0),
its parent process goes away, or it dies where it was told to.

The instants it can die at (``die``, counted over the process's life):

- ``receive``: right after the N-th claim returned a message, before the job
  is started (the message is leased, the job still pending);
- ``handler``: as the N-th handler run begins (the job is running);
- ``effect``: after the N-th handler did its work and spawned its children,
  before the worker records the result;
- ``batch``: inside the N-th spawn transaction, between two of its inserts;
- ``delete``: just before the N-th statement that deletes a job's message
  (inside ``complete``'s transaction, so dying there must undo the result);
- ``commit``: just before the N-th ``COMMIT`` is executed.

With ``mutant`` set, the process runs a seeded bug from
``litejobs.testing.MUTANTS`` (the test extra), to show the trial catches it.
With ``barrier``, it prints ``ready`` once its database is open and waits
for a line on stdin before its workers start, so that a lock storm's
processes start together. With ``stats``, it writes its pool's counters
and retry metrics there as JSON when it exits normally.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import apsw
import attrs
import trio

from litejobs import _queue
from litejobs._db import Database
from litejobs._jobs import JobStore
from litejobs._runtime import TrioRuntime
from litejobs._worker import WorkerPool
from litejobs.chaos._tree import RunLog, TreeShape, parents_done, tree_handlers, tree_queue

POINTS = ("receive", "handler", "effect", "batch", "delete", "commit")
_INSERT_JOB = "INSERT INTO jobs (parent_id"


@attrs.frozen
class VictimSpec:
    """Everything a victim process needs, passed as JSON on its command line."""

    db: str
    log: str
    shape: TreeShape
    workers: int = 2
    visibility_timeout: float = 1.0
    poll_interval: float = 0.1
    die: str | None = None  # one of POINTS
    at: int = 1  # the occurrence of ``die`` to die at
    seed: int = 0
    mutant: str | None = None
    busy_timeout: float = 5.0
    barrier: bool = False
    stats: str | None = None

    def to_argv(self) -> list[str]:
        return [sys.executable, "-m", "litejobs.chaos._victim", json.dumps(attrs.asdict(self))]

    @classmethod
    def from_json(cls, text: str) -> VictimSpec:
        data = json.loads(text)
        return cls(**{**data, "shape": TreeShape(**data["shape"])})


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class Tripwire:
    """Counts the instants of ``point`` and kills the process at the ``at``-th."""

    def __init__(self, point: str | None, at: int) -> None:
        if point is not None and point not in POINTS:
            raise ValueError(f"unknown kill point {point!r}; choose one of {', '.join(POINTS)}")
        self.point = point
        self.at = at
        self.seen: Counter[str] = Counter()

    def __call__(self, point: str) -> None:
        if point == self.point:
            self.seen[point] += 1
            if self.seen[point] == self.at:
                _die()

    def install(self) -> None:
        """Watch the statements of every connection this process opens (the
        points ``receive``, ``batch`` and ``commit`` are statements)."""
        if self.point in ("receive", "batch", "delete", "commit"):
            apsw.connection_hooks.append(self._watch)

    def _watch(self, conn: apsw.Connection) -> None:
        state = {"claimed": False, "inserts": 0}

        def claimed(cursor: apsw.Cursor, row: Any) -> Any:
            state["claimed"] = True
            return row

        def trace(cursor: apsw.Cursor, sql: str, bindings: Any) -> bool:
            if state["claimed"] and not sql.startswith("COMMIT"):
                # The first statement after a claim that returned a message
                # (and, inside a transaction, after its COMMIT).
                state["claimed"] = False
                self("receive")
            if sql == _queue._CLAIM_ONE:  # read now: a mutant may have patched it
                cursor.row_trace = claimed
            elif sql.startswith("BEGIN"):
                state["inserts"] = 0
            elif sql.lstrip().startswith(_INSERT_JOB):
                state["inserts"] += 1
                if state["inserts"] == 2:
                    self("batch")
            elif sql.startswith(_queue.DELETE):
                self("delete")
            elif sql.startswith("COMMIT"):
                self("commit")
            return True

        conn.exec_trace = trace


async def _serve(db: Database, spec: VictimSpec, tripwire: Tripwire) -> None:
    runtime = TrioRuntime(db.clock)
    log = RunLog(Path(spec.log))
    pool = WorkerPool(
        JobStore(db),
        tree_queue(db),
        tree_handlers(runtime, spec.shape, log, tripwire),
        runtime=runtime,
        concurrency=spec.workers,
        poll_interval=spec.poll_interval,
        visibility_timeout=spec.visibility_timeout,
        seed=spec.seed,
    )
    parent, started = os.getppid(), runtime.now_ms()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            while not await pool.call(parents_done, db) and os.getppid() == parent:
                await runtime.sleep(spec.poll_interval)
            pool.stop()
    finally:
        log.close()
    if spec.stats is not None:
        _write_stats(Path(spec.stats), pool, started, runtime.now_ms())


def _write_stats(path: Path, pool: WorkerPool, started_ms: int, ended_ms: int) -> None:
    stats, retry = pool.stats, pool.db.retry_metrics
    data = {
        "pid": os.getpid(),
        "started_ms": started_ms,
        "ended_ms": ended_ms,
        "workers": [attrs.asdict(w) for w in stats.workers],
        "operations": retry.operations,
        "retries": retry.retries,
        "busy_errors": retry.busy_errors,
        "attempts": retry.attempts,
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data), "utf-8")
    tmp.replace(path)


def main(argv: list[str]) -> int:
    spec = VictimSpec.from_json(argv[0])
    tripwire = Tripwire(spec.die, spec.at)
    tripwire.install()
    with contextlib.ExitStack() as stack:
        if spec.mutant is not None:
            from litejobs.testing._mutants import mutant

            stack.enter_context(mutant(spec.mutant))
        db = stack.enter_context(
            Database.open(spec.db, seed=spec.seed, busy_timeout=spec.busy_timeout)
        )
        if spec.barrier:
            print("ready", flush=True)
            sys.stdin.readline()
        trio.run(_serve, db, spec, tripwire)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
