"""The fault-injecting VFS (litejobs.chaos.FaultyVFS), and what litejobs does
on each fault it injects: a typed error, and nothing left open."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import apsw
import pytest
from tests.dbhelpers import snapshot

import litejobs
from litejobs.chaos import Fault, FaultKind, FaultyVFS, FiredFault, IOCounts

OPS = ("send", "receive", "complete", "spawn_children", "cancel")
WRITES = (FaultKind.WRITE_EIO, FaultKind.ENOSPC, FaultKind.SHORT_WRITE)


@pytest.fixture
def vfs():
    with FaultyVFS() as faulty:
        yield faulty


def open_log(vfs: FaultyVFS, directory: Path) -> apsw.VFSFile:
    """Open a write-ahead log file straight through the VFS, as SQLite would."""
    (directory / "t.db").touch()
    flags = apsw.SQLITE_OPEN_WAL | apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
    return vfs.xOpen(str(directory / "t.db-wal"), [flags, 0])


# -- the VFS on its own -----------------------------------------------------------


def test_an_unarmed_vfs_writes_a_database_the_default_vfs_reads_back_the_same(vfs, tmp_path, clock):
    path = tmp_path / "through.db"
    with litejobs.Database.open(path, vfs=vfs.name, clock=clock) as db:
        queue, store = litejobs.Queue(db, "work"), litejobs.JobStore(db)
        litejobs.Queue(db, "mail").send({"body": "x" * 5000})  # overflow pages
        parent = store.create_parent("p")
        (child,) = store.spawn_children(parent, "k", [{"n": 1}], queue=queue)
        message = queue.receive(visibility_timeout=30)
        store.complete(store.start(child, message.receipt).id, message.receipt, "done")
        written = snapshot(db)
        counts = vfs.counts()
    assert counts.reads > 0
    assert counts.writes > 0
    assert counts.syncs > 0
    with litejobs.Database.open(path, clock=clock) as db:
        assert snapshot(db) == written
        assert db.connection().execute("PRAGMA integrity_check").fetchall() == [("ok",)]


@pytest.mark.parametrize("kind", list(FaultKind), ids=lambda k: k.value)
def test_each_kind_fails_its_call_with_the_sqlite_code_it_claims(vfs, tmp_path, kind):
    path = str(tmp_path / "raw.db")
    conn = apsw.Connection(path, vfs=vfs.name)
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute("PRAGMA synchronous=FULL; CREATE TABLE t (x)").fetchall()
    conn.close()
    conn = apsw.Connection(path, vfs=vfs.name)  # a cold cache: the SELECT reads
    conn.execute("PRAGMA synchronous=FULL").fetchall()
    vfs.arm(Fault(kind, 0))
    sql = "SELECT * FROM t" if kind is FaultKind.READ_EIO else "INSERT INTO t VALUES (1)"
    expected = apsw.FullError if kind.code == apsw.SQLITE_FULL else apsw.IOError
    with pytest.raises(expected) as raised:
        conn.execute(sql).fetchall()
    assert raised.value.extendedresult == kind.code
    assert vfs.disarm() == vfs.fired
    assert vfs.fired is not None
    assert vfs.fired.fault.kind is kind
    conn.close()


def test_kinds_name_the_call_and_code_that_fail():
    assert {k.value: (k.method, k.code) for k in FaultKind} == {
        "read_eio": ("xRead", apsw.SQLITE_IOERR_READ),
        "write_eio": ("xWrite", apsw.SQLITE_IOERR_WRITE),
        "fsync_eio": ("xSync", apsw.SQLITE_IOERR_FSYNC),
        "enospc": ("xWrite", apsw.SQLITE_FULL),
        "short_write": ("xWrite", apsw.SQLITE_FULL),
    }


@pytest.mark.parametrize(("keep", "written"), [(3, b"abc"), (None, b"abcd"), (100, b"abcdefg")])
def test_a_short_write_leaves_exactly_its_prefix_on_disk(vfs, tmp_path, keep, written):
    log = open_log(vfs, tmp_path)
    vfs.arm(Fault(FaultKind.SHORT_WRITE, 0, keep=keep))
    with pytest.raises(apsw.FullError, match="injected short write"):
        log.xWrite(b"abcdefgh", 0)
    log.xClose()
    assert (tmp_path / "t.db-wal").read_bytes() == written
    assert vfs.fired == FiredFault(
        Fault(FaultKind.SHORT_WRITE, 0, keep=keep), "t.db-wal", 0, 8, len(written)
    )


def test_on_fire_is_told_of_the_fault_after_a_short_writes_prefix_is_on_disk(tmp_path):
    seen = []

    def on_fire(fired):  # a kill trial's victim SIGKILLs itself here
        seen.append((fired, (tmp_path / "t.db-wal").read_bytes()))

    with FaultyVFS(on_fire=on_fire) as vfs:
        log = open_log(vfs, tmp_path)
        vfs.arm(Fault(FaultKind.SHORT_WRITE, 1, keep=2))
        log.xWrite(b"1234", 0)
        with pytest.raises(apsw.FullError):
            log.xWrite(b"abcd", 4)
        log.xClose()
    assert seen == [
        (FiredFault(Fault(FaultKind.SHORT_WRITE, 1, keep=2), "t.db-wal", 4, 4, 2), b"1234ab")
    ]


@pytest.mark.parametrize("kind", [FaultKind.WRITE_EIO, FaultKind.ENOSPC], ids=lambda k: k.value)
def test_a_failed_write_writes_nothing(vfs, tmp_path, kind):
    log = open_log(vfs, tmp_path)
    log.xWrite(b"old!", 0)
    vfs.arm(Fault(kind, 0))
    with pytest.raises(apsw.Error):
        log.xWrite(b"new data", 0)
    log.xClose()
    assert (tmp_path / "t.db-wal").read_bytes() == b"old!"


def test_reads_writes_and_syncs_of_the_database_and_log_are_counted_and_other_files_not(
    vfs, tmp_path
):
    log = open_log(vfs, tmp_path)
    log.xWrite(b"1234", 0)
    log.xWrite(b"5678", 4)
    assert log.xRead(8, 0) == b"12345678"
    log.xSync(apsw.SQLITE_SYNC_NORMAL)
    log.xClose()
    assert vfs.counts() == IOCounts(reads=1, writes=2, syncs=1)
    flags = apsw.SQLITE_OPEN_TEMP_JOURNAL | apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
    journal = vfs.xOpen(str(tmp_path / "t.db-journal"), [flags, 0])
    journal.xWrite(b"not counted", 0)
    journal.xClose()
    assert vfs.counts() == IOCounts(reads=1, writes=2, syncs=1)
    vfs.reset_counts()
    assert vfs.counts() == IOCounts()


def test_an_armed_fault_fires_once_at_its_index_among_calls_of_its_kind(vfs, tmp_path):
    log = open_log(vfs, tmp_path)
    vfs.arm(Fault(FaultKind.WRITE_EIO, 2))
    log.xWrite(b"a", 0)
    log.xRead(1, 0)  # a read does not move a write fault on
    log.xSync(apsw.SQLITE_SYNC_NORMAL)
    log.xWrite(b"b", 1)
    assert vfs.fired is None
    assert vfs.armed == Fault(FaultKind.WRITE_EIO, 2)
    with pytest.raises(apsw.IOError, match=r"injected EIO on xWrite #2"):
        log.xWrite(b"c", 2)
    assert vfs.armed is None
    log.xWrite(b"d", 3)  # once only
    log.xClose()
    assert (tmp_path / "t.db-wal").read_bytes() == b"ab\0d"
    assert vfs.counts() == IOCounts(reads=1, writes=4, syncs=1)  # the failed one counts
    fired = vfs.disarm()
    assert fired == FiredFault(Fault(FaultKind.WRITE_EIO, 2), "t.db-wal", 2, 1)
    assert str(fired) == "write_eio: xWrite #2 on t.db-wal at offset 2, 1 bytes"


def test_arming_again_replaces_the_fault_and_forgets_the_one_that_fired(vfs, tmp_path):
    log = open_log(vfs, tmp_path)
    vfs.arm(Fault(FaultKind.FSYNC_EIO, 0))
    with pytest.raises(apsw.IOError):
        log.xSync(apsw.SQLITE_SYNC_NORMAL)
    vfs.arm(Fault(FaultKind.FSYNC_EIO, 1))
    assert vfs.fired is None
    log.xSync(apsw.SQLITE_SYNC_NORMAL)
    vfs.disarm()
    log.xSync(apsw.SQLITE_SYNC_NORMAL)  # disarmed: the second sync passes
    log.xClose()
    assert vfs.fired is None


@pytest.mark.parametrize(
    "make",
    [
        lambda: Fault("eio", 0),
        lambda: Fault(FaultKind.READ_EIO, -1),
        lambda: Fault(FaultKind.READ_EIO, True),
        lambda: Fault(FaultKind.SHORT_WRITE, 0, keep=-1),
    ],
    ids=["unknown kind", "negative index", "bool index", "negative keep"],
)
def test_a_bad_fault_is_a_config_error(make):
    with pytest.raises(litejobs.ConfigError, match=r"kind must be one of|Fault\.at|Fault\.keep"):
        make()


def test_a_kind_may_be_given_by_its_name():
    assert Fault("short_write", 1).kind is FaultKind.SHORT_WRITE


def test_arming_anything_but_a_fault_is_a_config_error(vfs):
    with pytest.raises(litejobs.ConfigError, match="arm"):
        vfs.arm(("read_eio", 0))


def test_each_vfs_has_its_own_name_and_unregisters_when_closed(tmp_path):
    with FaultyVFS() as first, FaultyVFS() as second:
        assert first.name != second.name
        assert {first.name, second.name} <= set(apsw.vfs_names())
    assert first.name not in apsw.vfs_names()
    with pytest.raises(apsw.SQLError, match="no such vfs"):
        apsw.Connection(str(tmp_path / "x.db"), vfs=first.name)
    first.close()  # twice is fine


def test_threads_sharing_the_vfs_have_every_call_counted(vfs, tmp_path):
    def writer(n: int) -> None:
        directory = tmp_path / str(n)
        directory.mkdir()
        log = open_log(vfs, directory)
        for i in range(200):
            log.xWrite(b"x", i)
        log.xClose()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert vfs.counts().writes == 800


def test_public_names_report_the_chaos_module():
    import litejobs.chaos

    for name in ("Fault", "FaultKind", "FaultyVFS", "FiredFault", "IOCounts"):
        assert name in litejobs.chaos.__all__
        assert getattr(litejobs.chaos, name).__module__ == "litejobs.chaos"


# -- litejobs on a faulty disk ------------------------------------------------------


@pytest.fixture
def seed_file(tmp_path, vfs, clock):
    """A database with a completed child, a running one (its receipt kept),
    a pending one and a plain message; closed, so all of it is in the file."""
    path = tmp_path / "seed.db"
    with litejobs.Database.open(path, vfs=vfs.name, clock=clock) as db:
        work, store = litejobs.Queue(db, "work"), litejobs.JobStore(db)
        litejobs.Queue(db, "mail").send("kept")
        parent = store.create_parent("crawl")
        store.spawn_children(parent, "page", [{"n": n} for n in range(3)], queue=work)
        done = work.receive(visibility_timeout=30)
        store.complete(store.start(done.body["job_id"], done.receipt).id, done.receipt, "ok")
        running = work.receive(visibility_timeout=30)
        job = store.start(running.body["job_id"], running.receipt)
    return path, parent, job.id, running.receipt


def run(op, db, parent, running, receipt):
    work, store = litejobs.Queue(db, "work"), litejobs.JobStore(db)
    return {
        "send": lambda: litejobs.Queue(db, "mail").send("new"),
        "receive": lambda: work.receive(visibility_timeout=30),
        "complete": lambda: store.complete(running, receipt, "new"),
        "spawn_children": lambda: store.spawn_children(parent, "page", [{"n": 9}], queue=work),
        "cancel": lambda: store.cancel(parent),
    }[op]()


@pytest.mark.parametrize("kind", list(FaultKind), ids=lambda k: k.value)
@pytest.mark.parametrize("op", OPS)
def test_every_operation_does_io_of_every_kind_and_each_first_and_last_one_fails_typed(
    vfs, seed_file, tmp_path, clock, op, kind
):
    """The coverage acceptance of issue 6: every (operation, kind) pair fires."""
    seed, *ids = seed_file
    copies = iter(range(3))

    def fresh() -> litejobs.Database:
        path = tmp_path / f"copy{next(copies)}.db"
        shutil.copy(seed, path)
        # FULL: in WAL mode under NORMAL a commit makes no fsync at all.
        return litejobs.Database.open(path, vfs=vfs.name, clock=clock, synchronous="FULL")

    with fresh() as db:
        vfs.reset_counts()
        run(op, db, *ids)
        count = vfs.counts().of(kind)
    assert count > 0, f"{op} makes no {kind.method} call: a {kind.value} fault cannot fire in it"
    for at in sorted({0, count - 1}):
        with fresh() as db:
            vfs.arm(Fault(kind, at))
            with pytest.raises(litejobs.StorageError) as raised:
                run(op, db, *ids)
            assert vfs.disarm() is not None, f"{kind.value} #{at} of {count} did not fire"
            assert raised.value.__cause__.extendedresult == kind.code
            assert db.connection().execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def first_call_on_a_new_thread(db: litejobs.Database) -> list[BaseException]:
    """Send from a new thread (which opens its connection), and return what it raised."""
    raised: list[BaseException] = []

    def send() -> None:
        try:
            litejobs.Queue(db, "mail").send("x")
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=send)
    thread.start()
    thread.join()
    return raised


def open_connections(path: Path) -> int:
    return [conn.filename for conn in apsw.connections()].count(str(path))


def test_a_first_call_that_fails_on_a_new_thread_leaves_no_connection_open(
    vfs, seed_file, tmp_path
):
    # Found by properties/test_disk_faults.py: when a read failed while a new
    # thread's connection was being set up, that connection stayed open,
    # owned by no thread, until Database.close().
    seed, measured, path = seed_file[0], tmp_path / "measured.db", tmp_path / "faulty.db"
    shutil.copy(seed, measured)
    with litejobs.Database.open(measured, vfs=vfs.name) as db:
        vfs.reset_counts()
        assert first_call_on_a_new_thread(db) == []
        reads = vfs.counts().reads
    assert reads > 1
    shutil.copy(seed, path)
    with litejobs.Database.open(path, vfs=vfs.name) as db:  # failed calls leave it as it is
        for at in range(reads):
            vfs.arm(Fault(FaultKind.READ_EIO, at))
            raised = first_call_on_a_new_thread(db)
            assert vfs.disarm() is not None
            assert [type(exc) for exc in raised] == [litejobs.StorageError]
            assert open_connections(path) == 1, f"read #{at} failed and a connection leaked"


@pytest.mark.parametrize("kind", list(FaultKind), ids=lambda k: k.value)
def test_a_failed_checkpoint_on_close_is_a_storage_error_and_everything_closes(
    vfs, seed_file, clock, kind
):
    # Found by properties/test_disk_faults.py: apsw re-raised the VFS's error
    # from Connection.close, so a raw apsw exception escaped Database.close.
    path = seed_file[0]
    db = litejobs.Database.open(path, vfs=vfs.name, clock=clock, synchronous="FULL")
    litejobs.Queue(db, "mail").send("in the log only")
    before = snapshot(db)
    opened, release = threading.Event(), threading.Event()

    def hold_a_connection() -> None:
        db.connection()
        opened.set()
        release.wait()

    holder = threading.Thread(target=hold_a_connection)
    holder.start()
    opened.wait()
    assert open_connections(path) == 2
    vfs.arm(Fault(kind, 0))
    with pytest.raises(litejobs.StorageError, match="could not checkpoint") as raised:
        db.close()
    assert vfs.disarm() is not None
    assert isinstance(raised.value.__cause__, apsw.Error)
    assert open_connections(path) == 0
    release.set()
    holder.join()
    db.close()  # closed: a second close does nothing
    with litejobs.Database.open(path, clock=clock) as reopened:
        assert snapshot(reopened) == before
