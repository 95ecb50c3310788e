"""Job status changes that run inside the caller's write transaction: a job
becoming terminal, and what that does to its parent.

Keeping these in one place is what makes the hierarchy atomic: completing,
failing, dead-lettering and cancelling all reach the parent's roll-up and error
tolerance through :func:`finish`, in the transaction that made the child
terminal, so no probe or poll ever has to repair a parent later.
"""

from __future__ import annotations

from typing import Any

import apsw

from litejobs._db import rows

TERMINAL = ("completed", "failed", "cancelled")


def finish(
    conn: apsw.Connection,
    job_id: str,
    status: str,
    now: int,
    *,
    result: str | None = None,
    error: str | None = None,
) -> None:
    """Make a job terminal and roll the change up into its parent."""
    ((parent_id,),) = rows(
        conn,
        """
        UPDATE jobs SET status = :status, result = coalesce(:result, result),
               error = coalesce(:error, error), completed_at = :now, message_id = NULL
        WHERE id = :id RETURNING parent_id
        """,
        {"status": status, "result": result, "error": error, "now": now, "id": job_id},
    )
    if parent_id is not None:
        roll_up(conn, parent_id, now, child_failed=status == "failed")


def roll_up(conn: apsw.Connection, parent_id: str, now: int, *, child_failed: bool) -> None:
    """Apply the parent's error tolerance, and finish the parent once its last
    child is terminal.

    Tolerance fires exactly once, in the transaction whose child failure makes
    the count equal ``max_child_failures``:

    - ``stop_all`` cancels the remaining children (deleting their messages)
      and fails the parent at once;
    - ``continue`` records the error and lets the rest run; the parent ends
      failed;
    - ``mark_warning`` records a warning and lets the rest run; the parent ends
      completed, with the warning.
    """
    ((status, limit, action),) = rows(
        conn, "SELECT status, max_child_failures, on_failure FROM jobs WHERE id = ?", (parent_id,)
    )
    if status in TERMINAL:
        return
    reached = False
    if limit:
        ((failures,),) = rows(
            conn,
            "SELECT count(*) FROM jobs WHERE parent_id = ? AND status = 'failed'",
            (parent_id,),
        )
        reached = failures >= limit
        if child_failed and failures == limit:
            reason = f"{failures} child failures reached max_child_failures={limit}"
            if action == "stop_all":
                cancel_children(conn, parent_id, now, f"cancelled by parent {parent_id}: {reason}")
                set_parent(conn, parent_id, "failed", now, error=reason)
                return
            column = "error" if action == "continue" else "warning"
            rows(conn, f"UPDATE jobs SET {column} = ? WHERE id = ?", (reason, parent_id))
    if not rows(conn, _ANY_ACTIVE_CHILD, (parent_id,)):
        final = "failed" if reached and action == "continue" else "completed"
        set_parent(conn, parent_id, final, now)


_ANY_ACTIVE_CHILD = """
SELECT 1 FROM jobs WHERE parent_id = ? AND status IN ('pending', 'running') LIMIT 1
"""


def set_parent(
    conn: apsw.Connection, parent_id: str, status: str, now: int, *, error: str | None = None
) -> None:
    """Give a parent its terminal status (the caller knows it is not terminal)."""
    rows(
        conn,
        "UPDATE jobs SET status = ?, completed_at = ?, error = coalesce(?, error) WHERE id = ?",
        (status, now, error, parent_id),
    )


def cancel_children(conn: apsw.Connection, parent_id: str, now: int, reason: str) -> int:
    """Cancel every non-terminal child of ``parent_id`` and delete its message;
    return how many were cancelled."""
    rows(
        conn,
        """
        DELETE FROM messages WHERE id IN (
            SELECT message_id FROM jobs
            WHERE parent_id = ? AND status IN ('pending', 'running') AND message_id IS NOT NULL
        )
        """,
        (parent_id,),
    )
    cancelled = rows(
        conn,
        """
        UPDATE jobs SET status = 'cancelled', error = ?, completed_at = ?, message_id = NULL
        WHERE parent_id = ? AND status IN ('pending', 'running') RETURNING id
        """,
        (reason, now, parent_id),
    )
    return len(cancelled)


def fail_dead_jobs(conn: apsw.Connection, dead: list[Any], now: int) -> None:
    """Fail the jobs whose messages were just dead-lettered, and delete those
    messages: the failed job is the record, and a terminal job keeps no message."""
    for message_id, received in dead:
        found = rows(
            conn,
            "SELECT id FROM jobs WHERE message_id = ? AND status IN ('pending', 'running')",
            (message_id,),
        )
        if found:
            rows(conn, "DELETE FROM messages WHERE id = ?", (message_id,))
            error = f"message {message_id} was dead-lettered after {received} receives"
            finish(conn, found[0][0], "failed", now, error=error)
