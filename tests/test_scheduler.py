"""The scheduler: the runtime seam bound to one-task-at-a-time decisions on
virtual time, with real WorkerPool code and a real database file."""

from __future__ import annotations

import itertools

import pytest
import trio

from litejobs import Database, JobStore, Queue, WorkerPool
from litejobs.testing import (
    DeadlockError,
    FairChooser,
    RandomChooser,
    ReplayChooser,
    ReplayDivergedError,
    Scheduler,
)


@pytest.fixture
def scheduler():
    scheduler = Scheduler()
    yield scheduler
    scheduler.close()


@pytest.fixture
def db(tmp_path, scheduler):
    with Database.open(tmp_path / "s.db", clock=scheduler.clock, busy_timeout=0, seed=0) as db:
        scheduler.watch(db)
        yield db


def pool(db, scheduler, handlers=None, seed=0):
    return WorkerPool(
        JobStore(db),
        Queue(db, "jobs"),
        handlers or {},
        runtime=scheduler,
        concurrency=1,
        stagger=0,
        visibility_timeout=10,
        seed=seed,
    )


def test_a_worker_whose_lease_ran_out_survives_a_stale_nack(db, scheduler):
    """Found by the interleaving machine: a worker giving back a message that
    is not a job, after its lease ran out and another worker took it, died of
    StaleReceiptError."""
    Queue(db, "jobs").send({"not": "a job"})
    w0, w1 = pool(db, scheduler, seed=1), pool(db, scheduler, seed=2)

    async def main():
        async with scheduler.tasks() as nursery:
            await scheduler.spawn(nursery, "w0", w0.run)
            await scheduler.spawn(nursery, "w1", w1.run)
            await scheduler.run_decisions(1, ReplayChooser(["w0"]))  # w0 receives
            scheduler.advance(11)  # w0's lease runs out
            await scheduler.run_decisions(3, ReplayChooser(["w1", "w0", "w0"]))
            assert not scheduler.errors
            assert w0.stats.total("lost_leases") == 1

    trio.run(main)


def test_a_worker_blocked_on_a_lock_held_by_a_parked_task_is_reported_not_hung(tmp_path):
    """With a busy timeout, a connection would wait inside SQLite for a lock
    whose holder cannot run until it returns: the scheduler says so."""
    scheduler = Scheduler()
    db = Database.open(tmp_path / "d.db", clock=scheduler.clock, busy_timeout=5.0, seed=0)
    scheduler.watch(db)
    Queue(db, "jobs").send({"not": "a job"})
    worker = pool(db, scheduler)

    async def holder():
        def begin() -> None:
            db.connection().execute("BEGIN IMMEDIATE")  # and keep it, across the sleep

        await scheduler.run(begin)
        await scheduler.sleep(60)

    async def main():
        async with scheduler.tasks() as nursery:
            await scheduler.spawn(nursery, "holder", holder)
            await scheduler.spawn(nursery, "w0", worker.run)
            with pytest.raises(DeadlockError) as caught:
                await scheduler.run_decisions(3, ReplayChooser(["holder", "w0"]))
        return caught.value

    try:
        error = trio.run(main)
    finally:
        scheduler.close()
        db.close()
    assert "task w0 is waiting in SQLite's busy handler" in str(error)
    decided = [(s.task, s.outcome) for s in error.trace if s.decision]
    assert decided == [("holder", "-> None"), ("w0", "blocked")]  # the schedule so far
    assert "receive(visibility_timeout=10.0)" in str(error)


def test_a_task_blocked_on_an_event_nobody_can_set_is_a_deadlock(scheduler):
    never = trio.Event()

    async def waiter():
        await scheduler.sleep(1)
        await never.wait()

    async def main():
        async with scheduler.tasks() as nursery:
            await scheduler.spawn(nursery, "waiter", waiter)
            with pytest.raises(DeadlockError, match="waiter cannot proceed"):
                await scheduler.run_decisions(5, FairChooser())
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_time_moves_only_when_no_task_can_proceed_and_then_to_the_earliest_wake(scheduler):
    woke = []

    async def sleeper(name, seconds):
        await scheduler.sleep(seconds)
        woke.append((name, scheduler.now_ms() - scheduler.start_ms))

    async def main():
        async with scheduler.tasks() as nursery:
            await scheduler.spawn(nursery, "a", sleeper, "a", 2.0)
            await scheduler.spawn(nursery, "b", sleeper, "b", 0.5)
            assert scheduler.options() == []  # both asleep: nothing ready yet
            assert await scheduler.run_decisions(10, FairChooser()) == 2

    trio.run(main)
    assert woke == [("b", 500), ("a", 2000)]


def test_a_task_parked_in_a_database_call_finishes_it_before_seeing_a_cancel(scheduler):
    """As trio.to_thread.run_sync(abandon_on_cancel=False) does in production."""
    calls = []

    async def caller(scope_holder):
        with trio.CancelScope() as scope:
            scope_holder.append(scope)
            await scheduler.run(calls.append, "ran")
            calls.append("after")  # not reached: the cancel arrives at the next checkpoint
            await trio.lowlevel.checkpoint()

    async def main():
        scopes = []
        async with scheduler.tasks() as nursery:
            await scheduler.spawn(nursery, "c", caller, scopes)
            scopes[0].cancel()
            assert [o.task for o in await scheduler.next_options()] == ["c"]
            await scheduler.run_decisions(1, FairChooser())

    trio.run(main)
    assert calls == ["ran", "after"]


def test_a_random_schedule_replays_from_its_seed_and_from_its_trace(tmp_path):
    files = itertools.count()

    def one_run(chooser):
        local = Scheduler()
        with Database.open(
            tmp_path / f"{next(files)}.db", clock=local.clock, busy_timeout=0, seed=0
        ) as rdb:
            local.watch(rdb)
            store = JobStore(rdb)
            parent = store.create_parent("p")
            store.spawn_children(parent, "t", [1, 2, 3], queue=Queue(rdb, "jobs"))

            async def main():
                async with local.tasks() as nursery:
                    for i in range(2):
                        await local.spawn(nursery, f"w{i}", pool(rdb, local, {"t": work}, i).run)
                    await local.run_decisions(30, chooser)

            trio.run(main)
            local.close()
        return [(s.decision, s.task, s.operation, s.outcome) for s in local.trace]

    def traces(chooser_for):
        return [one_run(chooser_for(run)) for run in range(2)]

    async def work(job, ctx):
        await ctx.pool.runtime.sleep(job.payload)
        return job.payload

    first, second = traces(lambda run: RandomChooser(seed=42))
    assert first == second
    tasks = [task for decision, task, *_ in first if decision]
    assert len(set(tasks)) == 2  # both workers ran
    replayed, _ = traces(lambda run: ReplayChooser(tasks))
    assert replayed == first


def test_a_replay_that_no_longer_fits_says_where(db, scheduler):
    async def main():
        async with scheduler.tasks() as nursery:
            await scheduler.spawn(nursery, "w0", pool(db, scheduler).run)
            with pytest.raises(ReplayDivergedError, match="decision 1: w1 is not ready"):
                await scheduler.run_decisions(1, ReplayChooser(["w1"]))

    trio.run(main)


def test_a_worker_releasing_a_job_cancelled_meanwhile_survives(db, scheduler):
    """Found by the interleaving machine: release() after the job's parent was
    cancelled killed the worker with InvalidTransitionError."""
    store = JobStore(db)
    parent = store.create_parent("p")
    store.spawn_children(parent, "slow", [{"work": 5}], queue=Queue(db, "jobs"))

    async def slow(job, ctx):
        await ctx.pool.runtime.sleep(job.payload["work"])

    worker = pool(db, scheduler, {"slow": slow})

    async def main():
        async with scheduler.tasks() as nursery:
            await scheduler.spawn(nursery, "w0", worker.run)
            await scheduler.run_decisions(2, FairChooser())  # receive, start; the handler sleeps
            store.cancel(parent)
            worker.release()
            await scheduler.run_decisions(5, FairChooser())
            assert not scheduler.errors
            assert worker.stats.total("lost_leases") == 1
            assert worker.stats.total("released") == 0

    trio.run(main)
