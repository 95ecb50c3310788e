"""The scheduler: the runtime seam bound to one-task-at-a-time decisions on
virtual time, with real WorkerPool code and a real database file."""

from __future__ import annotations

import trio
import pytest

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
