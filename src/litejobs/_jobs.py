"""The job store: parent and child jobs whose state changes commit together
with their queue messages.

A worker's life with one child job::

    message = queue.receive(visibility_timeout=30)
    job = store.start(message.body["job_id"], message.receipt)
    store.complete(job.id, message.receipt, result)   # or store.fail(...)

``complete`` writes the result, deletes the message (fenced by the receipt) and
rolls the parent up in one transaction: delivery is at least once, the effect
exactly once.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any

import apsw
import attrs

from litejobs import _queue
from litejobs._clock import to_ms
from litejobs._db import Database, rows
from litejobs._errors import (
    ConfigError,
    InvalidTransitionError,
    NotFoundError,
    StaleReceiptError,
)
from litejobs._hierarchy import cancel_children, finish, set_parent
from litejobs._payload import dumps, loads, stored_text
from litejobs._queue import Queue, parse_receipt


class JobStatus(enum.StrEnum):
    """Where a job is in its life: pending -> running -> a terminal state."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """Whether the status is final."""
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


class ToleranceAction(enum.StrEnum):
    """What a parent does when its child failures reach ``max_child_failures``."""

    STOP_ALL = "stop_all"
    CONTINUE = "continue"
    MARK_WARNING = "mark_warning"


def _action(value: str) -> ToleranceAction:
    try:
        return ToleranceAction(value)
    except ValueError:
        choices = ", ".join(repr(a.value) for a in ToleranceAction)
        raise ConfigError(f"tolerance action must be one of {choices}, got {value!r}") from None


def _max_failures(instance: object, attribute: attrs.Attribute, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ConfigError(f"max_child_failures must be an int >= 0 (0 = unlimited), got {value!r}")


@attrs.frozen
class Tolerance:
    """A parent's error tolerance: ``action`` fires when exactly
    ``max_child_failures`` children have failed (0 never fires)."""

    max_child_failures: int = attrs.field(default=0, validator=_max_failures)
    action: ToleranceAction = attrs.field(default=ToleranceAction.CONTINUE, converter=_action)


@attrs.frozen
class Job:
    """One row of the job table, as read. Times are UTC milliseconds."""

    id: str
    parent_id: str | None
    kind: str
    status: JobStatus
    payload: Any
    result: Any
    error: str | None
    warning: str | None
    attempts: int
    message_id: str | None
    created_at: int
    started_at: int | None
    completed_at: int | None


@attrs.frozen
class ChildStats:
    """A parent's children counted by status."""

    pending: int = 0
    running: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0

    @property
    def total(self) -> int:
        return self.pending + self.running + self.completed + self.failed + self.cancelled


# Every TEXT column comes back as its bytes and is decoded by stored_text or
# loads: text that is not UTF-8 (written by something other than litejobs) is
# then an InvalidPayloadError naming the job and the column, not a
# UnicodeDecodeError from inside apsw.
_COLUMNS = """id, parent_id, CAST(kind AS BLOB), CAST(status AS BLOB), CAST(payload AS BLOB),
CAST(result AS BLOB), CAST(error AS BLOB), CAST(warning AS BLOB), attempts, message_id,
created_at, started_at, completed_at"""


def _job(row: Any) -> Job:
    (
        jid,
        parent_id,
        kind,
        status,
        payload,
        result,
        error,
        warning,
        attempts,
        message_id,
        created_at,
        started_at,
        completed_at,
    ) = row
    return Job(
        id=str(jid),
        parent_id=None if parent_id is None else str(parent_id),
        kind=stored_text(kind, f"kind of job {jid}"),
        status=JobStatus(stored_text(status, f"status of job {jid}")),
        payload=loads(payload, f"payload of job {jid}"),
        result=loads(result, f"result of job {jid}"),
        error=stored_text(error, f"error of job {jid}"),
        warning=stored_text(warning, f"warning of job {jid}"),
        attempts=attempts,
        message_id=None if message_id is None else str(message_id),
        created_at=created_at,
        started_at=started_at,
        completed_at=completed_at,
    )


def _kind(kind: object) -> str:
    if not isinstance(kind, str) or not kind:
        raise ConfigError(f"job kind must be a non-empty str, got {kind!r}")
    return kind


def _error_text(error: object) -> str:
    if isinstance(error, BaseException):
        error = f"{type(error).__name__}: {error}"
    elif not isinstance(error, str):
        raise ConfigError(f"error must be a str or an exception, got {error!r}")
    # An error message is kept whatever it holds: text that is not valid
    # Unicode (a lone surrogate) is stored escaped rather than refused.
    return error.encode("utf-8", "backslashreplace").decode("utf-8")


class JobStore:
    """Parent and child jobs in a litejobs database.

    Parents are created with :meth:`create_parent` and have no message: their
    status follows their children. Children are spawned onto a queue and run
    by workers through :meth:`start`, :meth:`complete` and :meth:`fail`.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- creating ------------------------------------------------------------

    def create_parent(
        self, kind: str, payload: Any = None, *, tolerance: Tolerance | None = None
    ) -> str:
        """Create a pending parent job and return its id."""
        _kind(kind)
        encoded = dumps(payload, "job payload", self.db.max_payload_bytes)
        tolerance = tolerance or Tolerance()
        if not isinstance(tolerance, Tolerance):
            raise ConfigError(f"tolerance must be a litejobs.Tolerance, got {tolerance!r}")
        ((job_id,),) = self.db.autocommit(
            lambda conn: rows(
                conn,
                """
                INSERT INTO jobs (kind, status, payload, max_child_failures, on_failure, created_at)
                VALUES (?, 'pending', ?, ?, ?, ?) RETURNING id
                """,
                (
                    kind,
                    encoded,
                    tolerance.max_child_failures,
                    tolerance.action.value,
                    self.db.clock.now_ms(),
                ),
            )
        )
        return str(job_id)

    def spawn_children(
        self,
        parent_id: str,
        kind: str,
        payloads: Iterable[Any],
        *,
        queue: Queue,
        priority: int = 0,
        keys: Iterable[str] | None = None,
    ) -> list[str]:
        """Create one pending child per payload and enqueue its message on
        ``queue``, all in one transaction; return the ids of the children created.

        Each message body is ``{"job_id": ..., "kind": ...}``. With ``keys`` (one
        str per payload), a payload whose key this parent has seen before, in
        this call or an earlier one, is skipped: spawning is idempotent, so a
        redelivered job that spawns again creates nothing twice.

        Raises:
            NotFoundError: ``parent_id`` names no job.
            InvalidTransitionError: the parent is terminal, or is itself a child.
        """
        _kind(kind)
        limit = self.db.max_payload_bytes
        encoded = [dumps(p, f"payload #{i}", limit) for i, p in enumerate(payloads)]
        _queue.check_int(priority, "priority", -_queue.INT64)
        wanted_keys: list[str | None] = [None] * len(encoded)
        if keys is not None:
            wanted_keys = list(keys)
            if len(wanted_keys) != len(encoded) or not all(isinstance(k, str) for k in wanted_keys):
                raise ConfigError("keys must hold one str per payload")
        if not isinstance(queue, Queue) or queue.db is not self.db:
            raise ConfigError("queue must be a litejobs.Queue on this store's database")

        def transaction(conn: apsw.Connection) -> list[str]:
            now = self.db.clock.now_ms()
            parent = self._load(conn, parent_id)
            if parent.parent_id is not None:
                raise InvalidTransitionError(
                    f"job {parent_id} is a child of {parent.parent_id}; only parents "
                    "(made by create_parent) can have children"
                )
            if parent.status.terminal:
                raise InvalidTransitionError(
                    f"parent {parent_id} is {parent.status}; a terminal parent takes no children"
                )
            children = []
            for payload, key in zip(encoded, wanted_keys, strict=True):
                created = rows(
                    conn,
                    """
                    INSERT INTO jobs (parent_id, kind, status, payload, key, created_at)
                    VALUES (?, ?, 'pending', ?, ?, ?)
                    ON CONFLICT (parent_id, key) WHERE key IS NOT NULL DO NOTHING
                    RETURNING id
                    """,
                    (parent.id, kind, payload, key, now),
                )
                if not created:
                    continue
                ((job_id,),) = created
                body = dumps({"job_id": str(job_id), "kind": kind}, "message body")
                message_id = _queue.insert(
                    conn, queue.name, body, priority, 0, queue.max_receive, now
                )
                rows(conn, "UPDATE jobs SET message_id = ? WHERE id = ?", (message_id, job_id))
                children.append(str(job_id))
            if children and parent.status is JobStatus.PENDING:
                rows(
                    conn,
                    "UPDATE jobs SET status = 'running', started_at = ? WHERE id = ?",
                    (now, parent.id),
                )
            return children

        return self.db.write(transaction)

    # -- a worker's calls ----------------------------------------------------

    def start(self, job_id: str, receipt: str) -> Job:
        """Mark a child running under the lease ``receipt`` holds, counting the
        attempt; a redelivered running job may be started again.

        Raises:
            NotFoundError, InvalidTransitionError, StaleReceiptError.
        """
        message_id, fence = parse_receipt(receipt)

        def transaction(conn: apsw.Connection) -> Job:
            now = self.db.clock.now_ms()
            job = self._worker_job(
                conn, job_id, message_id, fence, "start", (JobStatus.PENDING, JobStatus.RUNNING)
            )
            _queue.check_receipt(conn, message_id, fence, now)
            (row,) = rows(
                conn,
                f"""
                UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = ?
                WHERE id = ? RETURNING {_COLUMNS}
                """,
                (now, job.id),
            )
            return _job(row)

        return self.db.write(transaction)

    def complete(self, job_id: str, receipt: str, result: Any = None) -> Job:
        """Store ``result``, delete the job's message and roll up its parent,
        in one transaction.

        Raises:
            InvalidPayloadError: ``result`` is not JSON-serialisable.
            NotFoundError, InvalidTransitionError, StaleReceiptError.
        """
        message_id, fence = parse_receipt(receipt)
        encoded = dumps(result, "job result", self.db.max_payload_bytes)

        def transaction(conn: apsw.Connection) -> Job:
            now = self.db.clock.now_ms()
            job = self._worker_job(
                conn, job_id, message_id, fence, "complete", (JobStatus.RUNNING,)
            )
            _queue.fenced(conn, _queue.DELETE, message_id, fence, now)
            finish(conn, job.id, "completed", now, result=encoded)
            return self._load(conn, job.id)

        return self.db.write(transaction)

    def fail(
        self,
        job_id: str,
        receipt: str,
        error: str | BaseException,
        *,
        retry: bool = True,
        delay: float = 0.0,
    ) -> Job:
        """Record a failed attempt.

        With ``retry`` and receives left on the message, the message becomes
        visible again after ``delay`` seconds and the job pending; otherwise the
        message is deleted and the job fails for good, rolling up its parent.

        Raises:
            NotFoundError, InvalidTransitionError, StaleReceiptError.
        """
        message_id, fence = parse_receipt(receipt)
        text = _error_text(error)
        delay_ms = to_ms(delay, "delay")

        def transaction(conn: apsw.Connection) -> Job:
            now = self.db.clock.now_ms()
            job = self._worker_job(conn, job_id, message_id, fence, "fail", (JobStatus.RUNNING,))
            if retry and _queue.check_receipt(conn, message_id, fence, now):
                _queue.fenced(conn, _queue.NACK, message_id, fence, now, delay=delay_ms)
                rows(
                    conn,
                    "UPDATE jobs SET status = 'pending', error = ? WHERE id = ?",
                    (text, job.id),
                )
            else:
                _queue.fenced(conn, _queue.DELETE, message_id, fence, now)
                finish(conn, job.id, "failed", now, error=text)
            return self._load(conn, job.id)

        return self.db.write(transaction)

    def release(self, job_id: str, receipt: str) -> Job:
        """Give a running job back unprocessed (its worker is shutting down):
        the job is pending again and its message visible at once, and the
        receive is refunded, so releasing never uses up the job's attempts.

        Raises:
            NotFoundError, InvalidTransitionError, StaleReceiptError.
        """
        message_id, fence = parse_receipt(receipt)

        def transaction(conn: apsw.Connection) -> Job:
            now = self.db.clock.now_ms()
            job = self._worker_job(conn, job_id, message_id, fence, "release", (JobStatus.RUNNING,))
            _queue.fenced(conn, _queue.RELEASE, message_id, fence, now)
            rows(conn, "UPDATE jobs SET status = 'pending' WHERE id = ?", (job.id,))
            return self._load(conn, job.id)

        return self.db.write(transaction)

    # -- a parent's calls ----------------------------------------------------

    def cancel(self, parent_id: str) -> int:
        """Cancel a parent and every non-terminal child, deleting the children's
        messages in the same transaction; return how many children were cancelled.

        Raises:
            NotFoundError: ``parent_id`` names no job.
            InvalidTransitionError: the job is a child, or already terminal.
        """

        def transaction(conn: apsw.Connection) -> int:
            now = self.db.clock.now_ms()
            parent = self._load(conn, parent_id)
            if parent.parent_id is not None:
                raise InvalidTransitionError(
                    f"job {parent_id} is a child; cancel its parent {parent.parent_id} instead"
                )
            if parent.status.terminal:
                raise InvalidTransitionError(f"parent {parent_id} is already {parent.status}")
            cancelled = cancel_children(conn, parent_id, now, f"cancelled with parent {parent_id}")
            set_parent(conn, parent_id, "cancelled", now)
            return cancelled

        return self.db.write(transaction)

    # -- reading -------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        """Return the job ``job_id``.

        Raises:
            NotFoundError: no such job.
        """
        return self.db.read(lambda conn: self._load(conn, job_id))

    def children(self, parent_id: str) -> list[Job]:
        """Return the children of ``parent_id`` in creation order."""

        def read(conn: apsw.Connection) -> list[Job]:
            self._load(conn, parent_id)
            found = rows(
                conn,
                f"SELECT {_COLUMNS} FROM jobs WHERE parent_id = ? ORDER BY created_at, rowid",
                (parent_id,),
            )
            return [_job(row) for row in found]

        return self.db.read(read)

    def child_stats(self, parent_id: str) -> ChildStats:
        """Count the children of ``parent_id`` by status."""

        def read(conn: apsw.Connection) -> ChildStats:
            self._load(conn, parent_id)
            found = rows(
                conn,
                "SELECT status, count(*) FROM jobs WHERE parent_id = ? GROUP BY status",
                (parent_id,),
            )
            return ChildStats(**dict(found))

        return self.db.read(read)

    # -- helpers -------------------------------------------------------------

    def _load(self, conn: apsw.Connection, job_id: str) -> Job:
        if not isinstance(job_id, str):
            raise ConfigError(f"job ids are str, as create_parent returns them; got {job_id!r}")
        found = rows(conn, f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        if not found:
            raise NotFoundError(f"no job {job_id!r}")
        return _job(found[0])

    def _worker_job(
        self,
        conn: apsw.Connection,
        job_id: str,
        message_id: str,
        fence: int,
        action: str,
        allowed: tuple[JobStatus, ...],
    ) -> Job:
        """Load a child job for a worker's call and check the call is legal."""
        job = self._load(conn, job_id)
        if job.parent_id is None:
            raise InvalidTransitionError(
                f"cannot {action} job {job_id}: it is a parent, whose status follows its children"
            )
        if job.status not in allowed:
            hint = ": start it first" if job.status is JobStatus.PENDING else ""
            raise InvalidTransitionError(f"cannot {action} job {job_id}: it is {job.status}{hint}")
        if job.message_id != message_id:
            raise StaleReceiptError(
                f"receipt {message_id}:{fence} is not for job {job_id}, "
                f"whose message is {job.message_id}"
            )
        return job
