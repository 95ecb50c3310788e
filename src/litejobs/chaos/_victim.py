"""One worker process of a kill trial: a real :class:`WorkerPool` on the
trial's file, which may be told to SIGKILL itself at a chosen instant.

Run as ``python -m litejobs.chaos._victim SPEC`` where SPEC is the JSON of
:class:`VictimSpec`. It works, taking one of the tree's plain messages
each poll, until the tree is done (then exits 0), its parent process goes away,
or it dies where it was told to.

The instants it can die at (``die``, counted over the process's life):

- ``receive``: right after the N-th claim returned a message, before the job
  is started (the message is leased, the job still pending);
- ``handler``: as the N-th handler run begins (the job is running);
- ``effect``: after the N-th handler did its work and spawned its children,
  before the worker records the result;
- ``pause``: there too, but it stops (SIGSTOP) instead of dying, after
  printing ``paused RECEIPT``; the harness resumes it once its lease has
  run out and another worker holds the job, so that it records a result
  under a stale receipt;
- ``plain``: stops like ``pause``, after the N-th run of a plain message and
  before its delete, so that it deletes under a stale receipt;
- ``batch``: inside the N-th spawn transaction, between two of its inserts;
- ``delete``: just before the N-th statement that deletes a job's message
  (inside ``complete``'s transaction, so dying there must undo the result);
- ``commit``: just before the N-th ``COMMIT`` of a write transaction;
- ``write``: inside the N-th write to the database file or its log, half
  the buffer written (a torn append to the log, or a torn page of a
  checkpoint);
- ``sync``: as the N-th fsync of either file begins.

The counts start once the database is open, so that no kill lands in the
start-up; ``ready`` is printed then, and the harness measures a random
kill's delay from it. ``checkpoint_pages`` makes checkpoints frequent, so
that kills land inside them too.

With ``mutant`` set, the process runs a seeded bug from
``litejobs.testing.MUTANTS`` (the test extra), to show the trial catches it.
With ``barrier``, it waits for a line on stdin after ``ready`` before its
workers start, so that a lock storm's
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
from litejobs.chaos._faults import Fault, FaultKind, FaultyVFS
from litejobs.chaos._tree import (
    RunLog,
    TreeShape,
    plain_queue,
    serve_plain,
    tree_done,
    tree_handlers,
    tree_queue,
)

POINTS = (
    "receive",
    "handler",
    "effect",
    "pause",
    "plain",
    "batch",
    "delete",
    "commit",
    "write",
    "sync",
)
#: The points where the process stops (SIGSTOP) for the harness to resume.
PAUSES = ("pause", "plain")
#: The points that are I/O calls, and the fault that marks each: the victim's
#: VFS fires it and the victim dies instead of failing the call.
_IO_POINTS = {"write": FaultKind.SHORT_WRITE, "sync": FaultKind.FSYNC_EIO}
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
    checkpoint_pages: int | None = None  # SQLite's default: 1000

    def to_argv(self) -> list[str]:
        return [sys.executable, "-m", "litejobs.chaos._victim", json.dumps(attrs.asdict(self))]

    @classmethod
    def from_json(cls, text: str) -> VictimSpec:
        data = json.loads(text)
        return cls(**{**data, "shape": TreeShape(**data["shape"])})


def _die(*_: object) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _pause(receipt: str) -> None:
    print(f"paused {receipt}", flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)


class Tripwire:
    """Counts the instants of ``point`` and kills (or pauses) the process at
    the ``at``-th."""

    def __init__(self, point: str | None, at: int) -> None:
        if point is not None and point not in POINTS:
            raise ValueError(f"unknown kill point {point!r}; choose one of {', '.join(POINTS)}")
        self.point = point
        self.at = at
        self.seen: Counter[str] = Counter()

    def __call__(self, point: str, receipt: str = "") -> None:
        if point == "effect" and self.point == "pause":
            point = "pause"
        if point == self.point:
            self.seen[point] += 1
            if self.seen[point] != self.at:
                return
            if point in PAUSES:
                _pause(receipt)
            else:
                _die()

    def vfs(self, stack: contextlib.ExitStack) -> FaultyVFS | None:
        """The VFS to open the database through, for the I/O points."""
        if self.point not in _IO_POINTS:
            return None
        return stack.enter_context(FaultyVFS(on_fire=_die))

    def start(self, vfs: FaultyVFS | None) -> None:
        """Watch what this process does from now on: the statements of every
        connection it opens next (``receive``, ``batch``, ``delete`` and
        ``commit`` are statements), or its I/O (``write`` and ``sync``)."""
        if self.point in ("receive", "batch", "delete", "commit"):
            apsw.connection_hooks.append(self._watch)
        if vfs is not None and self.point in _IO_POINTS:
            vfs.arm(Fault(_IO_POINTS[self.point], at=self.at - 1))

    def _watch(self, conn: apsw.Connection) -> None:
        state = {"claimed": False, "inserts": 0, "writing": False}

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
                state["writing"] = sql.startswith("BEGIN IMMEDIATE")
            elif sql.lstrip().startswith(_INSERT_JOB):
                state["inserts"] += 1
                if state["inserts"] == 2:
                    self("batch")
            elif sql == _queue.DELETE:  # a job's message; Queue.delete runs DELETE_PLAIN
                self("delete")
            elif sql.startswith("COMMIT") and state["writing"]:
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
    plain = plain_queue(db) if spec.shape.plain else None  # a storm has none: no polls
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            while os.getppid() == parent:
                # One plain message a poll, so that every process takes some.
                if plain is not None:
                    await serve_plain(pool, plain, log, tripwire, spec.shape.rerun_s)
                if await pool.call(tree_done, db):
                    break
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
    if spec.checkpoint_pages is not None:
        pages = spec.checkpoint_pages
        apsw.connection_hooks.append(lambda conn: conn.wal_autocheckpoint(pages))
    with contextlib.ExitStack() as stack:
        if spec.mutant is not None:
            from litejobs.testing._mutants import mutant

            stack.enter_context(mutant(spec.mutant))
        vfs = tripwire.vfs(stack)
        db = stack.enter_context(
            Database.open(
                spec.db,
                seed=spec.seed,
                busy_timeout=spec.busy_timeout,
                vfs=None if vfs is None else vfs.name,
            )
        )
        # The workers' threads open connections of their own: those are watched.
        tripwire.start(vfs)
        print("ready", flush=True)
        if spec.barrier:
            sys.stdin.readline()
        trio.run(_serve, db, spec, tripwire)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
