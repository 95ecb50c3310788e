"""``litejobs bench``: the queue's end-to-end cost against raw apsw statements.

Four paths run side by side, interleaved over several rounds, each on a fresh
database file with the same pragmas (WAL, the chosen ``synchronous``):

- ``baseline``: goqite, the queue we port, as raw apsw: its table, index and
  ``updated`` trigger, and its three statements (insert; claim as one
  ``UPDATE ... RETURNING``; delete by id), each as one autocommit statement;
- ``raw``: litejobs' own schema and statements through apsw with no library
  around them, so that ``single / raw`` is what the Python layer costs;
- ``single``: :meth:`Queue.send`, :meth:`Queue.receive`, :meth:`Queue.delete`;
- ``batch``: :meth:`Queue.send_batch`, :meth:`Queue.receive_batch`,
  :meth:`Queue.delete_batch` with ``batch`` messages per transaction.

Each path sends ``messages`` messages, then receives and deletes each in turn.
The figure per path is the median over rounds of messages per second.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import attrs

from litejobs import _queue
from litejobs._db import Database, rows
from litejobs._queue import Queue

_BODY = {"url": "http://127.0.0.1:8000/page/1", "depth": 1}

_GOQITE_SCHEMA = """
CREATE TABLE goqite (
    id TEXT PRIMARY KEY DEFAULT ('m_' || lower(hex(randomblob(16)))),
    created TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ')),
    updated TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ')),
    queue TEXT NOT NULL,
    body BLOB NOT NULL,
    timeout TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ')),
    received INTEGER NOT NULL DEFAULT 0,
    priority INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE TRIGGER goqite_updated_timestamp AFTER UPDATE ON goqite BEGIN
    UPDATE goqite SET updated = strftime('%Y-%m-%dT%H:%M:%fZ') WHERE id = old.id;
END;
CREATE INDEX goqite_queue_priority_created_idx ON goqite (queue, priority DESC, created);
"""


@attrs.frozen
class BenchResult:
    """Medians over rounds, in messages per second, and their ratios."""

    messages: int
    batch: int
    rounds: int
    synchronous: str
    baseline_msgs_per_s: float
    raw_msgs_per_s: float
    single_msgs_per_s: float
    batch_msgs_per_s: float

    @property
    def single_vs_baseline(self) -> float:
        return self.single_msgs_per_s / self.baseline_msgs_per_s

    @property
    def single_vs_raw(self) -> float:
        return self.single_msgs_per_s / self.raw_msgs_per_s

    @property
    def batch_vs_single(self) -> float:
        return self.batch_msgs_per_s / self.single_msgs_per_s

    def as_dict(self) -> dict[str, float | int | str]:
        return {
            **attrs.asdict(self),
            "single_vs_baseline": self.single_vs_baseline,
            "single_vs_raw": self.single_vs_raw,
            "batch_vs_single": self.batch_vs_single,
        }


def _goqite_time(ms: int) -> str:
    """goqite's timestamp format: RFC 3339, UTC, milliseconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def _baseline(db: Database, n: int, batch: int) -> None:
    conn = db.connection()
    conn.execute(_GOQITE_SCHEMA)
    body = json.dumps(_BODY).encode()
    for _ in range(n):
        now = _goqite_time(time.time_ns() // 1_000_000)
        conn.execute(
            "INSERT INTO goqite (queue, body, timeout, priority) VALUES (?, ?, ?, ?) RETURNING id",
            ("bench", body, now, 0),
        ).fetchall()
    for _ in range(n):
        now_ms = time.time_ns() // 1_000_000
        ((message_id, _body),) = conn.execute(
            """
            UPDATE goqite SET timeout = ?, received = received + 1
            WHERE id = (
                SELECT id FROM goqite
                WHERE queue = ? AND ? >= timeout AND received < ?
                ORDER BY priority DESC, created LIMIT 1
            ) RETURNING id, body
            """,
            (_goqite_time(now_ms + 30_000), "bench", _goqite_time(now_ms), 3),
        ).fetchall()
        conn.execute("DELETE FROM goqite WHERE queue = ? AND id = ?", ("bench", message_id))
    ((left,),) = rows(conn, "SELECT count(*) FROM goqite")
    if left:
        raise AssertionError(f"bench path baseline left {left} messages behind")


def _raw(db: Database, n: int, batch: int) -> None:
    conn = db.connection()
    body = json.dumps(_BODY, separators=(",", ":"))
    for _ in range(n):
        now = time.time_ns() // 1_000_000
        conn.execute(_queue.INSERT, ("bench", body, 0, now, now, 3)).fetchall()
    for _ in range(n):
        now = time.time_ns() // 1_000_000
        ((message_id, _body, _received, fence, _priority, _created),) = conn.execute(
            _queue._CLAIM_ONE, ("bench", now, now + 30_000)
        ).fetchall()
        conn.execute(_queue.DELETE_PLAIN, (message_id, fence, now, "bench"))


def _single(db: Database, n: int, batch: int) -> None:
    queue = Queue(db, "bench")
    for _ in range(n):
        queue.send(_BODY)
    for _ in range(n):
        message = queue.receive(visibility_timeout=30)
        if message is None:
            raise AssertionError("the single path lost a message")
        queue.delete(message.receipt)


def _batched(db: Database, n: int, batch: int) -> None:
    queue = Queue(db, "bench")
    for start in range(0, n, batch):
        queue.send_batch([_BODY] * min(batch, n - start))
    left = n
    while left:
        messages = queue.receive_batch(batch, visibility_timeout=30)
        if not messages or queue.delete_batch([m.receipt for m in messages]):
            raise AssertionError("the batch path lost messages or met stale receipts")
        left -= len(messages)


_PATHS: dict[str, Callable[[Database, int, int], None]] = {
    "baseline": _baseline,
    "raw": _raw,
    "single": _single,
    "batch": _batched,
}


def _time_path(
    path: Callable[[Database, int, int], None],
    directory: str,
    name: str,
    n: int,
    batch: int,
    synchronous: str,
) -> float:
    file = os.path.join(directory, f"{name}.db")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(file + suffix):
            os.remove(file + suffix)
    with Database.open(file, synchronous=synchronous) as db:  # type: ignore[arg-type]
        start = time.perf_counter()
        path(db, n, batch)
        elapsed = time.perf_counter() - start
        ((left,),) = rows(db.connection(), "SELECT count(*) FROM messages")
    if left:
        raise AssertionError(f"bench path {name} left {left} messages behind")
    return n / elapsed


def run_bench(
    *,
    messages: int = 2000,
    batch: int = 16,
    rounds: int = 5,
    synchronous: str = "NORMAL",
    directory: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> BenchResult:
    """Run every path ``rounds`` times, interleaved, and return the medians."""
    rates: dict[str, list[float]] = {name: [] for name in _PATHS}
    with tempfile.TemporaryDirectory(prefix="litejobs-bench-", dir=directory) as tmp:
        for round_no in range(1, rounds + 1):
            for name, path in _PATHS.items():
                rate = _time_path(path, tmp, name, messages, batch, synchronous)
                rates[name].append(rate)
                if progress:
                    progress(f"round {round_no}/{rounds} {name:>8}: {rate:,.0f} msg/s")
    medians = {name: statistics.median(values) for name, values in rates.items()}
    return BenchResult(
        messages=messages,
        batch=batch,
        rounds=rounds,
        synchronous=synchronous,
        baseline_msgs_per_s=medians["baseline"],
        raw_msgs_per_s=medians["raw"],
        single_msgs_per_s=medians["single"],
        batch_msgs_per_s=medians["batch"],
    )


def format_result(result: BenchResult) -> str:
    """Render a result as the table ``litejobs bench`` prints."""
    return "\n".join(
        [
            f"litejobs bench: {result.messages} messages per path, median of "
            f"{result.rounds} rounds, synchronous={result.synchronous}",
            "",
            "| path | msg/s | ratio |",
            "|---|---:|---:|",
            f"| baseline: goqite's schema and statements, raw apsw "
            f"| {result.baseline_msgs_per_s:,.0f} | 1.00 |",
            f"| raw: litejobs' schema and statements, raw apsw | {result.raw_msgs_per_s:,.0f} "
            f"| {result.raw_msgs_per_s / result.baseline_msgs_per_s:.2f} x baseline |",
            f"| single: Queue.send / receive / delete | {result.single_msgs_per_s:,.0f} "
            f"| {result.single_vs_baseline:.2f} x baseline, {result.single_vs_raw:.2f} x raw |",
            f"| batch: {result.batch} per transaction | {result.batch_msgs_per_s:,.0f} "
            f"| {result.batch_vs_single:.2f} x single |",
        ]
    )
