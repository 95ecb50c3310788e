"""The runtime: the worker path's one seam for nondeterminism.

Everything the worker pool does that depends on threads or time goes through
a :class:`Runtime`: running a blocking database call, sleeping, reading the
clock. Production binds it to trio (:class:`TrioRuntime`); the tester binds it
to a scheduler that parks every task at each runtime call and lets a chooser
pick which one proceeds, on virtual time. No other module in the worker path
calls ``trio.to_thread``, ``trio.sleep`` or a clock directly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import trio

from litejobs._clock import Clock, SystemClock
from litejobs._db import BusyAttempt, Database

T = TypeVar("T")


class Runtime(Protocol):
    """What the worker path needs from its surroundings."""

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run the blocking call ``fn(*args)`` and return its result."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        ...

    def now_ms(self) -> int:
        """The current time, integer UTC milliseconds."""
        ...


class TrioRuntime:
    """The production runtime: trio's worker threads, ``trio.sleep``, the wall clock.

    Each blocking call runs on one of trio's cached worker threads, and each
    thread has its own apsw connection (see :class:`~litejobs.Database`), so no
    connection is ever shared. A cancelled task waits for its call to finish
    rather than abandoning the thread: the call always ends its transaction
    (commit or rollback) before the cancellation is delivered, so a cancelled
    worker never leaves a transaction, or the write lock, behind. The wait is
    bounded by the database's busy timeout, because retries after
    ``SQLITE_BUSY`` happen here, in :func:`run_db`, where they are cancellable.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or SystemClock()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=False)

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)

    def now_ms(self) -> int:
        return self.clock.now_ms()


async def run_db(
    runtime: Runtime, db: Database, fn: Callable[..., T], *args: Any, **kwargs: Any
) -> T:
    """Run the litejobs call ``fn(*args)`` through ``runtime``, retrying after
    ``SQLITE_BUSY`` with ``db``'s retry policy.

    Each attempt is one runtime call; the waits between attempts are runtime
    sleeps, so they are cancellable and, under the tester, part of the schedule.
    Attempts are counted in ``db.retry_metrics`` exactly as synchronous calls
    count theirs.

    Raises:
        BusyError: the policy's attempts ran out.
    """
    if kwargs:  # the runtime seam passes positional arguments only
        fn = functools.partial(fn, **kwargs)
    attempt = 1
    delays = None
    while True:
        try:
            result = await runtime.run(db.attempt_once, fn, *args)
        except BusyAttempt:
            if delays is None:
                delays = db.retry_delays()
            delay = next(delays, None)
            if delay is None:
                raise db.gave_up(attempt) from None
            attempt += 1
            await runtime.sleep(delay)
            continue
        except BaseException:
            db.record_attempts(attempt)
            raise
        db.record_attempts(attempt)
        return result


class TrioTimeClock:
    """A :class:`~litejobs.Clock` that reads trio's clock (virtual under
    ``trio.testing.MockClock``), for databases driven by :class:`InlineRuntime`."""

    def __init__(self, epoch_ms: int = 1_700_000_000_000) -> None:
        self.epoch_ms = epoch_ms
        self._last = epoch_ms

    def now_ms(self) -> int:
        try:
            now = self.epoch_ms + round(trio.current_time() * 1000)
        except RuntimeError:  # outside trio.run: time stands where it was left
            return self._last
        # A new trio.run starts its clock again at 0: keep time moving forward.
        if now < self._last:
            self.epoch_ms += self._last - now
            now = self._last
        self._last = now
        return now

    def sleep(self, seconds: float) -> None:
        raise RuntimeError(
            "a blocking retry sleep on the trio thread; call through run_db, which "
            "sleeps through the runtime"
        )


class InlineRuntime:
    """A runtime for deterministic tests: blocking calls run inline on the
    trio thread, and time is trio's clock.

    Open the database with ``clock=runtime.clock`` so that leases, heartbeats
    and back-off share one time. Under
    ``trio.testing.MockClock(autojump_threshold=0)`` a whole worker pool then
    runs on virtual time, in the same order every run. For example::

        runtime = InlineRuntime()
        db = Database.open(path, clock=runtime.clock)
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    """

    def __init__(self, epoch_ms: int = 1_700_000_000_000) -> None:
        self.clock = TrioTimeClock(epoch_ms)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        await trio.lowlevel.checkpoint()
        return fn(*args)

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)

    def now_ms(self) -> int:
        return self.clock.now_ms()
