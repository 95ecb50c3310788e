"""Seeded bugs: realistic ways to get a SQLite job queue wrong.

Each mutant is a patch over litejobs' own code, applied only inside
``with mutant(name):``. Nothing in litejobs reads a switch: the normal code
paths have no way to reach a mutant, and leaving the ``with`` block restores
the original code. They exist to prove that the properties catch such bugs
(``litejobs selfcheck``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import apsw
import attrs

from litejobs import _db, _hierarchy, _jobs, _queue
from litejobs._clock import to_ms
from litejobs._db import Database, rows
from litejobs._payload import dumps, loads
from litejobs._queue import Message, Queue, parse_receipt


@attrs.frozen
class Mutant:
    """One seeded bug: what it gets wrong, and the machine meant to catch it."""

    name: str
    bug: str
    target: str  # "queue", "hierarchy" or "interleaving"
    patches: Callable[[], list[tuple[Any, str, Any]]]


def _patch_sql(module: Any, *pairs: tuple[str, str, str]) -> list[tuple[Any, str, Any]]:
    patched = []
    for name, old, new in pairs:
        text = getattr(module, name)
        assert old in text, f"{name} no longer contains {old!r}"
        patched.append((module, name, text.replace(old, new)))
    return patched


# -- double_receive ---------------------------------------------------------------

_HEAD = """
SELECT id FROM messages WHERE queue = ?1 AND dead_at IS NULL AND timeout <= ?2
ORDER BY priority DESC, created, id LIMIT 1
"""
_CLAIM_BY_ID = """
UPDATE messages SET received = received + 1, fence = fence + 1, leased = 1, timeout = ?1
WHERE id = ?2 AND received < max_receive
RETURNING id, body, received, fence
"""


def _receive_select_then_update(self: Queue, *, visibility_timeout: float) -> Message | None:
    lease_ms = to_ms(visibility_timeout, "visibility_timeout")
    now = self.db.clock.now_ms()
    head = self.db.autocommit(lambda conn: rows(conn, _HEAD, (self.name, now)))
    if head:
        ((message_id,),) = head
        claimed = self.db.autocommit(
            lambda conn: rows(conn, _CLAIM_BY_ID, (now + lease_ms, message_id))
        )
        if claimed:
            ((mid, body, received, fence),) = claimed
            return Message(str(mid), loads(body, "body"), f"{mid}:{fence}", received)
    found = self.db.write(lambda conn: self._sweep_and_claim(conn, lease_ms, 1))
    return self._messages(found)[0] if found else None


# -- save_and_delete_apart ----------------------------------------------------------


def _complete_in_two_transactions(
    self: _jobs.JobStore, job_id: str, receipt: str, result: Any = None
) -> _jobs.Job:
    message_id, fence = parse_receipt(receipt)
    encoded = dumps(result, "job result")

    def save(conn: apsw.Connection) -> None:
        now = self.db.clock.now_ms()
        job = self._worker_job(
            conn, job_id, message_id, fence, "complete", (_jobs.JobStatus.RUNNING,)
        )
        _queue.check_receipt(conn, message_id, fence, now)
        _hierarchy.finish(conn, job.id, "completed", now, result=encoded)

    self.db.write(save)
    self.db.autocommit(
        lambda conn: _queue.fenced(conn, _queue.DELETE, message_id, fence, self.db.clock.now_ms())
    )
    return self.get(job_id)


# -- busy_retry_statement -----------------------------------------------------------


class _StatementRetry:
    """A connection whose statements, on SQLITE_BUSY, wait and run again on
    their own: the retry loop of the Go seed, inside a deferred transaction."""

    def __init__(self, conn: apsw.Connection, db: Database) -> None:
        self._conn, self._db = conn, db

    def execute(self, sql: str, params: Any = ()) -> Any:
        delays = self._db.retry_delays()
        while True:
            try:
                return self._conn.execute(sql, params)
            except apsw.BusyError:
                delay = next(delays, None)
                if delay is None:
                    raise
                self._db.clock.sleep(delay)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def _write_deferred(self: Database, fn: Callable[[apsw.Connection], Any]) -> Any:
    return self._with_retry(
        lambda conn: _db._transaction(conn, "BEGIN", lambda c: fn(_StatementRetry(c, self)))  # type: ignore[arg-type]
    )


# -- retry_repeats_effect -------------------------------------------------------------

_COUNT_ATTEMPT = f"""
UPDATE jobs SET attempts = attempts + 1
WHERE id = ?5 AND message_id = ?1 AND status IN ('pending', 'running')
AND EXISTS (SELECT 1 FROM messages WHERE {_queue.FENCE})
"""


def _start_counting_first(self: _jobs.JobStore, job_id: str, receipt: str) -> _jobs.Job:
    message_id, fence = parse_receipt(receipt)
    # "Cheap" attempt counting in its own statement, before the transaction:
    # when the transaction meets SQLITE_BUSY, the whole call is retried and the
    # attempt is counted again.
    self.db.autocommit(
        lambda conn: rows(
            conn, _COUNT_ATTEMPT, (message_id, fence, self.db.clock.now_ms(), None, job_id)
        )
    )

    def transaction(conn: apsw.Connection) -> _jobs.Job:
        now = self.db.clock.now_ms()
        job = self._worker_job(
            conn,
            job_id,
            message_id,
            fence,
            "start",
            (_jobs.JobStatus.PENDING, _jobs.JobStatus.RUNNING),
        )
        _queue.check_receipt(conn, message_id, fence, now)
        set_running = "UPDATE jobs SET status = 'running', started_at = ? WHERE id = ?"
        (row,) = rows(conn, f"{set_running} RETURNING {_jobs._COLUMNS}", (now, job.id))
        return _jobs._job(row)

    return self.db.write(transaction)


# -- cancel_leaves_messages -------------------------------------------------------------


def _cancel_children_keeping_messages(
    conn: apsw.Connection, parent_id: str, now: int, reason: str
) -> int:
    cancelled = rows(
        conn,
        """
        UPDATE jobs SET status = 'cancelled', error = ?, completed_at = ?, message_id = NULL
        WHERE parent_id = ? AND status IN ('pending', 'running') RETURNING id
        """,
        (reason, now, parent_id),
    )
    return len(cancelled)


def _as(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Give a replacement the name of what it replaces, so traces read the same."""
    fn.__name__ = fn.__qualname__ = name
    return fn


MUTANTS: dict[str, Mutant] = {
    m.name: m
    for m in [
        Mutant(
            "double_receive",
            "receive as a SELECT, then an UPDATE by id, in two statements",
            "interleaving",
            lambda: [(Queue, "receive", _as("receive", _receive_select_then_update))],
        ),
        Mutant(
            "delete_ignores_receipt",
            "the fenced delete checks the message id but not the receipt's fence",
            "queue",
            lambda: _patch_sql(
                _queue,
                ("DELETE", "id = ?1 AND fence = ?2", "id = ?1 AND ?2 = ?2"),
                ("DELETE_PLAIN", "id = ?1 AND fence = ?2", "id = ?1 AND ?2 = ?2"),
            ),
        ),
        Mutant(
            "save_and_delete_apart",
            "complete saves the result, then deletes the message in a second transaction",
            "interleaving",
            lambda: [(_jobs.JobStore, "complete", _as("complete", _complete_in_two_transactions))],
        ),
        Mutant(
            "busy_retry_statement",
            "deferred transactions, retrying only the statement that met SQLITE_BUSY",
            "interleaving",
            lambda: [(Database, "write", _as("write", _write_deferred))],
        ),
        Mutant(
            "visibility_off_by_one",
            "a lease runs out 1 ms late: claims need timeout < now, not <=",
            "queue",
            lambda: _patch_sql(
                _queue,
                ("_CLAIM_ONE", "timeout <= ?2", "timeout < ?2"),
                ("_CLAIM_MANY", "timeout <= ?2", "timeout < ?2"),
            ),
        ),
        Mutant(
            "max_receive_off_by_one",
            "a message is delivered max_receive + 1 times",
            "queue",
            lambda: _patch_sql(
                _queue,
                ("_CLAIM_ONE", "received < max_receive", "received <= max_receive"),
                ("_CLAIM_MANY", "received < max_receive", "received <= max_receive"),
            ),
        ),
        Mutant(
            "cancel_leaves_messages",
            "cancelling a parent cancels its children but leaves their messages queued",
            "hierarchy",
            lambda: [
                (_hierarchy, "cancel_children", _cancel_children_keeping_messages),
                (_jobs, "cancel_children", _cancel_children_keeping_messages),
            ],
        ),
        Mutant(
            "rollup_one_early",
            "a parent completes when one child is still pending or running",
            "hierarchy",
            lambda: _patch_sql(_hierarchy, ("_ANY_ACTIVE_CHILD", "LIMIT 1", "LIMIT 1 OFFSET 1")),
        ),
        Mutant(
            "retry_repeats_effect",
            "start counts the attempt before its transaction, so a busy retry counts it twice",
            "interleaving",
            lambda: [(_jobs.JobStore, "start", _as("start", _start_counting_first))],
        ),
    ]
}


@contextlib.contextmanager
def mutant(name: str) -> Iterator[Mutant]:
    """Run the block with the seeded bug ``name`` in place of the real code.

    Raises:
        KeyError: no mutant is called ``name``; the message lists them.
    """
    try:
        chosen = MUTANTS[name]
    except KeyError:
        raise KeyError(f"no mutant {name!r}; known: {', '.join(MUTANTS)}") from None
    patches = chosen.patches()
    saved = [(target, attr, getattr(target, attr)) for target, attr, _ in patches]
    try:
        for target, attr, new in patches:
            setattr(target, attr, new)
        yield chosen
    finally:
        for target, attr, old in reversed(saved):
            setattr(target, attr, old)
