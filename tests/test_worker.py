"""The trio worker pool, on virtual time (InlineRuntime + MockClock) except
where real threads are the point."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import apsw
import pytest
import trio
import trio.testing

import litejobs
from litejobs import JobStatus
from litejobs._runtime import TrioRuntime
from litejobs._worker import WorkerPool
from litejobs.testing import InlineRuntime


@pytest.fixture
def runtime():
    return InlineRuntime()


@pytest.fixture
def db(tmp_path, runtime):
    with litejobs.Database.open(tmp_path / "pool.db", clock=runtime.clock, seed=1) as database:
        yield database


@pytest.fixture
def queue(db):
    return litejobs.Queue(db, "jobs")


@pytest.fixture
def store(db):
    return litejobs.JobStore(db)


def virtual(main: Callable) -> None:
    """Run ``main`` on virtual time; a pool that never settles fails, not hangs."""

    async def bounded():
        with trio.fail_after(100_000):
            await main()

    trio.run(bounded, clock=trio.testing.MockClock(autojump_threshold=0))


async def until(condition: Callable[[], bool], runtime, *, limit: float = 600) -> float:
    """Wait on virtual time until ``condition()`` holds; return when it did."""
    began = trio.current_time()
    while not condition():
        assert trio.current_time() - began < limit, "condition never held"
        await runtime.sleep(0.01)
    return trio.current_time() - began


def settled(store, parent):
    return lambda: store.get(parent).status.terminal


async def echo(job, ctx):
    return {"echo": job.payload}


def make_pool(store, queue, runtime, handlers=None, **kwargs):
    return WorkerPool(store, queue, handlers or {"echo": echo}, runtime=runtime, seed=7, **kwargs)


def test_a_pool_runs_every_child_and_the_parent_completes(store, queue, runtime):
    parent = store.create_parent("batch")
    children = store.spawn_children(parent, "echo", list(range(10)), queue=queue)

    async def main():
        pool = make_pool(store, queue, runtime, concurrency=3)
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            await until(settled(store, parent), runtime)
            pool.stop()
        stats = pool.stats
        assert stats.total("completed") == stats.total("received") == 10
        assert stats.total("failed") == stats.busy_retries == 0

    virtual(main)
    assert store.get(parent).status is JobStatus.COMPLETED
    assert [store.get(c).result for c in children] == [{"echo": i} for i in range(10)]
    assert queue.stats().total == 0


def test_workers_start_staggered_and_do_not_tick_while_work_is_queued(store, queue, runtime):
    parent = store.create_parent("batch")
    store.spawn_children(parent, "echo", list(range(20)), queue=queue)

    async def main():
        pool = make_pool(store, queue, runtime, concurrency=2, poll_interval=1.0)
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            took = await until(settled(store, parent), runtime)
            await until(lambda: pool.stats.workers[1].started_at is not None, runtime)
            pool.stop()
        assert [w.started_at for w in pool.stats.workers] == [0.0, 0.5]
        # The first worker drains the queue back to back: no fixed tick.
        assert took <= 0.01
        assert pool.stats.workers[0].completed == 20

    virtual(main)


def test_an_empty_queue_backs_off_up_to_the_poll_interval(store, queue, runtime):
    async def main():
        pool = make_pool(store, queue, runtime, concurrency=1, poll_interval=2.0)
        receives = []
        real_receive = queue.receive

        def counting_receive(**kwargs):
            receives.append(trio.current_time())
            return real_receive(**kwargs)

        queue.receive = counting_receive
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            await runtime.sleep(30)
            pool.stop()
        gaps = [b - a for a, b in itertools.pairwise(receives)]
        assert gaps[0] == pytest.approx(2.0 / 16, rel=0.25)
        assert max(gaps) <= 2.0
        assert gaps[-1] >= 2.0 * 0.8
        assert pool.stats.workers[0].idle_s == pytest.approx(30, abs=2.5)

    virtual(main)


def test_a_failing_handler_is_retried_then_failed_and_the_pool_keeps_going(store, queue, runtime):
    parent = store.create_parent("batch")
    store.spawn_children(parent, "flaky", [1], queue=queue)
    store.spawn_children(parent, "echo", [2, 3], queue=queue)

    async def flaky(job, ctx):
        raise ValueError(f"cannot handle {job.payload}")

    async def main():
        pool = make_pool(store, queue, runtime, {"echo": echo, "flaky": flaky})
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            await until(settled(store, parent), runtime)
            pool.stop()
        assert pool.stats.total("retried") == 2
        assert pool.stats.total("failed") == 1
        assert pool.stats.total("completed") == 2

    virtual(main)
    failed = [j for j in store.children(parent) if j.status is JobStatus.FAILED]
    assert [(j.kind, j.error, j.attempts) for j in failed] == [
        ("flaky", "ValueError: cannot handle 1", 3)
    ]


def test_an_unknown_kind_fails_that_job_with_a_clear_error(store, queue, runtime):
    parent = store.create_parent("batch")
    (mystery,) = store.spawn_children(parent, "mystery", [1], queue=queue)
    store.spawn_children(parent, "echo", [2], queue=queue)

    async def main():
        pool = make_pool(store, queue, runtime)
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            await until(settled(store, parent), runtime)
            pool.stop()

    virtual(main)
    job = store.get(mystery)
    assert job.status is JobStatus.FAILED
    assert job.error == "no handler for job kind 'mystery' (registered: echo)"
    assert store.child_stats(parent) == litejobs.ChildStats(completed=1, failed=1)


def test_a_handler_that_outlives_its_lease_keeps_it_through_the_heartbeat(store, queue, runtime):
    parent = store.create_parent("batch")
    (slow,) = store.spawn_children(parent, "slow", [1], queue=queue)

    async def take_long(job, ctx):
        await runtime.sleep(35)  # seven visibility timeouts
        return "done"

    async def main():
        pool = make_pool(
            store, queue, runtime, {"slow": take_long}, concurrency=3, visibility_timeout=5
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            await until(settled(store, parent), runtime)
            pool.stop()
        assert pool.stats.total("received") == 1
        assert pool.stats.total("lost_leases") == 0

    virtual(main)
    job = store.get(slow)
    assert (job.status, job.attempts, job.result) == (JobStatus.COMPLETED, 1, "done")


def test_without_a_heartbeat_the_lease_would_have_run_out(store, queue, runtime):
    """The control for the test above: the same handler, heartbeats so rare
    that the lease expires, is received again by another worker."""
    parent = store.create_parent("batch")
    store.spawn_children(parent, "slow", [1], queue=queue)

    async def take_long(job, ctx):
        await runtime.sleep(12)
        return "done"

    async def main():
        pool = make_pool(
            store,
            queue,
            runtime,
            {"slow": take_long},
            concurrency=2,
            visibility_timeout=5,
            heartbeat=4.99,
        )
        pool.heartbeat = math.inf  # never renew
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            await until(settled(store, parent), runtime)
            pool.stop()
        assert pool.stats.total("received") >= 2
        assert pool.stats.total("lost_leases") >= 1

    virtual(main)


def test_graceful_stop_lets_in_flight_jobs_finish(store, queue, runtime):
    parent = store.create_parent("batch")
    store.spawn_children(parent, "gate", [1, 2], queue=queue)
    started = []

    async def gate(job, ctx):
        started.append(job.id)
        await runtime.sleep(3)
        return "finished"

    async def main():
        pool = make_pool(store, queue, runtime, {"gate": gate}, concurrency=2, stagger=0)
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            await until(lambda: len(started) == 2, runtime)
            pool.stop()
        # run() returned only after both handlers finished and were recorded.
        assert pool.stats.total("completed") == 2

    virtual(main)
    assert store.get(parent).status is JobStatus.COMPLETED


def test_release_gives_in_flight_jobs_back_to_the_queue(store, queue, runtime):
    parent = store.create_parent("batch")
    children = store.spawn_children(parent, "gate", [1, 2], queue=queue)
    started = []

    async def forever(job, ctx):
        started.append(job.id)
        await trio.sleep_forever()

    async def main():
        pool = make_pool(store, queue, runtime, {"gate": forever}, concurrency=2, stagger=0)
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            await until(lambda: len(started) == 2, runtime)
            pool.release()
        assert pool.stats.total("released") == 2

    virtual(main)
    assert queue.stats().visible == 2
    assert {j.status for j in store.children(parent)} == {JobStatus.PENDING}
    # Nothing lost: another pool picks them up.

    async def again():
        pool = make_pool(store, queue, runtime, {"gate": echo})
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            await until(settled(store, parent), runtime)
            pool.stop()

    virtual(again)
    assert [store.get(c).status for c in children] == [JobStatus.COMPLETED] * 2


def test_a_message_that_is_not_a_job_is_given_back_untouched(db, store, queue, runtime):
    queue.send({"not": "a job"})

    async def main():
        pool = make_pool(store, queue, runtime, concurrency=1)
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            await runtime.sleep(200)
            pool.stop()
        assert pool.stats.total("skipped") == 3

    virtual(main)
    (dead,) = queue.dead_letters()
    assert dead.body == {"not": "a job"}


def test_handlers_can_spawn_more_children_under_the_root(store, queue, runtime):
    parent = store.create_parent("tree")
    store.spawn_children(parent, "grow", [2], queue=queue)

    async def grow(job, ctx):
        if job.payload:
            await ctx.spawn("grow", [job.payload - 1, job.payload - 1])
        return job.payload

    async def main():
        pool = make_pool(store, queue, runtime, {"grow": grow}, concurrency=2)
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            await until(settled(store, parent), runtime)
            pool.stop()

    virtual(main)
    assert store.child_stats(parent) == litejobs.ChildStats(completed=7)
    assert {j.parent_id for j in store.children(parent)} == {parent}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"concurrency": 0},
        {"poll_interval": 0},
        {"visibility_timeout": -1},
        {"stagger": -1},
        {"visibility_timeout": 5, "heartbeat": 5},
    ],
)
def test_bad_pool_settings_are_config_errors(store, queue, kwargs):
    with pytest.raises(litejobs.ConfigError):
        WorkerPool(store, queue, {}, **kwargs)


def test_a_cancelled_worker_leaves_no_transaction_open(tmp_path):
    """Real threads: cancel the pool while a worker waits on a lock that
    another connection holds; the worker's call ends its transaction first."""
    path = tmp_path / "cancel.db"
    db = litejobs.Database.open(path, busy_timeout=0.05)
    store, queue = litejobs.JobStore(db), litejobs.Queue(db, "jobs")
    parent = store.create_parent("batch")
    store.spawn_children(parent, "echo", [1, 2, 3], queue=queue)
    intruder = apsw.Connection(str(path))

    async def main():
        pool = WorkerPool(
            store, queue, {"echo": echo}, runtime=TrioRuntime(), concurrency=2, stagger=0
        )
        intruder.execute("BEGIN IMMEDIATE")
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            await trio.testing.wait_all_tasks_blocked()
            pool.cancel()

    trio.run(main)
    with db._lock:
        connections = [slot.conn for slot in db._slots]
    assert connections, "the workers never reached the database"
    assert all(conn.get_autocommit() for conn in connections)
    intruder.execute("ROLLBACK")
    check = apsw.Connection(str(path))
    check.set_busy_timeout(0)
    check.execute("BEGIN IMMEDIATE")  # nobody else holds the write lock
    check.execute("ROLLBACK")
    db.close()


def test_a_release_landing_while_a_job_is_being_received_never_runs_its_handler(
    store, queue, runtime
):
    parent = store.create_parent("batch")
    (child,) = store.spawn_children(parent, "echo", [1], queue=queue)
    ran = []

    async def handler(job, ctx):
        ran.append(job.id)

    pool = make_pool(store, queue, runtime, {"echo": handler}, concurrency=1)
    receive = queue.receive

    def receive_then_release(**kwargs):
        message = receive(**kwargs)
        pool.release()  # as if release() ran while the receive was in flight
        return message

    queue.receive = receive_then_release

    async def main():
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)

    virtual(main)
    assert ran == []
    assert pool.stats.total("released") == 1
    assert store.get(child).status is JobStatus.PENDING
    assert queue.stats().visible == 1


def test_an_outcome_is_recorded_even_when_the_pool_is_cancelled_meanwhile(store, queue, runtime):
    parent = store.create_parent("batch")
    (child,) = store.spawn_children(parent, "last", [1], queue=queue)
    pool = None

    async def last_words(job, ctx):
        pool.cancel()  # hard cancel lands as the handler returns
        return "recorded"

    async def main():
        nonlocal pool
        pool = make_pool(store, queue, runtime, {"last": last_words}, concurrency=1)
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)

    virtual(main)
    assert store.get(child).result == "recorded"
    assert store.get(parent).status is JobStatus.COMPLETED


def test_a_lost_lease_cancels_the_handler(store, queue, runtime, db):
    parent = store.create_parent("batch")
    (child,) = store.spawn_children(parent, "slow", [1], queue=queue)
    outcomes = []

    async def slow(job, ctx):
        try:
            await runtime.sleep(60)
        except trio.Cancelled:
            outcomes.append("cancelled")
            raise
        outcomes.append("finished")
        return "done"

    async def main():
        pool = make_pool(
            store, queue, runtime, {"slow": slow}, concurrency=1, visibility_timeout=5, heartbeat=2
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            await runtime.sleep(1)
            # Someone takes the job over: expire its lease and receive it.
            db.connection().execute("UPDATE messages SET timeout = 0")
            thief = queue.receive(visibility_timeout=600)
            assert thief is not None
            await runtime.sleep(2)
            pool.stop()
        assert pool.stats.total("lost_leases") == 1

    virtual(main)
    assert outcomes == ["cancelled"]
    assert store.get(child).status is JobStatus.RUNNING  # the thief holds it


def test_a_heartbeat_that_meets_a_locked_database_keeps_the_pool_alive(store, queue, runtime):
    parent = store.create_parent("batch")
    store.spawn_children(parent, "slow", [1], queue=queue)
    extend = queue.extend
    calls = []

    def locked_once(receipt, seconds):
        calls.append(receipt)
        if len(calls) == 1:
            raise litejobs.BusyError("locked", attempts=5)
        return extend(receipt, seconds)

    queue.extend = locked_once

    async def slow(job, ctx):
        await runtime.sleep(12)
        return "done"

    async def main():
        pool = make_pool(store, queue, runtime, {"slow": slow}, concurrency=1, visibility_timeout=5)
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            await until(settled(store, parent), runtime)
            pool.stop()
        assert pool.stats.total("completed") == 1

    virtual(main)
    assert len(calls) >= 3


def test_run_db_waits_out_a_held_lock_through_the_runtime(tmp_path, runtime):
    """Real SQLITE_BUSY (busy timeout 0) from another connection, on virtual
    time: the call retries after runtime sleeps and succeeds once the lock goes."""
    path = tmp_path / "busy.db"
    db = litejobs.Database.open(path, clock=runtime.clock, busy_timeout=0, seed=2)
    queue = litejobs.Queue(db, "jobs")
    intruder = apsw.Connection(str(path))

    async def main():
        intruder.execute("BEGIN IMMEDIATE")
        async with trio.open_nursery() as nursery:

            async def let_go():
                await trio.sleep(0.25)
                intruder.execute("COMMIT")

            nursery.start_soon(let_go)
            began = trio.current_time()
            await litejobs.run_db(runtime, db, queue.send, "through")
            waited = trio.current_time() - began
        assert 0.25 <= waited < 1.0

    before = db.retry_metrics.retries
    virtual(main)
    assert db.retry_metrics.retries - before == 2  # 0.1 s, then 0.2 s, then through
    assert queue.stats().visible == 1
    db.close()
