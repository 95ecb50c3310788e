"""The database layer: opening files safely, connections, transactions, retries."""

from __future__ import annotations

import math
import random
import stat
import threading

import apsw
import pytest

import litejobs
from dbhelpers import file_snapshot, open_connections, set_writable, snapshot
from litejobs._db import APPLICATION_ID, SCHEMA_VERSION, BusyAttempt, rows


def pragma(db: litejobs.Database, name: str) -> object:
    return rows(db.connection(), f"PRAGMA {name}")[0][0]


class TestOpening:
    def test_a_new_file_gets_the_schema_version_and_application_id(self, db):
        assert pragma(db, "user_version") == SCHEMA_VERSION
        assert pragma(db, "application_id") == APPLICATION_ID
        tables = {r[0] for r in rows(db.connection(), "SELECT name FROM sqlite_schema")}
        assert {"messages", "jobs", "messages_claim", "jobs_children"} <= tables

    def test_every_connection_uses_wal_foreign_keys_and_the_busy_timeout(self, db_path):
        with litejobs.Database.open(db_path, busy_timeout=1.5, synchronous="FULL") as db:
            seen = []

            def look() -> None:
                seen.append(
                    tuple(
                        pragma(db, p)
                        for p in ("journal_mode", "foreign_keys", "busy_timeout", "synchronous")
                    )
                )

            look()
            thread = threading.Thread(target=look)
            thread.start()
            thread.join()
        assert seen == [("wal", 1, 1500, 2)] * 2

    def test_synchronous_defaults_to_normal(self, db):
        assert pragma(db, "synchronous") == 1

    def test_each_thread_gets_its_own_connection(self, db):
        mine = db.connection()
        theirs = []
        thread = threading.Thread(target=lambda: theirs.append(db.connection()))
        thread.start()
        thread.join()
        assert db.connection() is mine
        assert theirs[0] is not mine

    def test_reopening_keeps_the_data(self, db_path, clock):
        with litejobs.Database.open(db_path, clock=clock) as db:
            message_id = litejobs.Queue(db).send({"kept": True})
        with litejobs.Database.open(db_path, clock=clock) as db:
            message = litejobs.Queue(db).receive(visibility_timeout=1)
        assert message is not None
        assert (message.id, message.body) == (message_id, {"kept": True})

    def test_a_new_file_is_readable_by_its_owner_only(self, db, db_path):
        assert stat.S_IMODE(db_path.stat().st_mode) == 0o600

    def test_a_file_that_is_not_sqlite_is_refused_and_left_alone(self, tmp_path):
        path = tmp_path / "notes.db"
        path.write_text("these are my notes, not a database\n" * 200)
        before = file_snapshot(path)
        with pytest.raises(litejobs.SchemaError, match="not a litejobs database"):
            litejobs.Database.open(path)
        assert file_snapshot(path) == before

    def test_another_applications_sqlite_file_is_refused_and_left_alone(self, tmp_path):
        path = tmp_path / "other.db"
        other = apsw.Connection(str(path))
        other.execute("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('mine')")
        other.close()
        before = file_snapshot(path)
        with pytest.raises(litejobs.SchemaError, match="another application"):
            litejobs.Database.open(path)
        assert file_snapshot(path) == before

    def test_a_newer_schema_is_refused_with_a_hint(self, db_path):
        with litejobs.Database.open(db_path) as db:
            rows(db.connection(), f"PRAGMA user_version={SCHEMA_VERSION + 1}")
        with pytest.raises(litejobs.SchemaError, match=r"newer than this litejobs.*upgrade"):
            litejobs.Database.open(db_path)

    def test_a_missing_directory_is_a_storage_error_that_creates_nothing(self, tmp_path):
        path = tmp_path / "missing" / "q.db"
        with pytest.raises(litejobs.StorageError, match="does not exist"):
            litejobs.Database.open(path)
        assert not path.parent.exists()

    def test_a_read_only_directory_is_a_storage_error(self, read_only_dir):
        with pytest.raises(litejobs.StorageError, match="cannot"):
            litejobs.Database.open(read_only_dir / "q.db")
        assert list(read_only_dir.iterdir()) == []

    def test_a_database_on_read_only_storage_is_refused_unchanged(self, read_only_dir):
        path = read_only_dir / "q.db"
        set_writable(read_only_dir, True)
        with litejobs.Database.open(path) as db:
            litejobs.Queue(db).send("kept")
        set_writable(read_only_dir, False)
        before = file_snapshot(path)
        with pytest.raises(litejobs.StorageError):
            litejobs.Database.open(path)
        assert file_snapshot(path) == before

    @pytest.mark.parametrize(
        ("setting", "value"),
        [("synchronous", "SOMETIMES"), ("busy_timeout", -1), ("busy_timeout", math.nan)],
    )
    def test_bad_settings_are_config_errors(self, db_path, setting, value):
        with pytest.raises(litejobs.ConfigError, match=setting):
            litejobs.Database.open(db_path, **{setting: value})
        assert not db_path.exists()

    def test_a_closed_database_says_so(self, db_path):
        db = litejobs.Database.open(db_path)
        db.close()
        db.close()
        with pytest.raises(litejobs.StorageError, match="closed"):
            litejobs.Queue(db).send(1)


class TestTransactions:
    def test_an_error_inside_a_write_rolls_everything_back(self, db, queue):
        queue.send("before")
        before = snapshot(db)

        def half_done(conn):
            rows(conn, "UPDATE messages SET body = '\"changed\"'")
            raise litejobs.NotFoundError("stop half way")

        with pytest.raises(litejobs.NotFoundError):
            db.write(half_done)
        assert snapshot(db) == before
        assert db.connection().get_autocommit()

    def test_writes_leave_no_transaction_open(self, db, queue, store):
        queue.send(1)
        message = queue.receive(visibility_timeout=5)
        queue.stats()
        queue.delete(message.receipt)
        store.create_parent("p")
        assert db.connection().get_autocommit()
        assert db.connection().txn_state() == apsw.SQLITE_TXN_NONE


class TestRetryPolicy:
    def test_defaults_are_the_seed_designs(self):
        policy = litejobs.RetryPolicy()
        assert (policy.attempts, policy.initial_delay, policy.factor) == (5, 0.1, 2.0)

    def test_delays_double_within_the_jitter(self):
        policy = litejobs.RetryPolicy(attempts=5, initial_delay=0.1, factor=2.0, jitter=0.1)
        delays = list(policy.delays(random.Random(1)))
        assert len(delays) == 4
        for delay, nominal in zip(delays, [0.1, 0.2, 0.4, 0.8], strict=True):
            assert nominal * 0.9 <= delay <= nominal * 1.1

    def test_no_jitter_gives_exact_delays(self):
        policy = litejobs.RetryPolicy(attempts=3, initial_delay=0.05, factor=3, jitter=0)
        assert list(policy.delays(random.Random())) == [0.05, 0.15000000000000002]

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"attempts": 0},
            {"attempts": 1.5},
            {"initial_delay": -1},
            {"factor": math.nan},
            {"jitter": 2},
            {"initial_delay": math.inf},
        ],
    )
    def test_bad_policies_are_config_errors(self, kwargs):
        with pytest.raises(litejobs.ConfigError, match="RetryPolicy"):
            litejobs.RetryPolicy(**kwargs)


class ReleasingClock(litejobs.VirtualClock):
    """A virtual clock whose ``n``-th retry sleep lets the lock holder go
    (commit, by default)."""

    def __init__(self, holder: apsw.Connection, release: str = "COMMIT") -> None:
        super().__init__()
        self.holder = holder
        self.release = release
        self.release_after = 0

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        if len(self.slept) == self.release_after:
            if self.release == "close":
                self.holder.close()
            else:
                self.holder.execute(self.release)


class TestContention:
    """Another connection holds BEGIN IMMEDIATE; ours must retry, never see apsw."""

    @pytest.fixture
    def holder(self, db_path):
        conn = apsw.Connection(str(db_path))
        yield conn
        if not conn.get_autocommit():
            conn.execute("ROLLBACK")
        conn.close()

    @pytest.fixture
    def clock(self, holder):
        return ReleasingClock(holder)

    @pytest.fixture
    def db(self, db_path, clock):
        with litejobs.Database.open(db_path, clock=clock, busy_timeout=0, seed=3) as db:
            yield db

    @pytest.mark.parametrize("release_after", [1, 4])
    def test_a_write_retries_until_the_lock_is_released_and_counts_it(
        self, db, holder, clock, release_after
    ):
        before = db.retry_metrics
        clock.release_after = release_after
        holder.execute("BEGIN IMMEDIATE")
        litejobs.Queue(db).send("through")
        metrics = db.retry_metrics
        assert metrics.retries - before.retries == release_after
        assert metrics.attempts[release_after + 1] == 1
        assert metrics.busy_errors == 0
        assert len(clock.slept) == release_after
        assert litejobs.Queue(db).stats().visible == 1

    def test_a_multi_statement_transaction_retries_as_a_whole(self, db, holder, clock):
        store, queue = litejobs.JobStore(db), litejobs.Queue(db)
        parent = store.create_parent("crawl")
        clock.release_after = 2
        holder.execute("BEGIN IMMEDIATE")
        children = store.spawn_children(parent, "page", [1, 2, 3], queue=queue)
        assert len(clock.slept) == 2
        assert store.child_stats(parent).pending == 3
        assert queue.stats().visible == len(children) == 3

    def test_exhausted_retries_raise_busy_error_and_write_nothing(self, db_path, holder):
        clock = litejobs.VirtualClock()
        policy = litejobs.RetryPolicy(attempts=3, initial_delay=0.1, jitter=0)
        with litejobs.Database.open(db_path, clock=clock, busy_timeout=0, retry=policy) as db:
            holder.execute("BEGIN IMMEDIATE")
            with pytest.raises(litejobs.BusyError, match="3 attempts") as raised:
                litejobs.Queue(db).send("blocked")
            assert raised.value.attempts == 3
            assert not isinstance(raised.value, apsw.Error)
            assert raised.value.__cause__ is None
            assert clock.slept == [0.1, 0.2]
            assert db.retry_metrics.busy_errors == 1
            holder.execute("ROLLBACK")
            assert litejobs.Queue(db).stats().total == 0

    def test_opening_waits_for_the_lock_like_any_write(self, db_path, holder, clock):
        litejobs.Database.open(db_path).close()
        clock.release_after = 1
        holder.execute("BEGIN IMMEDIATE")
        with litejobs.Database.open(db_path, clock=clock, busy_timeout=0) as db:
            assert db.retry_metrics.retries == 1

    @pytest.mark.parametrize("release_after", [1, 3])
    def test_setting_up_a_connection_waits_for_the_lock_and_is_counted(
        self, db_path, release_after
    ):
        litejobs.Database.open(db_path).close()
        clock = ReleasingClock(exclusive_holder(db_path), release="close")
        clock.release_after = release_after
        with litejobs.Database.open(db_path, clock=clock, busy_timeout=0) as db:
            metrics = db.retry_metrics
        assert metrics.retries == release_after
        assert metrics.attempts[release_after + 1] == 1
        assert metrics.busy_errors == 0
        assert len(clock.slept) == release_after

    def test_a_connection_that_cannot_be_set_up_is_a_busy_error_and_is_closed(self, db_path):
        litejobs.Database.open(db_path).close()
        exclusive = exclusive_holder(db_path)
        clock = litejobs.VirtualClock()
        policy = litejobs.RetryPolicy(attempts=3, initial_delay=0.1, jitter=0)
        try:
            with pytest.raises(litejobs.BusyError, match="3 attempts") as raised:
                litejobs.Database.open(db_path, clock=clock, busy_timeout=0, retry=policy)
            assert raised.value.attempts == 3
            assert clock.slept == [0.1, 0.2]
            assert open_connections(db_path) == 1  # only the holder's
        finally:
            exclusive.close()

    def test_reads_are_not_blocked_by_a_writer(self, db, holder):
        holder.execute("BEGIN IMMEDIATE")
        assert litejobs.Queue(db).stats().total == 0
        assert db.retry_metrics.retries == 0


def exclusive_holder(path) -> apsw.Connection:
    """A connection holding a WAL database in exclusive locking mode: no
    other connection can even read it, down to the PRAGMAs that set one up."""
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA locking_mode=EXCLUSIVE")
    rows(conn, "SELECT count(*) FROM sqlite_schema")
    return conn


def test_a_busy_set_up_under_attempt_once_is_a_busy_attempt_and_the_next_attempt_runs(
    db, db_path, queue, monkeypatch
):
    set_up, set_ups = litejobs.Database._set_up, []

    def busy_once(self, conn):
        set_ups.append(conn)
        if len(set_ups) == 1:
            raise apsw.BusyError("database is locked")
        set_up(self, conn)

    monkeypatch.setattr(litejobs.Database, "_set_up", busy_once)
    seen: list[object] = []

    def worker_thread() -> None:
        try:
            db.attempt_once(queue.stats)
        except BusyAttempt:
            seen.append(("busy", open_connections(db_path)))
        seen.append(db.attempt_once(queue.stats))

    thread = threading.Thread(target=worker_thread)
    thread.start()
    thread.join()
    # the first attempt's connection, never set up, was closed at once
    assert seen == [("busy", 1), litejobs.QueueStats(visible=0, delayed=0, in_flight=0, dead=0)]
    assert len(set_ups) == 2


def test_every_operation_is_counted_once_even_when_it_raises(db, queue):
    before = db.retry_metrics.operations
    queue.send("a")
    with pytest.raises(litejobs.StaleReceiptError):
        queue.delete("999:1")
    assert db.retry_metrics.operations - before == 2


class TestInterruptedTransactions:
    def test_an_interrupt_inside_a_write_rolls_back_and_frees_the_lock(self, db, queue, db_path):
        queue.send("before")
        before = snapshot(db)

        def interrupted(conn):
            rows(conn, "DELETE FROM messages")
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            db.write(interrupted)
        assert db.connection().get_autocommit()
        assert snapshot(db) == before
        with litejobs.Database.open(db_path, busy_timeout=0) as other:
            litejobs.Queue(other, "work").send("not blocked")

    def test_a_transaction_left_open_by_an_interrupt_is_rolled_back_on_next_use(
        self, db, queue, db_path
    ):
        # An interrupt landing just after BEGIN returns leaves this behind.
        db.connection().execute("BEGIN IMMEDIATE")
        rows(
            db.connection(),
            "INSERT INTO jobs (kind, status, payload, created_at) "
            "VALUES ('half', 'pending', 'null', 0)",
        )
        queue.send("after")
        assert db.connection().get_autocommit()
        assert rows(db.connection(), "SELECT count(*) FROM jobs") == [(0,)]
        with litejobs.Database.open(db_path, busy_timeout=0) as other:
            assert litejobs.Queue(other, "work").stats().visible == 1


def test_many_threads_opening_one_new_file_all_succeed(tmp_path):
    """Each opener either creates the schema or sees it whole, never half."""
    for round_no in range(10):
        path = tmp_path / f"race-{round_no}.db"
        barrier = threading.Barrier(6)
        errors: list[BaseException] = []

        def open_it(path=path, barrier=barrier, errors=errors) -> None:
            barrier.wait()
            try:
                litejobs.Database.open(path).close()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []


@pytest.mark.parametrize("path", [":memory:", "", "file:x.db?mode=memory"])
def test_in_memory_and_uri_paths_are_refused(path):
    with pytest.raises(litejobs.ConfigError, match="needs a database file"):
        litejobs.Database.open(path)


def test_a_thread_s_connection_is_closed_when_the_thread_ends(db):
    import gc

    db.connection()
    before = len(db._slots)
    seen = []
    for _ in range(5):
        thread = threading.Thread(target=lambda: seen.append(db.connection()))
        thread.start()
        thread.join()
    gc.collect()
    assert len(db._slots) == before
    assert len(seen) == 5
    for conn in seen:
        with pytest.raises(apsw.ConnectionClosedError):
            conn.execute("SELECT 1")


def test_text_apsw_cannot_decode_is_a_payload_error_even_where_a_read_forgot_the_cast(db, store):
    store.create_parent("p")
    rows(db.connection(), "UPDATE jobs SET kind = CAST(x'7bff7d' AS TEXT)")
    with pytest.raises(
        litejobs.InvalidPayloadError, match=r"holds text that is not valid UTF-8 \(byte 1\)"
    ) as raised:
        db.read(lambda conn: rows(conn, "SELECT kind FROM jobs"))
    assert not isinstance(raised.value, UnicodeError)
    assert db.connection().get_autocommit()


@pytest.mark.parametrize("where", ["between statements", "inside a statement"])
def test_close_while_another_thread_is_in_a_call_lets_it_finish_then_closes_its_connection(
    db_path, clock, where
):
    db = litejobs.Database.open(db_path, clock=clock)
    litejobs.Queue(db, "work").send("x")
    inside, release = threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def wait() -> int:
        inside.set()
        release.wait()
        return 1

    def read(conn: apsw.Connection) -> list:
        seen["conn"] = conn
        if where == "inside a statement":
            conn.create_scalar_function("wait_for_release", wait)
            return rows(conn, "SELECT count(*) FROM messages WHERE wait_for_release()")
        found = rows(conn, "SELECT count(*) FROM messages")
        wait()
        return found

    def reader() -> None:
        try:
            seen["read"] = db.read(read)
        except BaseException as exc:
            seen["read"] = exc
        for name, call in (("then", litejobs.Queue(db, "work").stats), ("conn", db.connection)):
            try:
                call()
            except litejobs.StorageError as exc:
                seen[f"{name} raised"] = exc

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    mine = db.connection()
    try:
        inside.wait()
        db.close()  # nothing failed to checkpoint: no error
        with pytest.raises(apsw.ConnectionClosedError):  # an idle connection closes now
            mine.execute("SELECT 1")
    finally:
        release.set()
        thread.join()
    assert seen["read"] == [(1,)]  # the reader's call finished as usual
    with pytest.raises(apsw.ConnectionClosedError):  # and then its connection closed
        seen["conn"].execute("SELECT 1")  # type: ignore[attr-defined]
    assert open_connections(db_path) == 0
    for name in ("then raised", "conn raised"):
        assert f"database {db_path} is closed" in str(seen[name])
