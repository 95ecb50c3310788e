"""The work the chaos harnesses run, and the check of what it left behind.

A *tree* is ``parents`` root jobs with ``children`` children each, and
``plain`` plain messages on a queue of their own (:func:`serve_plain`). Every
child at depth 0 spawns ``fan_out`` more under the same root, keyed, so a
redelivered job that spawns again creates nothing twice. Every
``fail_every``-th key fails its first attempt, so retries run through the
queue too. Every handler run is appended to a run log outside the database
before anything else happens, and its result names the run and the receipt
it ran under. Triggers in the file (:data:`AUDIT`) record every result
written and every message deleted, with the fence and receive count the
message had. After a run, :func:`check_tree` compares the file with what the
tree must have become::

    plain messages    ──> deleted once, by a run under the live receipt?
                      ──> not while that run's own delete was refused?
    expected children ──> missing?   (lost: spawned work that never arrived)
    children present  ──> extra?     (double effect: a spawn that happened twice)
                      ──> completed, with a result a logged run produced?
                      ──> result written once, under the live receipt?
                      ──> runs <= starts <= receives?
                      ──> failed its first attempt, if its key must?
                      ──> pending/running without a message?  (lost)
                      ──> pending/running with one?           (stuck)
    parents           ──> completed exactly when no child is active,
                          or cancelled with no child active
    the file          ──> PRAGMA integrity_check, foreign_key_check
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import attrs

from litejobs._db import Database, rows
from litejobs._errors import ConfigError, StaleReceiptError
from litejobs._jobs import Job, JobStore
from litejobs._queue import Queue
from litejobs._runtime import Runtime
from litejobs._worker import Handler, JobContext, WorkerPool

QUEUE = "chaos"
PLAIN_QUEUE = "chaos-plain"
KIND = "node"
PARENT_KIND = "chaos-tree"
#: Receives before a message is dead: far more than a trial's kills, so a
#: job killed again and again is still done rather than dead-lettered.
MAX_RECEIVE = 1000


@attrs.frozen
class TreeShape:
    """How much work one run hands in: ``parents * children * (1 + fan_out)`` jobs.

    A handler works ``work_s``; one whose job was redelivered after a lost
    lease (not after a failure) works ``rerun_s``, so that a worker resumed
    after a pause meets the job while its new holder is still at it. Every
    ``fail_every``-th key (0: none) fails its first attempt. The ``plain``
    messages become visible ``plain_after_s`` after seeding, once every
    process is up, so that no process takes them all while another starts.
    """

    parents: int = 2
    children: int = 8
    fan_out: int = 3
    work_s: float = 0.01
    rerun_s: float = 0.25
    fail_every: int = 5
    plain: int = 8
    plain_after_s: float = 0.5

    def __attrs_post_init__(self) -> None:
        if min(self.parents, self.children) < 1:
            raise ConfigError("a tree needs at least 1 parent and 1 child per parent")
        numbers = {
            name: getattr(self, name)
            for name in ("fan_out", "work_s", "rerun_s", "fail_every", "plain", "plain_after_s")
        }
        negative = {name: value for name, value in numbers.items() if value < 0}
        if negative:
            got = ", ".join(f"{name}={value}" for name, value in negative.items())
            raise ConfigError(f"{', '.join(numbers)} must be >= 0, got {got}")

    @property
    def jobs(self) -> int:
        return self.parents * len(self.keys())

    def keys(self) -> list[str]:
        """Every child key one parent ends with."""
        return [str(i) for i in range(self.children)] + [
            f"{i}.{j}" for i in range(self.children) for j in range(self.fan_out)
        ]

    def failing_keys(self) -> set[str]:
        """The keys whose first attempt fails."""
        if not self.fail_every:
            return set()
        return {k for i, k in enumerate(self.keys()) if i % self.fail_every == self.fail_every - 1}


#: What a failing key's first attempt raises with.
FIRST_ATTEMPT_FAILS = "chaos: this key's first attempt fails"

#: Triggers that record, in the trial's file, every result written to a job
#: and every message deleted (with the fence and receive count it had), so
#: that the check sees a second completion or one under a stale receipt even
#: where the rows it left look right.
AUDIT_TABLES = """
CREATE TABLE chaos_results (job_id INTEGER NOT NULL, result TEXT);
CREATE TABLE chaos_deletes (
    message_id INTEGER NOT NULL, queue TEXT NOT NULL, job_id INTEGER,
    fence INTEGER NOT NULL, received INTEGER NOT NULL
);
"""
AUDIT = """
CREATE TRIGGER chaos_result AFTER UPDATE OF result ON jobs
WHEN NEW.result IS NOT OLD.result
BEGIN
    INSERT INTO chaos_results VALUES (NEW.id, NEW.result);
END;
CREATE TRIGGER chaos_delete BEFORE DELETE ON messages
BEGIN
    INSERT INTO chaos_deletes VALUES (
        OLD.id, OLD.queue, (SELECT id FROM jobs WHERE message_id = OLD.id), OLD.fence, OLD.received
    );
END;
"""


def seed_tree(db: Database, shape: TreeShape, *, audit: bool = True) -> list[str]:
    """Install the :data:`AUDIT` triggers (unless ``audit`` is False: a lock
    storm measures completions without their extra writes), create the
    parents and their first children; return the parent ids."""
    sql = AUDIT_TABLES + AUDIT if audit else AUDIT_TABLES
    db.write(lambda conn: conn.execute(sql).fetchall())
    store, queue = JobStore(db), Queue(db, QUEUE, max_receive=MAX_RECEIVE)
    parents = []
    for index in range(shape.parents):
        parent = store.create_parent(PARENT_KIND, {"index": index})
        keys = [str(i) for i in range(shape.children)]
        store.spawn_children(
            parent, KIND, [{"key": key, "depth": 0} for key in keys], queue=queue, keys=keys
        )
        parents.append(parent)
    plain = plain_queue(db)
    for i in range(shape.plain):
        plain.send({"plain": i}, delay=shape.plain_after_s)
    return parents


def plain_queue(db: Database) -> Queue:
    """The queue of the tree's plain messages."""
    return Queue(db, PLAIN_QUEUE, max_receive=MAX_RECEIVE)


def plain_run(receipt: str) -> str:
    """The run log's name for a plain message's run under ``receipt``."""
    return f"m{receipt}"


def tree_queue(db: Database) -> Queue:
    """The queue the tree's jobs travel on (workers must spawn on it too)."""
    return Queue(db, QUEUE, max_receive=MAX_RECEIVE)


def tree_done(db: Database) -> bool:
    """Whether every parent is terminal and every plain message deleted."""
    found = db.read(
        lambda conn: rows(
            conn,
            "SELECT count(*) FROM jobs WHERE parent_id IS NULL "
            "AND status NOT IN ('completed', 'failed', 'cancelled') "
            "UNION ALL SELECT count(*) FROM messages WHERE queue = ?",
            (PLAIN_QUEUE,),
        )
    )
    return found == [(0,), (0,)]


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


#: Called with a point's name ("handler", "effect", "plain") and the run's receipt at
#: each handler step and plain message, so a harness can kill or pause the process there.
Hook = Callable[[str, str], None]


def plain_refused(receipt: str) -> str:
    """The run log's name for a plain message's delete refused under ``receipt``."""
    return f"x{receipt}"


async def serve_plain(
    pool: WorkerPool, queue: Queue, log: RunLog, hook: Hook, hold_s: float
) -> None:
    """Take one plain message, if there is one: log the run under its
    receipt, then delete it. A redelivered message is held ``hold_s`` first,
    so that a holder paused past its lease (``hook``) resumes while this one
    has it. A refused delete (another process has it now) is logged too: the
    message must then be deleted under another receipt."""
    message = await pool.call(queue.receive, visibility_timeout=pool.visibility_timeout)
    if message is None:
        return
    log.record(plain_run(message.receipt))
    hook("plain", message.receipt)
    if message.receive_count > 1:
        await pool.runtime.sleep(hold_s)
    try:
        await pool.call(queue.delete, message.receipt)
    except StaleReceiptError:
        log.record(plain_refused(message.receipt))


def tree_handlers(
    runtime: Runtime, shape: TreeShape, log: RunLog, hook: Hook
) -> dict[str, Handler]:
    """The ``node`` handler: log the run, work (fail, on a failing key's first
    attempt), spawn the keyed grandchildren (depth 0 only) and return the
    run's token and receipt."""
    failing = shape.failing_keys()

    async def node(job: Job, ctx: JobContext) -> Any:
        token = log.record(job.id)
        hook("handler", ctx.receipt)
        if job.payload["key"] in failing and job.attempts == 1:
            raise RuntimeError(FIRST_ATTEMPT_FAILS)
        rerun = job.attempts > 1 and job.error is None
        await runtime.sleep(shape.rerun_s if rerun else shape.work_s)
        spawned = 0
        if job.payload["depth"] == 0 and shape.fan_out:
            keys = [f"{job.payload['key']}.{j}" for j in range(shape.fan_out)]
            payloads = [{"key": key, "depth": 1} for key in keys]
            spawned = len(await ctx.spawn(KIND, payloads, keys=keys))
        hook("effect", ctx.receipt)
        return {"run": token, "receipt": ctx.receipt, "spawned": spawned}

    return {KIND: node}


@attrs.frozen
class TreeCheck:
    """What the file says of one run, counted from its rows and audit alone."""

    expected: int  # children the tree must end with (a cancelled parent: those it had)
    completed: int
    cancelled: int  # children cancelled with their parent, as asked
    missing: int  # expected children absent: spawned work that vanished
    plain_lost: int  # plain messages gone without a run under their last receipt
    extra: int  # children beyond the expected keys: a spawn done twice
    orphaned: int  # pending or running with no message: nobody will run them
    failed: int  # failed, or cancelled without a cancel: given up on
    stuck: int  # pending or running, message still there, when the run ended
    unrecorded: int  # completed with a result no logged run produced
    rewritten: int  # results written to a job more than once
    stale: int  # completed (a plain message: deleted) under a receipt that no longer held it
    overruns: int  # jobs run more often than started, or started more than received
    mishandled: int  # a failing key that never failed, or an error nobody raised
    rollups_wrong: int  # parents whose status disagrees with their children
    messages_left: int
    integrity: str  # "ok", or what integrity_check/foreign_key_check said
    runs: int  # handler runs logged (a job may run more than once)

    @property
    def lost(self) -> int:
        return self.missing + self.plain_lost + self.orphaned + self.failed

    @property
    def double_effects(self) -> int:
        return self.extra + self.unrecorded + self.rewritten + self.stale + self.overruns

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.double_effects == 0
            and self.stuck == 0
            and self.mishandled == 0
            and self.rollups_wrong == 0
            and self.messages_left == 0
            and self.integrity == "ok"
        )


def check_tree(
    path: Path,
    shape: TreeShape,
    parents: list[str],
    log: Path,
    cancelled: Collection[str] = (),
) -> TreeCheck:
    """Open the file afresh and check it against the tree and the run log;
    the parents in ``cancelled`` were cancelled during the run."""
    with Database.open(path) as db:
        return db.read(lambda conn: _check(conn, shape, parents, set(cancelled), RunLog.read(log)))


def _audited(conn: Any) -> bool:
    return bool(rows(conn, "SELECT 1 FROM sqlite_schema WHERE name = 'chaos_result'"))


_COUNTS = (
    "completed",
    "cancelled",
    "missing",
    "plain_lost",
    "extra",
    "orphaned",
    "failed",
    "stuck",
    "unrecorded",
    "rewritten",
    "stale",
    "overruns",
    "mishandled",
)
_RAISED = f"RuntimeError: {FIRST_ATTEMPT_FAILS}"


def _check(
    conn: Any,
    shape: TreeShape,
    parents: list[str],
    cancelled: set[str],
    runs: dict[str, set[str]],
) -> TreeCheck:
    problems = [row[0] for row in rows(conn, "PRAGMA integrity_check")]
    problems += [f"foreign key: {row}" for row in rows(conn, "PRAGMA foreign_key_check")]
    integrity = "ok" if problems == ["ok"] else "; ".join(problems)[:200]
    keys, failing, audited = set(shape.keys()), shape.failing_keys(), _audited(conn)
    results = dict(rows(conn, "SELECT job_id, count(*) FROM chaos_results GROUP BY job_id"))
    # A job's message is deleted once: with its outcome, a cancel or a dead-lettering.
    deleted = {
        job_id: (f"{message_id}:{fence}", received)
        for message_id, job_id, fence, received in rows(
            conn,
            "SELECT message_id, job_id, fence, received FROM chaos_deletes "
            "WHERE job_id IS NOT NULL",
        )
    }
    counts = dict.fromkeys(_COUNTS, 0)
    if audited:  # without the audit, only messages_left can tell
        receipts = [
            f"{message_id}:{fence}"
            for message_id, fence in rows(
                conn, "SELECT message_id, fence FROM chaos_deletes WHERE queue = ?", (PLAIN_QUEUE,)
            )
        ]
        ((plain_left,),) = rows(
            conn, "SELECT count(*) FROM messages WHERE queue = ?", (PLAIN_QUEUE,)
        )
        counts["plain_lost"] = (
            shape.plain
            - len(receipts)
            - plain_left
            + sum(plain_run(r) not in runs for r in receipts)
        )
        # Deleted under the receipt of a holder whose own delete was refused:
        # somebody else's stale receipt deleted it.
        counts["stale"] += sum(plain_refused(r) in runs for r in receipts)
    expected = rollups_wrong = 0
    for parent in parents:
        children = rows(
            conn,
            "SELECT id, key, status, result, message_id, attempts, error FROM jobs "
            "WHERE parent_id = ?",
            (parent,),
        )
        present = [key for _, key, *_ in children]
        was_cancelled = parent in cancelled
        expected += len(set(present) & keys) if was_cancelled else len(keys)
        counts["missing"] += 0 if was_cancelled else len(keys - set(present))
        counts["extra"] += len(present) - len(set(present) & keys)
        for job_id, key, status, result, message_id, attempts, error in children:
            counts["rewritten"] += max(0, results.get(job_id, 0) - (status == "completed"))
            if status != "cancelled":  # a cancel gives its reason as the error
                allowed = (None, _RAISED) if key in failing else (None,)
                counts["mishandled"] += error not in allowed
            if status == "completed":
                counts["completed"] += 1
                outcome = json.loads(result) if result else {}
                counts["unrecorded"] += outcome.get("run") not in runs.get(str(job_id), ())
                receipt, received = deleted.get(job_id, (None, 0))
                if audited:
                    counts["stale"] += outcome.get("receipt") != receipt
                    counts["overruns"] += not len(runs.get(str(job_id), ())) <= attempts <= received
                counts["mishandled"] += key in failing and attempts < 2
            elif status == "cancelled" and was_cancelled:
                counts["cancelled"] += 1
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
        if was_cancelled:
            rollups_wrong += status != "cancelled" or active
        else:
            rollups_wrong += (status == "completed") == active
    ((messages_left,),) = rows(conn, "SELECT count(*) FROM messages")
    return TreeCheck(
        expected=expected,
        rollups_wrong=rollups_wrong,
        messages_left=messages_left,
        integrity=integrity,
        runs=sum(len(tokens) for name, tokens in runs.items() if name.isdigit()),
        **counts,
    )
