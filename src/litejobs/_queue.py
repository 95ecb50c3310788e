"""The queue: goqite's semantics on the shared ``messages`` table, with fenced
receipts and dead letters.

SQL sits next to the method that runs it. The statement functions at the bottom
take a connection so that :mod:`litejobs._jobs` can run them inside its own
transactions (goqite's "twin that runs inside the caller's transaction").
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import apsw
import attrs

from litejobs import _hierarchy
from litejobs._clock import to_ms
from litejobs._db import Database, rows
from litejobs._errors import (
    ConfigError,
    InvalidPayloadError,
    InvalidTransitionError,
    NotFoundError,
    StaleReceiptError,
)
from litejobs._payload import dumps, loads, stored_text


@attrs.frozen
class Message:
    """A received message. ``receipt`` proves the lease until the message is
    received again, dead-lettered or redriven."""

    id: str
    body: Any
    receipt: str
    receive_count: int


@attrs.frozen
class QueueStats:
    """How many messages of one queue are in each state, at one instant."""

    visible: int
    delayed: int
    in_flight: int
    dead: int

    @property
    def total(self) -> int:
        return self.visible + self.delayed + self.in_flight + self.dead


@attrs.frozen
class DeadLetter:
    """A message that was received ``receive_count`` times without being
    deleted; ``dead_at`` is when its last lease ran out (UTC ms).

    ``body`` is the decoded JSON, or, for a body that is not UTF-8 JSON
    (something other than litejobs wrote it), the stored bytes as they are:
    JSON never decodes to ``bytes``, so ``bytes`` always means unreadable, and
    one such message does not hide the others from a person looking.
    """

    id: str
    body: Any
    receive_count: int
    dead_at: int


INT64 = 2**63


def check_int(value: object, name: str, minimum: int) -> int:
    """Check an int argument that SQLite will store (so at most 64 bits)."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value < INT64:
        raise ConfigError(f"{name} must be an int from {minimum} to 2**63-1, got {value!r}")
    return value


class Queue:
    """A named queue in a litejobs database.

    Any number of ``Queue`` objects, in any threads or processes, may share a
    name: the database is the queue. For example::

        queue = Queue(db, "emails")
        queue.send({"to": "ada@example.com"})
        message = queue.receive(visibility_timeout=30)
        ...  # do the work
        queue.delete(message.receipt)

    Args:
        max_receive: deliveries before a message is dead-lettered. It is stored
            with each message this object sends.
    """

    def __init__(self, db: Database, name: str = "default", *, max_receive: int = 3) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"queue name must be a non-empty str, got {name!r}")
        self.db = db
        self.name = name
        self.max_receive = check_int(max_receive, "max_receive", 1)
        self._next_sweep = 0

    def __repr__(self) -> str:
        return f"Queue({self.db.path!r}, {self.name!r}, max_receive={self.max_receive})"

    # -- sending -------------------------------------------------------------

    def send(self, body: Any, *, delay: float = 0.0, priority: int = 0) -> str:
        """Enqueue ``body`` (any JSON value) and return the new message id.

        Raises:
            InvalidPayloadError: ``body`` is not JSON-serialisable.
            ConfigError: ``delay`` is negative or not finite, ``priority`` not an int.
        """
        encoded = dumps(body, "message body", self.db.max_payload_bytes)
        delay_ms = to_ms(delay, "delay")
        check_int(priority, "priority", -INT64)
        return self.db.autocommit(
            lambda conn: insert(
                conn,
                self.name,
                encoded,
                priority,
                delay_ms,
                self.max_receive,
                self.db.clock.now_ms(),
            )
        )

    def send_batch(self, bodies: Iterable[Any], *, priority: int = 0) -> list[str]:
        """Enqueue every body in one transaction; all or nothing."""
        limit = self.db.max_payload_bytes
        encoded = [dumps(body, f"message body #{i}", limit) for i, body in enumerate(bodies)]
        check_int(priority, "priority", -INT64)

        def transaction(conn: apsw.Connection) -> list[str]:
            now = self.db.clock.now_ms()
            return [insert(conn, self.name, e, priority, 0, self.max_receive, now) for e in encoded]

        return self.db.write(transaction)

    # -- receiving -----------------------------------------------------------

    def receive(self, *, visibility_timeout: float) -> Message | None:
        """Lease the most urgent visible message for ``visibility_timeout``
        seconds, or return ``None`` if none is visible.

        Urgent means highest priority, then oldest. The claim is one
        ``UPDATE ... RETURNING``. A message that used up its receives is
        dead-lettered instead of delivered (and its job failed) by the sweep,
        which runs with a claim when the plain claim finds nothing, and at
        most every :data:`SWEEP_INTERVAL_MS` otherwise.

        Raises:
            InvalidPayloadError: the body is not UTF-8 JSON (something other
                than litejobs wrote it). The claim stands: it counts the
                receive, so the message reaches the dead letters after
                ``max_receive`` tries instead of blocking the head of the queue.
        """
        lease_ms = to_ms(visibility_timeout, "visibility_timeout")
        if self.db.clock.now_ms() < self._next_sweep:
            claimed = self.db.autocommit(
                lambda conn: self._claim(conn, self.db.clock.now_ms(), lease_ms, 1)
            )
            if claimed:
                return self._messages(claimed)[0]
        # Empty, the most urgent message is exhausted, or a sweep is due.
        claimed = self.db.write(lambda conn: self._sweep_and_claim(conn, lease_ms, 1))
        return self._messages(claimed)[0] if claimed else None

    def receive_batch(self, n: int, *, visibility_timeout: float) -> list[Message]:
        """Lease up to ``n`` visible messages in one transaction, most urgent first.

        Raises:
            InvalidPayloadError: a body is not UTF-8 JSON; the error names it.
                Decided inside the claim's transaction: the unreadable message
                keeps its claim, as with :meth:`receive`, while the batch's
                readable messages are given back unseen, visible at once with
                their receive refunded, so a poisoned batch never brings a
                good message nearer the dead letters.
        """
        check_int(n, "n", 1)
        lease_ms = to_ms(visibility_timeout, "visibility_timeout")

        def transaction(conn: apsw.Connection) -> tuple[list[Message], list[str]]:
            now = self.db.clock.now_ms()
            messages, unreadable = _decode(self._sweep_and_claim(conn, lease_ms, n, now))
            if unreadable:
                for message in messages:
                    # Fenced at the instant before the claim: with a zero lease
                    # the claim's own instant already counts a message on its
                    # last receive as dead.
                    fenced(conn, RELEASE, *parse_receipt(message.receipt), now - 1)
            return messages, unreadable

        messages, unreadable = self.db.write(transaction)
        if unreadable:
            given_back = ", ".join(message.id for message in messages)
            raise _unreadable(
                unreadable,
                f"; the rest of the batch ({given_back}) was given back unseen, "
                "its receive refunded"
                if messages
                else "",
            )
        return messages

    def _sweep_and_claim(
        self, conn: apsw.Connection, lease_ms: int, n: int, now: int | None = None
    ) -> list[Any]:
        """Sweep, then claim, at ``now`` (by default the clock's time)."""
        if now is None:
            now = self.db.clock.now_ms()
        sweep(conn, self.name, now)
        self._next_sweep = now + SWEEP_INTERVAL_MS
        return self._claim(conn, now, lease_ms, n)

    def _claim(self, conn: apsw.Connection, now: int, lease_ms: int, n: int) -> list[Any]:
        if n == 1:
            return rows(conn, _CLAIM_ONE, (self.name, now, now + lease_ms))
        claimed = rows(conn, _CLAIM_MANY, (self.name, now, now + lease_ms, n))
        claimed.sort(key=lambda row: (-row[4], row[5], row[0]))  # RETURNING has no order
        return claimed

    def _messages(self, claimed: list[Any]) -> list[Message]:
        """Decode claimed rows after their claim committed, so it stands."""
        messages, unreadable = _decode(claimed)
        if unreadable:
            raise _unreadable(unreadable, "")
        return messages

    # -- acknowledging -------------------------------------------------------

    def delete(self, receipt: str) -> None:
        """Delete the message ``receipt`` leases.

        Raises:
            StaleReceiptError: the receipt no longer holds the message.
            InvalidTransitionError: the message carries a job; finish the job
                through :class:`JobStore` instead.
        """
        message_id, fence = parse_receipt(receipt)
        self.db.autocommit(
            lambda conn: fenced(
                conn, DELETE_PLAIN, message_id, fence, self.db.clock.now_ms(), self.name
            )
        )

    def delete_batch(self, receipts: Iterable[str]) -> list[str]:
        """Delete every message whose receipt is live, in one transaction, and
        return the receipts that were stale (in the order given).

        Raises:
            InvalidTransitionError: a message carries a job; nothing is deleted.
        """
        parsed = [(r, *parse_receipt(r)) for r in _not_a_str(receipts, "receipts")]

        def transaction(conn: apsw.Connection) -> list[str]:
            now = self.db.clock.now_ms()
            stale = []
            for receipt, message_id, fence in parsed:
                try:
                    fenced(conn, DELETE_PLAIN, message_id, fence, now, self.name)
                except StaleReceiptError:
                    stale.append(receipt)
            return stale

        return self.db.write(transaction)

    def extend(self, receipt: str, seconds: float) -> None:
        """Make the lease run out ``seconds`` from now (a heartbeat)."""
        message_id, fence = parse_receipt(receipt)
        lease_ms = to_ms(seconds, "seconds")
        self.db.autocommit(
            lambda conn: fenced(
                conn, EXTEND, message_id, fence, self.db.clock.now_ms(), self.name, delay=lease_ms
            )
        )

    def nack(self, receipt: str, *, delay: float = 0.0) -> None:
        """Give the message back: visible again after ``delay`` seconds."""
        message_id, fence = parse_receipt(receipt)
        delay_ms = to_ms(delay, "delay")
        self.db.autocommit(
            lambda conn: fenced(
                conn, NACK, message_id, fence, self.db.clock.now_ms(), self.name, delay=delay_ms
            )
        )

    # -- inspecting and dead letters -----------------------------------------

    def stats(self) -> QueueStats:
        """Count this queue's messages by state, now."""
        params = {"queue": self.name, "now": self.db.clock.now_ms()}
        ((visible, delayed, in_flight, dead),) = self.db.read(
            lambda conn: rows(conn, _STATS, params)
        )
        return QueueStats(visible=visible, delayed=delayed, in_flight=in_flight, dead=dead)

    def dead_letters(self) -> list[DeadLetter]:
        """Every dead message of this queue that :meth:`redrive` can move,
        oldest death first.

        A dead job message is not listed: the next sweep fails its job and
        deletes it (``stats().dead`` still counts it until then). A body that
        is not UTF-8 JSON is listed as its raw bytes (see :class:`DeadLetter`).
        """
        params = {"queue": self.name, "now": self.db.clock.now_ms()}
        found = self.db.read(lambda conn: rows(conn, _DEAD_LETTERS, params))
        return [
            DeadLetter(id=str(mid), body=_dead_body(body, mid), receive_count=n, dead_at=at)
            for mid, body, n, at in found
        ]

    def redrive(self, ids: Iterable[str] | None = None) -> int:
        """Make dead letters (all, or those in ``ids``) visible again with a
        receive count of 0, and return how many moved.

        Dead messages of jobs are never redriven: their jobs have failed, which
        is final.

        Raises:
            NotFoundError: an id in ``ids`` is not a dead letter of this queue;
                nothing is redriven.
        """
        wanted = None if ids is None else list(dict.fromkeys(_not_a_str(ids, "ids")))
        if wanted and not all(isinstance(i, str) for i in wanted):
            raise ConfigError(f"ids must be message ids (str), got {wanted!r}")

        def transaction(conn: apsw.Connection) -> int:
            now = self.db.clock.now_ms()
            sweep(conn, self.name, now)
            if wanted is None:
                return len(rows(conn, _REDRIVE_ALL, {"queue": self.name, "now": now}))
            for message_id in wanted:
                if not rows(conn, _REDRIVE_ONE, {"queue": self.name, "now": now, "id": message_id}):
                    raise NotFoundError(
                        f"message {message_id} is not a dead letter of queue {self.name!r}"
                    )
            return len(wanted)

        return self.db.write(transaction)


def _decode(claimed: list[Any]) -> tuple[list[Message], list[str]]:
    """Decode claimed rows: the messages, and why for each body that is not
    UTF-8 JSON (so the caller decides what becomes of that body's claim)."""
    messages, unreadable = [], []
    for mid, body, received, fence, *_ in claimed:
        try:
            decoded = loads(body, f"message {mid}")
        except InvalidPayloadError as exc:
            unreadable.append(f"{exc} (receive {received})")
            continue
        messages.append(Message(str(mid), decoded, f"{mid}:{fence}", received))
    return messages, unreadable


def _unreadable(unreadable: list[str], after: str) -> InvalidPayloadError:
    return InvalidPayloadError(
        "; ".join(unreadable) + ": such a message goes to the dead letters once it has "
        "been received max_receive times" + after
    )


def _dead_body(body: bytes, message_id: int) -> Any:
    try:
        return loads(body, f"message {message_id}")
    except InvalidPayloadError:
        return body


def _not_a_str(values: Iterable[str], name: str) -> Iterable[str]:
    if isinstance(values, str):
        raise ConfigError(f"{name} must be an iterable of str, not one str: wrap it in a list")
    return values


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def parse_receipt(receipt: object) -> tuple[str, int]:
    """Split a receipt into message id and fence.

    Raises:
        ConfigError: ``receipt`` was not made by :meth:`Queue.receive`.
    """
    if isinstance(receipt, str):
        message_id, sep, fence = receipt.partition(":")
        if sep and _digits(message_id) and _digits(fence):
            number, fence_number = int(message_id), int(fence)
            if number < INT64 and fence_number < INT64:
                return str(number), fence_number
    raise ConfigError(f"{receipt!r} is not a litejobs receipt (use Message.receipt)")


# -- statements, runnable inside a caller's transaction -----------------------

INSERT = """
INSERT INTO messages (queue, body, priority, created, timeout, max_receive)
VALUES (?, ?, ?, ?, ?, ?) RETURNING id
"""


def insert(
    conn: apsw.Connection,
    queue: str,
    body: str,
    priority: int,
    delay_ms: int,
    max_receive: int,
    now: int,
) -> str:
    """Insert one message and return its id."""
    ((message_id,),) = rows(conn, INSERT, (queue, body, priority, now, now + delay_ms, max_receive))
    return str(message_id)


# The outer "received < max_receive" makes an exhausted head of the queue claim
# nothing rather than be skipped, so receive() sweeps it to the dead letters.
_CLAIM_ONE = """
UPDATE messages
SET received = received + 1, fence = fence + 1, leased = 1, timeout = ?3
WHERE id = (
    SELECT id FROM messages
    WHERE queue = ?1 AND dead_at IS NULL AND timeout <= ?2
    ORDER BY priority DESC, created, id
    LIMIT 1
) AND received < max_receive
RETURNING id, CAST(body AS BLOB), received, fence, priority, created
"""

_CLAIM_MANY = """
UPDATE messages
SET received = received + 1, fence = fence + 1, leased = 1, timeout = ?3
WHERE id IN (
    SELECT id FROM messages
    WHERE queue = ?1 AND dead_at IS NULL AND timeout <= ?2
    ORDER BY priority DESC, created, id
    LIMIT ?4
) AND received < max_receive
RETURNING id, CAST(body AS BLOB), received, fence, priority, created
"""

#: How often, at most, a receiving Queue sweeps exhausted messages that are
#: not at the head of the queue (a dead head is swept at once). It bounds how
#: long a job whose message died behind busier traffic stays "running".
SWEEP_INTERVAL_MS = 1000

_SWEEP = """
UPDATE messages SET dead_at = timeout, fence = fence + 1, leased = 0
WHERE queue = :queue AND dead_at IS NULL AND received >= max_receive AND timeout <= :now
RETURNING id, received
"""


def sweep(conn: apsw.Connection, queue: str, now: int) -> None:
    """Dead-letter the queue's exhausted messages whose last lease ran out, and
    fail their jobs in the same transaction."""
    dead = rows(conn, _SWEEP, {"queue": queue, "now": now})
    if dead:
        _hierarchy.fail_dead_jobs(conn, dead, now)


# Parameters: ?1 message id, ?2 fence, ?3 now, ?4 queue name or NULL for any,
# and ?5 a delay in ms where the statement uses one.
FENCE = """
id = ?1 AND fence = ?2 AND (?4 IS NULL OR queue = ?4)
AND dead_at IS NULL AND NOT (received >= max_receive AND timeout <= ?3)
"""
# The writes report success through changes(): RETURNING was measured to add
# about 20 % to the cost of a single-message delete.
DELETE = f"DELETE FROM messages WHERE {FENCE}"
EXTEND = f"UPDATE messages SET timeout = ?3 + ?5, leased = 1 WHERE {FENCE}"
NACK = f"UPDATE messages SET timeout = ?3 + ?5, leased = 0, fence = fence + 1 WHERE {FENCE}"
# Giving a message back unprocessed (a worker shutting down): visible now, and
# the receive it spent is refunded, so releases never lead to a dead letter.
RELEASE = (
    "UPDATE messages SET timeout = ?3, leased = 0, fence = fence + 1, "
    f"received = max(received - 1, 0) WHERE {FENCE}"
)
# What Queue.delete runs: a job's message leaves only with its job's outcome.
DELETE_PLAIN = f"{DELETE} AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.message_id = messages.id)"
CAN_RETRY = f"SELECT received < max_receive FROM messages WHERE {FENCE}"


def fenced(
    conn: apsw.Connection,
    sql: str,
    message_id: str,
    fence: int,
    now: int,
    queue: str | None = None,
    *,
    delay: int | None = None,
) -> None:
    """Run a fenced write: :data:`DELETE`, :data:`DELETE_PLAIN`,
    :data:`EXTEND`, :data:`NACK` or :data:`RELEASE`.

    Raises:
        StaleReceiptError: the receipt no longer holds the message; the
            message says why.
        InvalidTransitionError: :data:`DELETE_PLAIN` met a job's message.
    """
    params = (message_id, fence, now, queue)
    conn.execute(sql, params if delay is None else (*params, delay))
    if not conn.changes():
        raise refusal(conn, message_id, fence, now, queue)


def check_receipt(conn: apsw.Connection, message_id: str, fence: int, now: int) -> bool:
    """Check that the receipt holds its message, and return whether the
    message has receives left (so a failed attempt can be retried).

    Raises:
        StaleReceiptError: the receipt no longer holds the message.
    """
    found = rows(conn, CAN_RETRY, (message_id, fence, now, None))
    if not found:
        raise refusal(conn, message_id, fence, now, None)
    return bool(found[0][0])


def refusal(
    conn: apsw.Connection, message_id: str, fence: int, now: int, queue: str | None
) -> StaleReceiptError | InvalidTransitionError:
    """Explain why a fenced statement with receipt ``message_id:fence`` changed
    nothing: the receipt is stale, or (for :data:`DELETE_PLAIN`) the message
    carries a job."""
    receipt = f"{message_id}:{fence}"
    found = rows(
        conn,
        "SELECT CAST(queue AS BLOB), fence, received, max_receive, timeout, dead_at "
        "FROM messages WHERE id = ?",
        (message_id,),
    )
    if not found:
        why = "the message was deleted"
    else:
        ((stored, current, received, max_receive, timeout, dead_at),) = found
        owner = stored_text(stored, f"queue of message {message_id}")
        if queue is not None and owner != queue:
            why = f"the message belongs to queue {owner!r}, not {queue!r}"
        elif dead_at is not None or (received >= max_receive and timeout <= now):
            why = f"the message was dead-lettered after {received} receives"
        elif current != fence:
            why = "the message was received again, given back or redriven since"
        else:
            ((job_id,),) = rows(conn, "SELECT id FROM jobs WHERE message_id = ?", (message_id,))
            return InvalidTransitionError(
                f"message {message_id} carries job {job_id}: finish the job with "
                "JobStore.complete or JobStore.fail, which delete its message"
            )
    return StaleReceiptError(f"receipt {receipt} is stale: {why}")


_STATS = """
SELECT
    coalesce(sum(NOT dead AND timeout <= :now), 0),
    coalesce(sum(NOT dead AND timeout > :now AND NOT leased), 0),
    coalesce(sum(NOT dead AND timeout > :now AND leased), 0),
    coalesce(sum(dead), 0)
FROM (
    SELECT timeout, leased,
           dead_at IS NOT NULL OR (received >= max_receive AND timeout <= :now) AS dead
    FROM messages WHERE queue = :queue
)
"""

_DEAD_LETTERS = """
SELECT id, CAST(body AS BLOB), received, coalesce(dead_at, timeout) FROM messages
WHERE queue = :queue AND (dead_at IS NOT NULL OR (received >= max_receive AND timeout <= :now))
AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.message_id = messages.id)
ORDER BY coalesce(dead_at, timeout), id
"""

_REDRIVE = """
UPDATE messages SET dead_at = NULL, received = 0, fence = fence + 1, leased = 0, timeout = :now
WHERE queue = :queue AND dead_at IS NOT NULL
"""
_REDRIVE_ALL = _REDRIVE + " RETURNING id"
_REDRIVE_ONE = _REDRIVE + " AND id = :id RETURNING id"
