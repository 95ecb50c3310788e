"""The database layer: opening files safely, connections, transactions, retries."""

from __future__ import annotations

import math
import random
import stat
import threading

import apsw
import pytest

import litejobs
from dbhelpers import file_snapshot, set_writable, snapshot
from litejobs._db import APPLICATION_ID, SCHEMA_VERSION, rows


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
    """A virtual clock whose ``n``-th retry sleep lets the lock holder commit."""

    def __init__(self, holder: apsw.Connection) -> None:
        super().__init__()
        self.holder = holder
        self.release_after = 0

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        if len(self.slept) == self.release_after:
            self.holder.execute("COMMIT")


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

    def test_reads_are_not_blocked_by_a_writer(self, db, holder):
        holder.execute("BEGIN IMMEDIATE")
        assert litejobs.Queue(db).stats().total == 0
        assert db.retry_metrics.retries == 0


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
    before = len(db._connections)
    seen = []
    for _ in range(5):
        thread = threading.Thread(target=lambda: seen.append(db.connection()))
        thread.start()
        thread.join()
    gc.collect()
    assert len(db._connections) == before
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
