"""Hostile and broken input: each gets a typed error that names the problem,
and nothing already in the database changes."""

from __future__ import annotations

import threading

import apsw
import pytest
import trio
import trio.testing
from tests.dbhelpers import file_snapshot, snapshot

import litejobs
from litejobs._db import SCHEMA_VERSION, rows
from litejobs._worker import WorkerPool
from litejobs.testing import InlineRuntime


@pytest.fixture
def small(tmp_path, clock):
    with litejobs.Database.open(tmp_path / "small.db", clock=clock, max_payload_bytes=1024) as db:
        yield db


def seeded(db):
    """A database with something in it to lose: a parent, a running child and a message."""
    queue, store = litejobs.Queue(db, "work"), litejobs.JobStore(db)
    queue.send({"keep": "me"})
    parent = store.create_parent("p")
    (child,) = store.spawn_children(parent, "k", [{"n": 1}], queue=queue)
    return queue, store, child


# -- payloads -------------------------------------------------------------------


def test_a_payload_over_the_limit_is_refused_by_every_writer(small):
    queue, store, _ = seeded(small)
    before = snapshot(small)
    huge = "x" * 2000
    for call in (
        lambda: queue.send(huge),
        lambda: queue.send_batch(["ok", huge]),
        lambda: store.create_parent("p", huge),
        lambda: store.spawn_children(store.create_parent("q"), "k", ["ok", huge], queue=queue),
    ):
        with pytest.raises(
            litejobs.InvalidPayloadError, match=r"2002 bytes of JSON, more than the limit of 1024"
        ):
            call()
    # the parent made by the last call exists; nothing else was written
    after = snapshot(small)
    assert after["messages"] == before["messages"]
    assert len(after["jobs"]) == len(before["jobs"]) + 1


def test_a_result_over_the_limit_leaves_the_job_running_and_leased(small):
    queue, store, child = seeded(small)
    queue.receive(visibility_timeout=30)  # the plain message
    message = queue.receive(visibility_timeout=30)
    store.start(child, message.receipt)
    before = snapshot(small)
    with pytest.raises(litejobs.InvalidPayloadError, match="job result is 2002 bytes"):
        store.complete(child, message.receipt, "x" * 2000)
    assert snapshot(small) == before
    assert store.complete(child, message.receipt, "ok").status is litejobs.JobStatus.COMPLETED


def test_the_default_limit_is_one_mebibyte(db, queue):
    queue.send("x" * (1024 * 1024 - 2))  # 1 MiB of JSON with its quotes
    with pytest.raises(litejobs.InvalidPayloadError, match="1048577 bytes"):
        queue.send("x" * (1024 * 1024 - 1))


@pytest.mark.parametrize("limit", [0, 63, -1, 1.5, True, None])
def test_a_bad_limit_is_a_config_error(tmp_path, limit):
    with pytest.raises(litejobs.ConfigError, match="max_payload_bytes"):
        litejobs.Database.open(tmp_path / "x.db", max_payload_bytes=limit)


def nested(depth):
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def test_deeply_nested_payloads_are_refused_and_moderate_ones_round_trip(db, queue):
    before = snapshot(db)
    with pytest.raises(litejobs.InvalidPayloadError, match="not JSON-serialisable"):
        queue.send(nested(100_000))
    assert snapshot(db) == before
    queue.send(nested(200))
    assert queue.receive(visibility_timeout=1).body == nested(200)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ("lone \ud800 surrogate", "not valid UTF-8 text: surrogates not allowed at character 6"),
        (b"\xff\xfe", "not JSON-serialisable"),
        ({1, 2}, "not JSON-serialisable"),
        (float("nan"), "not JSON-serialisable"),
        (object(), "not JSON-serialisable"),
        ({"key": {"nested": [1, {2, 3}]}}, "not JSON-serialisable"),
    ],
)
def test_bodies_that_are_not_json_or_not_unicode_are_refused(db, queue, body, why):
    queue.send("keep")
    before = snapshot(db)
    with pytest.raises(litejobs.InvalidPayloadError, match=why):
        queue.send(body)
    assert snapshot(db) == before


def test_an_error_message_that_is_not_unicode_is_kept_escaped(db):
    queue, store, child = seeded(db)
    queue.receive(visibility_timeout=30)
    message = queue.receive(visibility_timeout=30)
    store.start(child, message.receipt)
    store.fail(child, message.receipt, "bad \ud800 byte", retry=False)
    assert store.get(child).error == "bad \\ud800 byte"


def test_invalid_json_written_from_outside_is_a_payload_error_on_read(db, queue):
    queue.send("fine")
    db.connection().execute("UPDATE messages SET body = '{\"open\": ['")
    with pytest.raises(litejobs.InvalidPayloadError, match="holds invalid JSON"):
        queue.receive(visibility_timeout=1)


# Rows written from outside: another tool, a bug, a bad disk. Each is refused
# with InvalidPayloadError, and none may block the queue or stop a pool.
NOT_UTF8 = "CAST(x'7bff7d' AS TEXT)"  # '{', a byte no UTF-8 text holds, '}'
NOT_JSON = "'{\"open\": ['"
# Valid UTF-8 JSON whose escape decodes to a lone surrogate: a job id no
# statement can bind, were it let through.
NOT_UNICODE = """'{"job_id": "\\ud800"}'"""
BAD_NAMES = {NOT_UTF8: "not-utf8", NOT_JSON: "not-json", NOT_UNICODE: "not-unicode"}
#: Each unreadable body, and what its error says.
UNREADABLE_BODIES = [
    pytest.param(bad, why, id=BAD_NAMES[bad])
    for bad, why in [
        (NOT_UTF8, "not valid UTF-8"),
        (NOT_JSON, "invalid JSON"),
        (NOT_UNICODE, "not valid Unicode"),
    ]
]


@pytest.mark.parametrize(("bad", "why"), UNREADABLE_BODIES)
def test_an_unreadable_body_keeps_its_claim_and_reaches_the_dead_letters(
    db, queue, clock, bad, why
):
    first = queue.send("poison")
    queue.send("fine")
    rows(db.connection(), f"UPDATE messages SET body = {bad} WHERE id = ?", (first,))
    for receive in range(1, queue.max_receive + 1):
        with pytest.raises(litejobs.InvalidPayloadError, match=f"message {first} holds .*{why}"):
            queue.receive(visibility_timeout=1)
        if receive == 1:  # the claim stands: the message behind it is not blocked
            queue.delete(queue.receive(visibility_timeout=1).receipt)
        received = rows(db.connection(), "SELECT received FROM messages WHERE id = ?", (first,))
        assert received == [(receive,)]
        clock.advance(1)
    queue.send("after")
    assert queue.receive(visibility_timeout=1).body == "after"
    assert queue.stats().dead == 1


def received(db, *ids):
    """How many times each message was received, in the order given."""
    conn = db.connection()
    return [rows(conn, "SELECT received FROM messages WHERE id = ?", (i,))[0][0] for i in ids]


@pytest.mark.parametrize(("bad", "why"), UNREADABLE_BODIES)
def test_a_batch_with_an_unreadable_body_gives_the_rest_back_unspent(db, queue, clock, bad, why):
    first, poisoned, last = queue.send_batch(["a", "b", "c"])
    rows(db.connection(), f"UPDATE messages SET body = {bad} WHERE id = ?", (poisoned,))
    for receive in range(1, queue.max_receive + 1):
        with pytest.raises(
            litejobs.InvalidPayloadError,
            match=rf"^message {poisoned} holds .*{why}.* \(receive {receive}\): .*dead letters"
            rf".*; the rest of the batch \({first}, {last}\) was given back unseen",
        ):
            queue.receive_batch(3, visibility_timeout=1)
        # the unreadable message keeps its claim; the others are visible, unspent
        assert received(db, first, poisoned, last) == [0, receive, 0]
        assert queue.stats() == litejobs.QueueStats(visible=2, delayed=0, in_flight=1, dead=0)
        clock.advance(1)
    # the poisoned message is dead now; the good ones never were
    got = queue.receive_batch(3, visibility_timeout=1)
    assert [(m.id, m.body, m.receive_count) for m in got] == [(first, "a", 1), (last, "c", 1)]
    dead = rows(db.connection(), "SELECT id FROM messages WHERE dead_at IS NOT NULL")
    assert dead == [(int(poisoned),)]
    assert [(d.id, type(d.body)) for d in queue.dead_letters()] == [(poisoned, bytes)]


def test_before_the_rest_of_a_batch_is_read_again_the_next_batch_returns_exactly_it(db, queue):
    first, poisoned, last = queue.send_batch(["a", "b", "c"])
    rows(db.connection(), f"UPDATE messages SET body = {NOT_UTF8} WHERE id = ?", (poisoned,))
    with pytest.raises(litejobs.InvalidPayloadError, match=f"message {poisoned} holds"):
        queue.receive_batch(3, visibility_timeout=30)
    got = queue.receive_batch(3, visibility_timeout=30)
    assert [(m.id, m.receive_count) for m in got] == [(first, 1), (last, 1)]
    for message in got:
        queue.delete(message.receipt)
    assert queue.stats() == litejobs.QueueStats(visible=0, delayed=0, in_flight=1, dead=0)


def test_a_zero_lease_batch_on_its_last_receive_still_gives_the_rest_back(db):
    queue = litejobs.Queue(db, "once", max_receive=1)
    first, poisoned = queue.send_batch(["a", "b"])
    rows(db.connection(), f"UPDATE messages SET body = {NOT_UTF8} WHERE id = ?", (poisoned,))
    with pytest.raises(litejobs.InvalidPayloadError, match="given back unseen"):
        queue.receive_batch(2, visibility_timeout=0)
    assert received(db, first, poisoned) == [0, 1]
    assert queue.stats().visible == 1  # the poisoned one is dead at once
    assert [m.id for m in queue.receive_batch(2, visibility_timeout=0)] == [first]


def test_a_batch_of_unreadable_bodies_only_names_them_all(db, queue):
    ids = queue.send_batch(["a", "b"])
    rows(db.connection(), f"UPDATE messages SET body = {NOT_UTF8}")
    with pytest.raises(litejobs.InvalidPayloadError) as raised:
        queue.receive_batch(2, visibility_timeout=1)
    assert f"message {ids[0]} holds" in str(raised.value)
    assert f"message {ids[1]} holds" in str(raised.value)
    assert "given back" not in str(raised.value)
    assert received(db, *ids) == [1, 1]


def test_unreadable_dead_letters_are_listed_as_their_bytes_and_can_be_redriven(db, queue):
    good, not_utf8, not_json = queue.send_batch(["good", "x", "y"])
    for message_id, bad in ((not_utf8, NOT_UTF8), (not_json, NOT_JSON)):
        rows(db.connection(), f"UPDATE messages SET body = {bad} WHERE id = ?", (message_id,))
    rows(db.connection(), "UPDATE messages SET received = max_receive")  # all used up
    assert [(d.id, d.body) for d in queue.dead_letters()] == [
        (good, "good"),
        (not_utf8, b"{\xff}"),
        (not_json, b'{"open": ['),
    ]
    assert queue.redrive([not_utf8, not_json]) == 2
    assert [d.id for d in queue.dead_letters()] == [good]
    assert queue.stats() == litejobs.QueueStats(visible=2, delayed=0, in_flight=0, dead=1)
    assert received(db, not_utf8, not_json) == [0, 0]


def test_an_unreadable_payload_is_a_payload_error_that_changes_nothing(db):
    queue, store, child = seeded(db)
    rows(db.connection(), f"UPDATE jobs SET payload = {NOT_UTF8} WHERE id = ?", (child,))
    queue.receive(visibility_timeout=30)  # the plain message
    message = queue.receive(visibility_timeout=30)
    before = snapshot(db)
    with pytest.raises(litejobs.InvalidPayloadError, match="not valid UTF-8"):
        store.start(child, message.receipt)
    assert snapshot(db) == before


@pytest.mark.parametrize("column", ["kind", "error", "warning"])
def test_a_job_column_that_is_not_utf8_is_a_payload_error_naming_it_that_changes_nothing(
    db, column
):
    queue, store, child = seeded(db)
    parent = store.get(child).parent_id
    rows(db.connection(), f"UPDATE jobs SET {column} = {NOT_UTF8} WHERE id = ?", (child,))
    queue.receive(visibility_timeout=30)  # the plain message
    message = queue.receive(visibility_timeout=30)
    before = snapshot(db)
    why = rf"^{column} of job {child} holds text that is not valid UTF-8 \(byte 1\)$"
    for call in (
        lambda: store.get(child),
        lambda: store.children(parent),
        lambda: store.start(child, message.receipt),
    ):
        with pytest.raises(litejobs.InvalidPayloadError, match=why):
            call()
    assert snapshot(db) == before
    assert store.child_stats(parent) == litejobs.ChildStats(pending=1)  # the parent is readable


def test_a_queue_name_that_is_not_utf8_is_a_payload_error_when_a_receipt_is_refused(db, queue):
    queue.send("x")
    message = queue.receive(visibility_timeout=30)
    rows(db.connection(), f"UPDATE messages SET queue = {NOT_UTF8} WHERE id = ?", (message.id,))
    before = snapshot(db)
    with pytest.raises(
        litejobs.InvalidPayloadError,
        match=f"queue of message {message.id} holds text that is not valid UTF-8",
    ):
        queue.delete(message.receipt)
    assert snapshot(db) == before


@pytest.mark.parametrize(
    ("column", "bad"),
    [
        ("body", NOT_UTF8),
        ("body", NOT_JSON),
        ("payload", NOT_UTF8),
        ("body", NOT_UNICODE),
        ("payload", NOT_JSON),
        ("payload", NOT_UNICODE),
        ("kind", NOT_UTF8),
        ("error", NOT_UTF8),
        ("warning", NOT_UTF8),
    ],
    ids=lambda v: BAD_NAMES.get(v, v),
)
def test_one_unreadable_row_does_not_stop_a_pool(tmp_path, column, bad):
    runtime = InlineRuntime()
    with litejobs.Database.open(tmp_path / "p.db", clock=runtime.clock) as db:
        queue, store = litejobs.Queue(db, "jobs"), litejobs.JobStore(db)
        parent = store.create_parent("batch")
        poisoned, *rest = store.spawn_children(parent, "echo", [1, 2, 3], queue=queue)
        message_id = store.get(poisoned).message_id
        table, row = ("messages", message_id) if column == "body" else ("jobs", poisoned)
        rows(db.connection(), f"UPDATE {table} SET {column} = {bad} WHERE id = ?", (row,))

        async def echo(job, ctx):
            return job.payload

        async def main():
            pool = WorkerPool(store, queue, {"echo": echo}, runtime=runtime, visibility_timeout=5)
            async with trio.open_nursery() as nursery:
                await nursery.start(pool.run)
                while not store.get(parent).status.terminal:
                    await runtime.sleep(1)
                pool.stop()
            return pool.stats

        stats = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        assert stats.total("unreadable") == queue.max_receive
        assert [store.get(job).status for job in rest] == [litejobs.JobStatus.COMPLETED] * 2
        # The poisoned job never started: dead-lettering failed it.
        assert rows(
            db.connection(), "SELECT status, error, attempts FROM jobs WHERE id = ?", (poisoned,)
        ) == [("failed", f"message {message_id} was dead-lettered after 3 receives", 0)]
        assert queue.stats().total == 0
        if column in ("body", "error"):  # the failure replaced the bad error
            assert store.get(poisoned).status is litejobs.JobStatus.FAILED
        else:  # the bad column stays as it was written, and still says so
            with pytest.raises(litejobs.InvalidPayloadError, match=f"^{column} of job {poisoned}"):
                store.get(poisoned)


@pytest.mark.parametrize("outcome", ["raises", "returns"])
def test_a_row_made_unreadable_while_its_handler_runs_does_not_stop_a_pool(tmp_path, outcome):
    # Recording the outcome reads the row back: it is unreadable then.
    runtime = InlineRuntime()
    with litejobs.Database.open(tmp_path / "p.db", clock=runtime.clock) as db:
        queue, store = litejobs.Queue(db, "jobs"), litejobs.JobStore(db)
        parent = store.create_parent("batch")
        poisoned, *rest = store.spawn_children(parent, "echo", [1, 2, 3], queue=queue)

        async def echo(job, ctx):
            if job.id == poisoned:
                rows(db.connection(), f"UPDATE jobs SET kind = {NOT_UTF8} WHERE id = ?", (job.id,))
                if outcome == "raises":
                    raise RuntimeError("the handler failed")
            return job.payload

        async def main():
            pool = WorkerPool(store, queue, {"echo": echo}, runtime=runtime, visibility_timeout=5)
            async with trio.open_nursery() as nursery:
                await nursery.start(pool.run)
                while any(not store.get(job).status.terminal for job in rest):
                    await runtime.sleep(1)
                await runtime.sleep(20)  # the poisoned job's lease runs out meanwhile
                pool.stop()
            return pool.stats

        stats = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        assert [store.get(job).status for job in rest] == [litejobs.JobStatus.COMPLETED] * 2
        assert stats.total("unreadable") >= 2  # its outcome, then its start when redelivered
        assert stats.total("completed") == 2


# -- text that is not valid Unicode ---------------------------------------------------


def test_a_lone_surrogate_in_a_name_kind_or_key_is_a_config_error_that_changes_nothing(db):
    queue, store, child = seeded(db)
    parent = store.get(child).parent_id
    bad_queue = litejobs.Queue(db, "q\ud800")
    before = snapshot(db)
    for call in (
        lambda: bad_queue.send(1),
        lambda: bad_queue.send_batch([1, 2]),
        lambda: bad_queue.receive(visibility_timeout=1),
        lambda: bad_queue.receive_batch(2, visibility_timeout=1),
        lambda: bad_queue.stats(),
        lambda: store.create_parent("k\ud800"),
        lambda: store.spawn_children(parent, "k\ud800", [1], queue=queue),
        lambda: store.spawn_children(parent, "k", [1, 2], queue=queue, keys=["a", "\ud800"]),
        lambda: store.get("\ud800"),
    ):
        with pytest.raises(
            litejobs.ConfigError,
            match=r"^text passed to litejobs must be valid Unicode: surrogates not allowed at "
            r"character \d+ of '.*\\ud800'; nothing was written$",
        ) as raised:
            call()
        assert not isinstance(raised.value, UnicodeError)
    assert snapshot(db) == before
    assert db.connection().get_autocommit()


# -- SQL metacharacters -----------------------------------------------------------

HOSTILE = [
    "x'; DROP TABLE messages; --",
    '"; DELETE FROM jobs; --',
    "1 OR 1=1",
    "%",
    "_",
    "\\",
    "' OR ''='",
]


def test_hostile_names_and_ids_are_only_ever_bound_never_spliced_into_sql(db):
    """Every statement litejobs runs is recorded: the hostile strings show up
    in bindings only, never in SQL text, and they change nothing they name."""
    queue, store, child = seeded(db)
    statements: list[str] = []
    conn = db.connection()
    conn.exec_trace = lambda cursor, sql, bindings: statements.append(sql) or True
    for text in HOSTILE:
        hostile = litejobs.Queue(db, text)
        message_id = hostile.send({"from": text})
        assert hostile.stats().visible == 1
        got = hostile.receive(visibility_timeout=5)
        assert (got.id, got.body) == (message_id, {"from": text})
        hostile.delete(got.receipt)
        assert hostile.stats().total == 0
        for call, arg in (
            (store.get, text),
            (store.cancel, text),
            (store.children, text),
            (litejobs.Queue(db, "work").redrive, [text]),
        ):
            with pytest.raises(litejobs.NotFoundError):
                call(arg)
        with pytest.raises(litejobs.ConfigError, match="is not a litejobs receipt"):
            queue.delete(f"1:1 {text}")
    conn.exec_trace = None
    assert statements
    for text in HOSTILE:
        assert not [sql for sql in statements if text in sql and text not in ("%", "_", "\\")]
    # the other queue and the jobs are untouched
    assert queue.stats().visible == 2
    assert store.get(child).status is litejobs.JobStatus.PENDING


# -- files ------------------------------------------------------------------------


def data_files(path):
    """The database and its WAL (the -shm index changes on every read)."""
    return {k: v for k, v in file_snapshot(path).items() if not k.endswith("-shm")}


def test_a_truncated_file_is_a_storage_error_and_is_left_alone(tmp_path, clock):
    path = tmp_path / "t.db"
    with litejobs.Database.open(path, clock=clock) as db:
        queue = litejobs.Queue(db, "work")
        queue.send_batch(["x" * 500] * 200)
    size = path.stat().st_size
    assert size > 8192
    with path.open("r+b") as f:
        f.truncate(size // 2)
    before = file_snapshot(path)
    with (
        pytest.raises(litejobs.StorageError, match=r"cannot use database .*(malformed|corrupt)"),
        litejobs.Database.open(path, clock=clock) as db,
    ):
        litejobs.Queue(db, "work").stats()
    assert file_snapshot(path) == before


def test_an_older_litejobs_stops_using_a_file_a_newer_one_upgraded(db_path, clock):
    with litejobs.Database.open(db_path, clock=clock) as old:
        queue = litejobs.Queue(old, "work")
        queue.send("before the upgrade")
        upgrader = apsw.Connection(str(db_path))
        upgrader.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
        upgrader.close()
        before = data_files(db_path)
        errors = []

        def another_thread():
            try:
                queue.send("after the upgrade")
            except litejobs.SchemaError as exc:
                errors.append(exc)

        worker = threading.Thread(target=another_thread)
        worker.start()
        worker.join()
        assert "newer litejobs upgraded it" in str(errors[0])
        assert data_files(db_path) == before
    with pytest.raises(litejobs.SchemaError, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        litejobs.Database.open(db_path, clock=clock)
