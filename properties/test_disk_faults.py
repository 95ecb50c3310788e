"""Disk faults (issue 6): one failed read, write or fsync during a litejobs call
ends in a typed error and an intact database that lost nothing acknowledged.

For every operation and every fault kind, Hypothesis draws a small database
(completed children, a parent with running and pending children, queued
messages), how the call is made, and the one I/O call to fail, counted on a
fault-free twin of the same run so that the fault always fires; a failure
shrinks to the first I/O that shows it. After the fault:

(a) the call returned, or raised ``StorageError``: never a raw apsw
    exception, nor another error;
(b) the files as a process killed at that instant would leave them, and the
    files after a clean close, reopen on the default VFS and pass
    ``PRAGMA integrity_check``;
(c) each holds every row as it was before the call, or as the fault-free twin
    left them (the latter if the call returned), so every job that was
    completed before the fault is still completed, unchanged;
(d) the database works: a call that failed without effect, made again on the
    reopened file or on the same ``Database``, returns what the twin's did and
    leaves the twin's rows; a send works; no connection is left open.
"""

from __future__ import annotations

import functools
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw
import attrs
import pytest
from hypothesis import event, given, note
from hypothesis import strategies as st
from tests.dbhelpers import snapshot

import litejobs
from litejobs.chaos import Fault, FaultKind, FaultyVFS, IOCounts

#: The operations issue 6 names; ``close`` (whose last connection checkpoints
#: the log into the file) is one more public call that does I/O.
OPS = ("send", "receive", "complete", "spawn_children", "cancel", "close")
PAIRS = [(op, kind) for op in OPS for kind in FaultKind]

SEEDED_AT = 1_700_000_000_000
#: When the operation runs: the seeded lease (30 s) of the running child is live.
RUN_AT = SEEDED_AT + 5_000


@attrs.frozen
class Seed:
    """The database an operation runs on."""

    completed: int  # children completed (acknowledged) before the fault
    pending: int  # children queued and not yet received
    mail: int  # plain messages queued on another queue
    pad: int  # characters of padding in every payload, body and result
    spawn: int  # children the spawn_children operation creates


seeds = st.builds(
    Seed,
    completed=st.integers(0, 3),
    pending=st.integers(1, 3),
    mail=st.integers(0, 3),
    pad=st.sampled_from([0, 700, 5000]),  # 5000 spills into overflow pages
    spawn=st.integers(1, 3),
)


@attrs.frozen
class Run:
    """How the operation is made."""

    seed: Seed
    #: The ``PRAGMA synchronous`` of the connections; in WAL mode a commit
    #: fsyncs only under FULL (or EXTRA), so fsync faults run under FULL.
    synchronous: str
    #: Whether the call is the first one on a new thread, which opens that
    #: thread's connection under the fault; else it runs on the connection
    #: that opened the database.
    new_thread: bool


@attrs.frozen
class Seeded:
    """A seeded database file and the ids an operation needs."""

    data: bytes
    parent: str
    running: str
    receipt: str


@attrs.frozen
class Twin:
    """The rows before the call, and what the call does without a fault."""

    before: dict[str, list]
    returned: Any
    after: dict[str, list]
    counts: IOCounts


@pytest.fixture(scope="module")
def vfs() -> Iterator[FaultyVFS]:
    with FaultyVFS() as faulty:
        yield faulty


# -- building and running -------------------------------------------------------


def open_db(path: Path, vfs: FaultyVFS | None, synchronous: str = "NORMAL") -> litejobs.Database:
    return litejobs.Database.open(
        path,
        vfs=None if vfs is None else vfs.name,
        clock=litejobs.VirtualClock(now=RUN_AT),
        synchronous=synchronous,
        seed=0,
    )


@functools.cache
def seeded(seed: Seed, vfs: FaultyVFS) -> Seeded:
    """Build the seed database through the (unarmed) VFS; cached, as every
    example of a seed starts from the same bytes."""
    pad = "x" * seed.pad
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "seed.db"
        db = litejobs.Database.open(
            path, vfs=vfs.name, clock=litejobs.VirtualClock(now=SEEDED_AT), seed=0
        )
        mail, work = litejobs.Queue(db, "mail"), litejobs.Queue(db, "work")
        store = litejobs.JobStore(db)
        for n in range(seed.mail):
            mail.send({"mail": n, "pad": pad})
        parent = store.create_parent("crawl", {"pad": pad})
        payloads = [{"n": n, "pad": pad} for n in range(seed.completed + 1 + seed.pending)]
        store.spawn_children(parent, "page", payloads, queue=work)
        for n in range(seed.completed + 1):
            message = work.receive(visibility_timeout=30)
            assert message is not None
            job = store.start(message.body["job_id"], message.receipt)
            if n < seed.completed:
                store.complete(job.id, message.receipt, {"done": n, "pad": pad})
        db.close()  # checkpoints: the whole state is in the main file
        assert not os.path.exists(f"{path}-wal")
        return Seeded(path.read_bytes(), parent, job.id, message.receipt)


def prepare(op: str, db: litejobs.Database, seed: Seed) -> None:
    """Set the call up, unarmed: ``close`` checkpoints only what the log holds."""
    if op == "close":
        litejobs.Queue(db, "mail").send({"sent": "before closing", "pad": "x" * seed.pad})


def operate(op: str, db: litejobs.Database, seed: Seed, built: Seeded) -> Any:
    """Make the call under test once."""
    pad = "x" * seed.pad
    work, store = litejobs.Queue(db, "work"), litejobs.JobStore(db)
    if op == "send":
        return litejobs.Queue(db, "mail").send({"sent": "during the fault", "pad": pad})
    if op == "receive":
        return work.receive(visibility_timeout=30)
    if op == "complete":
        return store.complete(built.running, built.receipt, {"result": "new", "pad": pad})
    if op == "spawn_children":
        payloads = [{"spawned": n, "pad": pad} for n in range(seed.spawn)]
        return store.spawn_children(built.parent, "page", payloads, queue=work)
    if op == "cancel":
        return store.cancel(built.parent)
    assert op == "close"
    return db.close()


def call(fn: Callable[[], Any], new_thread: bool) -> Any:
    """Run ``fn`` here or on a new thread (which ends before this returns),
    returning its result or raising its exception here."""
    if not new_thread:
        return fn()
    outcome: list = []

    def target() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as exc:
            outcome.append((False, exc))

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    ((ok, value),) = outcome
    if not ok:
        raise value
    return value


def open_connections(path: Path) -> int:
    return sum(1 for conn in apsw.connections() if conn.filename == str(path))


@functools.cache
def twin(op: str, run: Run, vfs: FaultyVFS) -> Twin:
    """Make the call fault-free on a copy of the seed, exactly as the faulty
    run will, counting its I/O; cached, as it is deterministic."""
    built = seeded(run.seed, vfs)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "twin.db"
        path.write_bytes(built.data)
        with open_db(path, vfs, run.synchronous) as db:
            prepare(op, db, run.seed)
            vfs.reset_counts()
            returned = call(lambda: operate(op, db, run.seed, built), run.new_thread)
            counts = vfs.counts()
        with open_db(path, None) as reopened:
            after = snapshot(reopened)
        # The rows before the call, from another copy: reading them from the
        # first would warm its page cache and change the reads counted.
        path = Path(tmp) / "before.db"
        path.write_bytes(built.data)
        with open_db(path, None) as db:
            prepare(op, db, run.seed)
            before = snapshot(db)
    return Twin(before, returned, after, counts)


def crash_image(source: Path, target: Path) -> None:
    """Copy a database and its log as a process killed now would leave them.

    The copy reads through SQLite's own VFS: closing a descriptor of the
    database opened any other way would drop the POSIX locks SQLite holds.
    """
    for suffix, kind in (("", apsw.SQLITE_OPEN_MAIN_DB), ("-wal", apsw.SQLITE_OPEN_WAL)):
        name = f"{source}{suffix}"
        if not os.path.exists(name):
            continue
        file = apsw.VFSFile("", name, [kind | apsw.SQLITE_OPEN_READONLY, 0])
        try:
            size = file.xFileSize()
            data = file.xRead(size, 0) if size else b""
        finally:
            file.xClose()
        Path(f"{target}{suffix}").write_bytes(data)


def integrity(db: litejobs.Database) -> str:
    return "\n".join(row[0] for row in db.connection().execute("PRAGMA integrity_check"))


def acknowledged(state: dict[str, list]) -> set[tuple]:
    """The rows of the jobs that are terminal: acknowledged, and final."""
    return {row for row in state["jobs"] if row[3] in ("completed", "failed", "cancelled")}


class Check:
    """Compares states with the seed's and the twin's, naming each in notes
    and events so a failure reads as a story."""

    def __init__(self, label: str, expected: Twin, failed: bool) -> None:
        self.label, self.expected, self.failed = label, expected, failed

    def which(self, state: dict[str, list]) -> str:
        if state == self.expected.after:
            return "after"
        return "before" if state == self.expected.before else "neither"

    def state(self, name: str, state: dict[str, list]) -> str:
        """Check one view of the database; return "before" or "after"."""
        outcome = self.which(state)
        note(f"{name}: {outcome}")
        event(f"{self.label}: {name} {outcome}")
        assert outcome != "neither", f"{name}: rows neither as before nor as after the call"
        if not self.failed:
            assert outcome == "after", f"{name}: the call returned, but its effect is gone"
        lost = acknowledged(self.expected.before) - set(state["jobs"])
        assert not lost, f"{name}: jobs acknowledged before the fault changed: {lost}"
        return outcome

    def reopened(self, name: str, path: Path) -> str:
        with open_db(path, None) as db:
            assert integrity(db) == "ok", name
            return self.state(name, snapshot(db))


# -- the property -------------------------------------------------------------------


@pytest.mark.parametrize(("op", "kind"), PAIRS, ids=[f"{op}-{k.value}" for op, k in PAIRS])
@given(data=st.data())
def test_one_disk_fault_ends_in_a_storage_error_and_loses_nothing_acknowledged(vfs, op, kind, data):
    seed = data.draw(seeds, label="seed")
    if kind is FaultKind.FSYNC_EIO:
        synchronous = "FULL"
    else:
        synchronous = data.draw(st.sampled_from(["NORMAL", "FULL"]), label="synchronous")
    new_thread = op != "close" and data.draw(st.booleans(), label="on a new thread")
    run = Run(seed, synchronous, new_thread)
    built, expected = seeded(seed, vfs), twin(op, run, vfs)
    count = expected.counts.of(kind)
    assert count > 0, f"{op} makes no {kind.method} call in {run}: this pair cannot fire"
    at = data.draw(st.integers(0, count - 1), label=f"at (of {count} {kind.method} calls)")
    keep = data.draw(st.integers(1, 4095), label="keep") if kind is FaultKind.SHORT_WRITE else None
    fault = Fault(kind, at, keep)
    carry_on = op != "close" and data.draw(st.booleans(), label="carry on without reopening")

    with tempfile.TemporaryDirectory() as tmp:
        path, crashed = Path(tmp) / "faulty.db", Path(tmp) / "crashed.db"
        path.write_bytes(built.data)
        db = open_db(path, vfs, synchronous)
        prepare(op, db, seed)
        error: litejobs.StorageError | None = None
        vfs.arm(fault)
        try:
            returned = call(lambda: operate(op, db, seed, built), new_thread)
        except litejobs.StorageError as exc:  # (a): anything else fails the test here
            error = exc
        finally:
            fired = vfs.disarm()
        note(f"{op} under {fault}: {fired}")
        assert fired is not None, f"{fault} did not fire in {op}; the twin counted {count}"
        if new_thread:  # its thread has ended: only the opening thread's connection is left
            assert open_connections(path) == 1, "a connection outlived its thread"
        label = f"{op}-{kind.value}"
        if error is None:
            note(f"{op} returned {returned!r}")
            assert returned == expected.returned
            event(f"{label}: returned")
        else:
            note(f"{op} raised {error!r}")
            cause = error.__cause__
            assert isinstance(cause, apsw.Error), "StorageError should chain the apsw error"
            code = cause.extendedresult
            name = apsw.mapping_extended_result_codes.get(code) or apsw.mapping_result_codes[code]
            event(f"{label}: StorageError ({name})")
        check = Check(label, expected, failed=error is not None)
        crash_image(path, crashed)
        check.reopened("crash image", crashed)

        if carry_on:  # (d) on the same Database, then (b) and (c) after closing it
            if check.state("same database", snapshot(db)) == "before":
                assert operate(op, db, seed, built) == expected.returned
                assert snapshot(db) == expected.after
            litejobs.Queue(db, "mail").send("after the fault")
            last = snapshot(db)
            db.close()
            with open_db(path, None) as reopened:
                assert integrity(reopened) == "ok", "clean close"
                assert snapshot(reopened) == last, "the clean close lost what the database held"
        else:  # (b) and (c) after a clean close, then (d) on the reopened file
            db.close()
            assert open_connections(path) == 0, "a connection outlived Database.close()"
            if check.reopened("clean close", path) == "before":
                with open_db(path, None) as reopened:
                    assert operate(op, reopened, seed, built) == expected.returned
                    assert snapshot(reopened) == expected.after
            with open_db(path, None) as reopened:
                litejobs.Queue(reopened, "mail").send("after the fault")
        assert open_connections(path) == 0, "a connection outlived Database.close()"
