"""A trio event loop on its own thread, called into one coroutine at a time.

Hypothesis runs a state machine's rules as plain functions, while the worker
pool lives in trio tasks that must outlast any one rule. The loop keeps those
tasks alive between rules; each rule waits for its call into the loop to
finish, so only one side ever runs at a time.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

T = TypeVar("T")


class LoopThread:
    """Runs ``trio.run`` on a daemon thread until :meth:`close`."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="litejobs-trio", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:  # reported to the caller that next uses the loop
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    @property
    def nursery(self) -> trio.Nursery:
        """The nursery long-lived tasks are started in."""
        assert self._nursery is not None
        return self._nursery

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(*args)`` in the loop and return its result."""
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def call_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the loop's thread and return its result."""
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def close(self) -> None:
        """Cancel every task still running and end the loop."""
        if self._thread.is_alive() and self._stop is not None:
            with contextlib.suppress(trio.RunFinishedError):
                self.call_sync(self._stop.set)
        self._thread.join(60)
        if self._thread.is_alive():
            raise RuntimeError("the trio loop did not end within 60 s: a task ignores cancellation")
