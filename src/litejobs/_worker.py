"""The worker pool: trio tasks that receive job messages and run their handlers.

Every blocking call, sleep and clock read goes through the pool's
:class:`~litejobs._runtime.Runtime`, so the same code runs on trio threads in
production and under the tester's scheduler.

A worker's loop::

    receive ──> start ──> handler (lease renewed by a heartbeat) ──> complete
       │                     │ raises                                 (shielded)
       │ nothing             └──> fail: retried through the queue, or failed
       └──> back off (bounded, jittered), then receive again
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import attrs
import trio

from litejobs._errors import (
    BusyError,
    ConfigError,
    InvalidPayloadError,
    InvalidTransitionError,
    LiteJobsError,
    NotFoundError,
    StaleReceiptError,
)
from litejobs._jobs import Job, JobStatus, JobStore
from litejobs._queue import Message, Queue
from litejobs._runtime import Runtime, TrioRuntime, run_db

Handler = Callable[[Job, "JobContext"], Awaitable[Any]]


@attrs.frozen
class JobContext:
    """What a handler gets besides its job: the means to spawn more work."""

    job: Job
    receipt: str
    pool: WorkerPool

    async def spawn(
        self, kind: str, payloads: Sequence[Any], *, keys: Sequence[str] | None = None
    ) -> list[str]:
        """Spawn children of this job's parent (all children point at the root,
        as in the crawler this ports) on the pool's queue; see
        :meth:`JobStore.spawn_children` for ``keys``."""
        parent = self.job.parent_id
        if parent is None:  # pragma: no cover - workers only run children
            raise InvalidTransitionError(f"job {self.job.id} has no parent to spawn under")
        pool = self.pool
        return await pool.call(
            pool.store.spawn_children, parent, kind, payloads, queue=pool.queue, keys=keys
        )


@attrs.define
class WorkerStats:
    """One worker's counters. Times are seconds; ``started_at`` is the offset
    of the worker's first receive from the pool's start."""

    index: int
    started_at: float | None = None
    received: int = 0
    completed: int = 0
    failed: int = 0
    retried: int = 0
    released: int = 0
    skipped: int = 0
    unreadable: int = 0  # messages or jobs whose stored text or JSON could not be read
    lost_leases: int = 0
    busy_errors: int = 0
    busy_s: float = 0.0
    idle_s: float = 0.0


@attrs.frozen
class PoolStats:
    """A snapshot of the pool's counters."""

    workers: tuple[WorkerStats, ...]
    busy_retries: int

    def total(self, counter: str) -> int:
        """Sum one counter (``received``, ``completed``, ...) over the workers."""
        return sum(getattr(w, counter) for w in self.workers)


def _positive(name: str, value: float) -> float:
    if not isinstance(value, int | float) or not 0 < value < float("inf"):
        raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


class WorkerPool:
    """``concurrency`` workers running jobs from ``queue`` with ``handlers``.

    Worker ``i`` starts ``stagger * i`` seconds after the first (default
    stagger: ``poll_interval / concurrency``, the seed's 0 ms and 500 ms for two
    workers at a 1 s poll). For example::

        async def crawl_url(job, ctx):
            return {"fetched": job.payload["url"]}

        pool = WorkerPool(store, queue, {"crawl_url": crawl_url}, concurrency=2)
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            ...
            pool.stop()   # graceful: in-flight jobs finish, then run() returns

    Args:
        poll_interval: the longest wait between receives while the queue is
            empty; waits start at 1/16 of it and double, with 20 % jitter.
        visibility_timeout: the lease each receive takes; a heartbeat renews it
            every ``heartbeat`` seconds (default a third of it) while the
            handler runs.
        retry_delay: how long a failed attempt waits before its retry.
    """

    def __init__(
        self,
        store: JobStore,
        queue: Queue,
        handlers: Mapping[str, Handler],
        *,
        runtime: Runtime | None = None,
        concurrency: int = 2,
        poll_interval: float = 1.0,
        stagger: float | None = None,
        visibility_timeout: float = 30.0,
        heartbeat: float | None = None,
        retry_delay: float = 0.0,
        seed: int | None = None,
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigError(f"concurrency must be an int >= 1, got {concurrency!r}")
        if queue.db is not store.db:
            raise ConfigError("the queue and the job store must share one database")
        self.store = store
        self.queue = queue
        self.db = store.db
        self.handlers = dict(handlers)
        self.runtime: Runtime = runtime or TrioRuntime(self.db.clock)
        self.concurrency = concurrency
        self.poll_interval = _positive("poll_interval", poll_interval)
        self.stagger = poll_interval / concurrency if stagger is None else stagger
        if not isinstance(self.stagger, int | float) or not 0 <= self.stagger < float("inf"):
            raise ConfigError(f"stagger must be a number of seconds >= 0, got {stagger!r}")
        self.visibility_timeout = _positive("visibility_timeout", visibility_timeout)
        self.heartbeat = _positive(
            "heartbeat", visibility_timeout / 3 if heartbeat is None else heartbeat
        )
        if self.heartbeat >= self.visibility_timeout:
            raise ConfigError("heartbeat must be shorter than visibility_timeout")
        self.retry_delay = retry_delay
        self._rng = random.Random(seed)
        self._stats = [WorkerStats(i) for i in range(concurrency)]
        self._busy_retries_before = 0
        self._stopping = False
        self._releasing = False
        self._cancelled = False
        self._idle_scopes: set[trio.CancelScope] = set()
        self._handler_scopes: set[trio.CancelScope] = set()
        self._nursery: trio.Nursery | None = None
        self._start_ms = 0

    # -- control -----------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the workers until :meth:`stop` lets them finish or :meth:`cancel`
        stops them."""
        self._start_ms = self.runtime.now_ms()
        self._busy_retries_before = self.db.retry_metrics.retries
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for index in range(self.concurrency):
                nursery.start_soon(self._worker, index, name=f"litejobs-worker-{index}")
            task_status.started()

    def stop(self) -> None:
        """Stop gracefully: every worker finishes the job it holds, takes no
        new one, and :meth:`run` returns once all are done."""
        self._stopping = True
        for scope in list(self._idle_scopes):
            scope.cancel()

    def release(self) -> None:
        """Stop now, giving in-flight jobs back: their handlers are cancelled
        (or, if about to start, never run) and the jobs are pending again, with
        the receive refunded, for another worker."""
        self._releasing = True
        self.stop()
        for scope in list(self._handler_scopes):
            scope.cancel()

    def cancel(self) -> None:
        """Hard cancel. In-flight handlers are cancelled and their jobs keep
        their leases, coming back when the leases run out; an outcome already
        reached is still recorded, and no database call is left half done."""
        self._cancelled = True
        for scope in list(self._handler_scopes):
            scope.cancel()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    @property
    def stats(self) -> PoolStats:
        """The pool's counters so far."""
        return PoolStats(
            workers=tuple(attrs.evolve(w) for w in self._stats),
            busy_retries=self.db.retry_metrics.retries - self._busy_retries_before,
        )

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a blocking litejobs call through the runtime, with retries."""
        return await run_db(self.runtime, self.db, fn, *args, **kwargs)

    # -- a worker --------------------------------------------------------------

    def _elapsed(self, since_ms: int) -> float:
        return (self.runtime.now_ms() - since_ms) / 1000

    async def _worker(self, index: int) -> None:
        stats = self._stats[index]
        await self._idle(index * self.stagger, stats)
        if self._stopping:
            return
        stats.started_at = self._elapsed(self._start_ms)
        backoff = 0.0
        while not self._stopping:
            try:
                message = await self.call(
                    self.queue.receive, visibility_timeout=self.visibility_timeout
                )
            except BusyError:  # the retry policy ran out: count it, wait, go on
                stats.busy_errors += 1
                await self._idle(self.poll_interval, stats)
                continue
            except InvalidPayloadError:
                # Something other than litejobs wrote the body. The claim
                # stands, so after max_receive tries it rests in the dead
                # letters; one bad row must not stop the pool.
                stats.unreadable += 1
                continue
            if message is None:
                backoff = min(self.poll_interval, backoff * 2 or self.poll_interval / 16)
                await self._idle(backoff * self._rng.uniform(0.8, 1.0), stats)
                continue
            backoff = 0.0
            stats.received += 1
            began = self.runtime.now_ms()
            try:
                await self._process(message, stats)
            except BusyError:  # the job comes back when its lease runs out
                stats.busy_errors += 1
            stats.busy_s += self._elapsed(began)

    async def _idle(self, seconds: float, stats: WorkerStats) -> None:
        if seconds <= 0 or self._stopping:
            return
        began = self.runtime.now_ms()
        with trio.CancelScope() as scope:
            self._idle_scopes.add(scope)
            try:
                await self.runtime.sleep(seconds)
            finally:
                self._idle_scopes.discard(scope)
        stats.idle_s += self._elapsed(began)

    async def _process(self, message: Message, stats: WorkerStats) -> None:
        body = message.body
        job_id = body.get("job_id") if isinstance(body, dict) else None
        if not isinstance(job_id, str):
            # Not a job message: give it back untouched; after max_receive
            # tries it rests in the dead letters, where a person can look.
            stats.skipped += 1
            try:
                await self._finish(self.queue.nack, message.receipt, delay=self.visibility_timeout)
            except StaleReceiptError:  # the lease ran out and another worker has it
                stats.lost_leases += 1
            return
        try:
            job = await self.call(self.store.start, job_id, message.receipt)
        except (InvalidTransitionError, NotFoundError, StaleReceiptError):
            # Cancelled, deleted or re-leased meanwhile: nothing left to do.
            stats.skipped += 1
            return
        except InvalidPayloadError:
            # The job's row holds text that is not UTF-8 JSON (payload, kind,
            # error, warning): leave it be. Its message
            # comes back until it is dead-lettered, which fails the job.
            stats.unreadable += 1
            return
        handler = self.handlers.get(job.kind)
        if handler is None:
            known = ", ".join(sorted(self.handlers)) or "none"
            error = f"no handler for job kind {job.kind!r} (registered: {known})"
            await self._record_failure(job, message, error, stats, retry=False)
            return
        # Shielded: once a handler has finished, its outcome is recorded even if
        # the pool is cancelled meanwhile; cancel() reaches the handler itself
        # through its own scope.
        with trio.CancelScope(shield=True):
            outcome = await self._run_handler(handler, job, message, stats)
            await self._record(outcome, job, message, stats)

    async def _record(self, outcome: Any, job: Job, message: Message, stats: WorkerStats) -> None:
        if outcome is _ABANDONED or outcome is _LOST:
            return  # the lease runs out, or another worker has the job
        if outcome is _RELEASED:
            try:
                await self._finish(self.store.release, job.id, message.receipt)
            except (StaleReceiptError, InvalidTransitionError):  # cancelled, or re-leased
                stats.lost_leases += 1
            except InvalidPayloadError:  # the row turned unreadable meanwhile
                stats.unreadable += 1
            else:
                stats.released += 1
        elif isinstance(outcome, _Failure):
            await self._record_failure(job, message, outcome.error, stats, retry=True)
        else:
            try:
                await self._finish(self.store.complete, job.id, message.receipt, outcome)
            except (StaleReceiptError, InvalidTransitionError):
                stats.lost_leases += 1
            except InvalidPayloadError as exc:  # a result JSON cannot carry
                await self._record_failure(job, message, exc, stats, retry=False)
            else:
                stats.completed += 1

    async def _run_handler(
        self, handler: Handler, job: Job, message: Message, stats: WorkerStats
    ) -> Any:
        """Run the handler under a heartbeat. Return its result or a _Failure
        if it finished; else _RELEASED (release()), _ABANDONED (cancel()) or
        _LOST (another worker took the lease)."""
        if self._releasing or self._cancelled:  # arrived while the job was starting
            return _RELEASED if self._releasing else _ABANDONED
        context = JobContext(job=job, receipt=message.receipt, pool=self)
        lost = trio.Event()
        finished, outcome = False, None
        with trio.CancelScope() as scope:
            self._handler_scopes.add(scope)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._heartbeat, message.receipt, lost, scope)
                    try:
                        outcome = await handler(job, context)
                    except Exception as exc:  # a handler's bug must not stop the pool
                        outcome = _Failure(exc)
                    finished = True
                    nursery.cancel_scope.cancel()
            finally:
                self._handler_scopes.discard(scope)
        if lost.is_set():
            stats.lost_leases += 1
            return _LOST
        if not finished:
            return _ABANDONED if self._cancelled else _RELEASED
        return outcome

    async def _heartbeat(self, receipt: str, lost: trio.Event, handler: trio.CancelScope) -> None:
        """Renew the lease until cancelled; a stale receipt means another
        worker has the job now, so this handler's work would be thrown away."""
        while True:
            await self.runtime.sleep(self.heartbeat)
            try:
                await self.call(self.queue.extend, receipt, self.visibility_timeout)
            except StaleReceiptError:
                lost.set()
                handler.cancel()
                return
            except LiteJobsError:
                # The lock outlasted the retries: try again next beat. If the
                # lease runs out meanwhile, the next renewal says so.
                continue

    async def _record_failure(
        self,
        job: Job,
        message: Message,
        error: str | BaseException,
        stats: WorkerStats,
        *,
        retry: bool,
    ) -> None:
        try:
            after = await self._finish(
                self.store.fail,
                job.id,
                message.receipt,
                error,
                retry=retry,
                delay=self.retry_delay,
            )
        except (StaleReceiptError, InvalidTransitionError):
            stats.lost_leases += 1
            return
        except InvalidPayloadError:
            # Written from outside while the handler ran: the lease runs out
            # and the message comes back until it is dead-lettered.
            stats.unreadable += 1
            return
        if after.status is JobStatus.PENDING:
            stats.retried += 1
        else:
            stats.failed += 1

    async def _finish(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Record a job's outcome even while the pool is being cancelled: the
        database call is short and bounded, and losing it would redo work."""
        with trio.CancelScope(shield=True):
            return await self.call(fn, *args, **kwargs)


@attrs.frozen
class _Failure:
    error: BaseException


_RELEASED = object()
_ABANDONED = object()
_LOST = object()
