"""The work the chaos harnesses run, and the check of what it left behind.

A *tree* is ``parents`` root jobs with ``children`` children each. Every
child at depth 0 spawns ``fan_out`` more under the same root, keyed, so a
redelivered job that spawns again creates nothing twice. Every handler run is
appended to a run log outside the database before anything else happens, and
its result names the run. After a run, :func:`check_tree` compares the file
with what the tree must have become::

    expected children ──> missing?   (lost: spawned work that never arrived)
    children present  ──> extra?     (double effect: a spawn that happened twice)
                      ──> completed, with a result a logged run produced?
                      ──> pending/running without a message?  (lost)
                      ──> pending/running with one?           (stuck)
    parents           ──> completed, exactly when no child is active?
    the file          ──> PRAGMA integrity_check, foreign_key_check
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from litejobs._db import Database, rows
from litejobs._errors import ConfigError
from litejobs._jobs import Job, JobStore
from litejobs._queue import Queue
from litejobs._runtime import Runtime
from litejobs._worker import Handler, JobContext

QUEUE = "chaos"
KIND = "node"
PARENT_KIND = "chaos-tree"
#: Receives before a message is dead: far more than a trial's kills, so a
#: job killed again and again is still done rather than dead-lettered.
MAX_RECEIVE = 1000


@attrs.frozen
class TreeShape:
    """How much work one run hands in: ``parents * children * (1 + fan_out)`` jobs."""

    parents: int = 2
    children: int = 8
    fan_out: int = 3
    work_s: float = 0.01

    def __attrs_post_init__(self) -> None:
        if min(self.parents, self.children) < 1:
            raise ConfigError("a tree needs at least 1 parent and 1 child per parent")
        if self.fan_out < 0 or self.work_s < 0:
            raise ConfigError(f"fan_out and work_s must be >= 0, got {self.fan_out}, {self.work_s}")

    @property
    def jobs(self) -> int:
        return self.parents * len(self.keys())

    def keys(self) -> list[str]:
        """Every child key one parent ends with."""
        return [str(i) for i in range(self.children)] + [
            f"{i}.{j}" for i in range(self.children) for j in range(self.fan_out)
        ]


def seed_tree(db: Database, shape: TreeShape) -> list[str]:
    """Create the parents and their first children; return the parent ids."""
    store, queue = JobStore(db), Queue(db, QUEUE, max_receive=MAX_RECEIVE)
    parents = []
    for index in range(shape.parents):
        parent = store.create_parent(PARENT_KIND, {"index": index})
        keys = [str(i) for i in range(shape.children)]
        store.spawn_children(
            parent, KIND, [{"key": key, "depth": 0} for key in keys], queue=queue, keys=keys
        )
        parents.append(parent)
    return parents


def tree_queue(db: Database) -> Queue:
    """The queue the tree's jobs travel on (workers must spawn on it too)."""
    return Queue(db, QUEUE, max_receive=MAX_RECEIVE)


def parents_done(db: Database) -> bool:
    """Whether every parent is terminal: the tree is finished."""
    found = db.read(
        lambda conn: rows(
            conn,
            "SELECT count(*) FROM jobs WHERE parent_id IS NULL "
            "AND status NOT IN ('completed', 'failed', 'cancelled')",
        )
    )
    return found[0][0] == 0


class RunLog:
    """An append-only file with a line per handler run, outside the database,
    so that runs survive the process that made them (a SIGKILL loses no
    completed ``write``). Several processes append to one log."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._runs = 0

    def record(self, job_id: str) -> str:
        """Log a run of ``job_id`` and return its token, unique across processes."""
        self._runs += 1
        token = f"{os.getpid()}:{self._runs}"
        os.write(self._fd, f"{job_id} {token}\n".encode())
        return token

    def close(self) -> None:
        os.close(self._fd)

    @staticmethod
    def read(path: Path) -> dict[str, set[str]]:
        """Job id -> the tokens of its runs. A torn last line (the writer died
        inside ``write``) is not a run."""
        runs: dict[str, set[str]] = {}
        if not path.exists():
            return runs
        for line in path.read_text("utf-8").splitlines():
            parts = line.split(" ")
            if len(parts) == 2 and parts[1].count(":") == 1:
                runs.setdefault(parts[0], set()).add(parts[1])
        return runs


#: Called with a point's name ("handler", "effect") at each handler step, so a
#: harness can kill the process there.
Hook = Callable[[str], None]


def tree_handlers(
    runtime: Runtime, shape: TreeShape, log: RunLog, hook: Hook
) -> dict[str, Handler]:
    """The ``node`` handler: log the run, work, spawn the keyed grandchildren
    (depth 0 only) and return the run's token."""

    async def node(job: Job, ctx: JobContext) -> Any:
        token = log.record(job.id)
        hook("handler")
        await runtime.sleep(shape.work_s)
        spawned = 0
        if job.payload["depth"] == 0 and shape.fan_out:
            keys = [f"{job.payload['key']}.{j}" for j in range(shape.fan_out)]
            payloads = [{"key": key, "depth": 1} for key in keys]
            spawned = len(await ctx.spawn(KIND, payloads, keys=keys))
        hook("effect")
        return {"run": token, "spawned": spawned}

    return {KIND: node}


@attrs.frozen
class TreeCheck:
    """What the file says of one run, counted from its rows alone."""

    expected: int  # children the tree must end with
    completed: int
    missing: int  # expected children absent: spawned work that vanished
    extra: int  # children beyond the expected keys: a spawn done twice
    orphaned: int  # pending or running with no message: nobody will run them
    failed: int  # failed or cancelled: given up on
    stuck: int  # pending or running, message still there, when the run ended
    unrecorded: int  # completed with a result no logged run produced
    rollups_wrong: int  # parents whose status disagrees with their children
    messages_left: int
    integrity: str  # "ok", or what integrity_check/foreign_key_check said
    runs: int  # handler runs logged (a job may run more than once)

    @property
    def lost(self) -> int:
        return self.missing + self.orphaned + self.failed

    @property
    def double_effects(self) -> int:
        return self.extra + self.unrecorded

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.double_effects == 0
            and self.stuck == 0
            and self.rollups_wrong == 0
            and self.messages_left == 0
            and self.integrity == "ok"
        )


def check_tree(path: Path, shape: TreeShape, parents: list[str], log: Path) -> TreeCheck:
    """Open the file afresh and check it against the tree and the run log."""
    with Database.open(path) as db:
        return db.read(lambda conn: _check(conn, shape, parents, RunLog.read(log)))


def _check(conn: Any, shape: TreeShape, parents: list[str], runs: dict[str, set[str]]) -> TreeCheck:
    problems = [row[0] for row in rows(conn, "PRAGMA integrity_check")]
    problems += [f"foreign key: {row}" for row in rows(conn, "PRAGMA foreign_key_check")]
    integrity = "ok" if problems == ["ok"] else "; ".join(problems)[:200]
    keys = set(shape.keys())
    counts = dict.fromkeys(
        ("completed", "missing", "extra", "orphaned", "failed", "stuck", "unrecorded"), 0
    )
    rollups_wrong = 0
    for parent in parents:
        children = rows(
            conn,
            "SELECT id, key, status, result, message_id FROM jobs WHERE parent_id = ?",
            (parent,),
        )
        present = [key for _, key, *_ in children]
        counts["missing"] += len(keys - set(present))
        counts["extra"] += len(present) - len(set(present) & keys)
        for job_id, _, status, result, message_id in children:
            if status == "completed":
                counts["completed"] += 1
                token = json.loads(result)["run"] if result else None
                counts["unrecorded"] += token not in runs.get(str(job_id), ())
            elif status in ("failed", "cancelled"):
                counts["failed"] += 1
            elif message_id is None or not rows(
                conn, "SELECT 1 FROM messages WHERE id = ?", (message_id,)
            ):
                counts["orphaned"] += 1
            else:
                counts["stuck"] += 1
        (status,) = (
            row[0] for row in rows(conn, "SELECT status FROM jobs WHERE id = ?", (parent,))
        )
        # No tolerance is set, so a parent completes once no child is active.
        active = any(s in ("pending", "running") for _, _, s, *_ in children)
        rollups_wrong += (status == "completed") == active
    ((messages_left,),) = rows(conn, "SELECT count(*) FROM messages")
    return TreeCheck(
        expected=len(parents) * len(keys),
        rollups_wrong=rollups_wrong,
        messages_left=messages_left,
        integrity=integrity,
        runs=sum(len(tokens) for tokens in runs.values()),
        **counts,
    )
