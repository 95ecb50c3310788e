"""The scheduler: the tester's binding of the runtime seam.

Every task that reaches a runtime call parks, and exactly one parked task
proceeds at a time; a chooser says which. The blocking calls run on one thread
per task (each with its own apsw connection, as in production), but never two
at once, and a call pauses again before each SQL statement whose outcome can
depend on another connection: taking a snapshot, or taking the write lock.
Statements inside a held write transaction never pause, because no other
connection can change what they see. So the real worker code runs, every
interleaving that matters is reachable, and the order is a sequence of choices
that Hypothesis can draw and shrink.

Time is virtual: it moves only when no parked task can proceed without it, to
the earliest wake-up, or when the harness moves it.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import re
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

import apsw
import attrs
import outcome
import trio
import trio.testing

from litejobs._clock import VirtualClock, to_ms
from litejobs._db import BusyAttempt, Database
from litejobs._errors import BusyError

T = TypeVar("T")

#: Seconds an executor thread may take to report back before the scheduler
#: gives up on it: a guard against a hang the scheduler cannot see (a thread
#: lock, say), not a wait for anything expected.
WATCHDOG_S = 60.0


class WorkerCrashed(BaseException):
    """Raised inside every task of a crashed worker: like a dying process, the
    worker unwinds without running another database call, and an open
    transaction is rolled back."""


class DeadlockError(AssertionError):
    """No task can proceed, yet some task is not finished: it is blocked on
    something other than the runtime (a lock held by a parked task, an event
    nobody will set). ``trace`` is the schedule up to that point."""

    def __init__(self, message: str, trace: Sequence[Step]) -> None:
        super().__init__(f"{message}\n{format_trace(trace)}")
        self.trace = list(trace)


@attrs.frozen
class Option:
    """A parked task that may proceed: ``kind`` is ``call`` (a database call
    about to start), ``statement`` (a call paused before an SQL statement) or
    ``wake`` (a sleep that has run out)."""

    task: str
    kind: str
    operation: str


@attrs.frozen(eq=False)
class Step:
    """One line of the trace. ``decision`` is None for what the harness did
    (moving the clock, starting or crashing a worker)."""

    decision: int | None
    at_ms: int
    task: str
    operation: str
    outcome: str
    #: For a finished database call: its name, arguments and result or error.
    call: str | None = None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = attrs.field(factory=dict)
    result: Any = None
    error: BaseException | None = None


def format_trace(steps: Sequence[Step], *, last: int | None = None) -> str:
    """Format steps as a table a person can read (the last ``last`` only)."""
    shown = list(steps)[-last:] if last else list(steps)
    lines = [f"{'decision':>8}  {'t (ms)':>7}  {'task':<14} {'operation':<44} outcome"]
    if len(shown) < len(steps):
        lines.append(f"{'...':>8}  ({len(steps) - len(shown)} earlier steps)")
    for step in shown:
        decision = "" if step.decision is None else str(step.decision)
        operation = step.operation if len(step.operation) <= 44 else step.operation[:41] + "..."
        lines.append(
            f"{decision:>8}  {step.at_ms:>7}  {step.task:<14} {operation:<44} {step.outcome}"
        )
    return "\n".join(lines)


class Chooser:
    """Picks which ready task proceeds: ``choose`` returns an index into
    ``options``, which are sorted by task name."""

    def choose(self, options: Sequence[Option]) -> int:  # pragma: no cover - interface
        raise NotImplementedError


# -- describing calls and results ---------------------------------------------


def _unwrap(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[str, tuple, dict]:
    kwargs: dict[str, Any] = {}
    if getattr(fn, "__name__", "") == "attempt_once" and args:
        fn, args = args[0], tuple(args[1:])
    while isinstance(fn, functools.partial):
        kwargs = {**fn.keywords, **kwargs}
        args = (*fn.args, *args)
        fn = fn.func
    return getattr(fn, "__name__", repr(fn)), args, kwargs


def _short(value: Any) -> str:
    name = type(value).__name__
    if name == "Message":
        return f"message {value.id} (receipt {value.receipt})"
    if name == "Job":
        return f"job {value.id} {value.status}"
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _describe(name: str, args: tuple, kwargs: dict) -> str:
    parts = [_short(a) for a in args]
    parts += [f"{k}={_short(v)}" for k, v in kwargs.items()]
    return f"{name}({', '.join(parts)})"


def _statement(sql: str) -> str:
    words = sql.split()
    keep = 3 if words and words[0].upper() in ("BEGIN", "DELETE", "INSERT") else 2
    return " ".join(words[:keep])


_TXN_CONTROL = ("BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE")


def _pauses_before(conn: apsw.Connection, cursor: apsw.Cursor, sql: str) -> bool:
    """Whether a statement's outcome can depend on other connections: it takes
    a snapshot or the write lock. Inside a write transaction nothing can."""
    keyword = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else ""
    if keyword in _TXN_CONTROL:
        return keyword == "BEGIN" and not cursor.is_readonly  # IMMEDIATE / EXCLUSIVE
    state = conn.txn_state()
    if state == apsw.SQLITE_TXN_WRITE:
        return False
    if state == apsw.SQLITE_TXN_READ:
        return not cursor.is_readonly
    return True


def _natural(label: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", label))


# -- one thread per task ------------------------------------------------------


@attrs.frozen
class _Report:
    kind: str  # "done", "statement", "sleep", "blocked"
    text: str = ""
    seconds: float = 0.0
    result: outcome.Outcome | None = None


_RESUME = object()
_CRASH = object()
_local = threading.local()


class _Executor:
    """A thread that runs one task's blocking calls, pausing where the
    scheduler says, and reporting back each time it stops."""

    def __init__(self, label: str, databases: Sequence[Database]) -> None:
        self.label = label
        self._databases = databases
        self._commands: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._reports: queue.SimpleQueue[_Report] = queue.SimpleQueue()
        self._instrumented: set[int] = set()
        self._fresh = True
        self.busy = False
        self._thread = threading.Thread(
            target=self._main, name=f"litejobs-scheduler-{label}", daemon=True
        )
        self._thread.start()

    # -- the thread's side ----------------------------------------------------

    def _main(self) -> None:
        _local.executor = self
        while True:
            command = self._commands.get()
            if command is None:
                return
            fn, args = command
            self._fresh = True
            try:
                self._instrument()
                result: outcome.Outcome = outcome.Value(fn(*args))
            except BaseException as exc:  # handed to the task that made the call
                result = outcome.Error(exc)
            self._reports.put(_Report("done", result=result))

    def _instrument(self) -> None:
        for db in self._databases:
            conn = db.connection()
            if id(conn) not in self._instrumented:
                self._instrumented.add(id(conn))
                conn.exec_trace = functools.partial(self._trace, conn)
                if db.busy_timeout_ms:
                    conn.set_busy_handler(self._blocked)

    def _trace(self, conn: apsw.Connection, cursor: apsw.Cursor, sql: str, _: Any) -> bool:
        if _pauses_before(conn, cursor, sql):
            if self._fresh:  # the decision that started the call covers it
                self._fresh = False
            else:
                self.pause(_Report("statement", text=_statement(sql)))
        return True

    def _blocked(self, count: int) -> bool:
        self.pause(_Report("blocked", text="waiting in SQLite's busy handler for the write lock"))
        return False

    def pause(self, report: _Report) -> None:
        """Stop here until the scheduler resumes or crashes this task."""
        self._reports.put(report)
        if self._commands.get() is _CRASH:
            raise WorkerCrashed(self.label)

    # -- the scheduler's side -------------------------------------------------

    def submit(self, fn: Callable[..., Any], args: tuple) -> _Report:
        self.busy = True
        self._commands.put((fn, args))
        return self._wait()

    def resume(self) -> _Report:
        self._commands.put(_RESUME)
        return self._wait()

    def crash(self) -> _Report:
        self._commands.put(_CRASH)
        return self._wait()

    def _wait(self) -> _Report:
        try:
            report = self._reports.get(timeout=WATCHDOG_S)
        except queue.Empty:
            raise RuntimeError(
                f"task {self.label}'s database call neither finished nor paused within "
                f"{WATCHDOG_S:g} s: it is blocked on something the scheduler cannot see"
            ) from None
        if report.kind == "done":
            self.busy = False
        return report

    def close(self) -> None:
        if self.busy:  # paused or blocked inside a call: unwind it first
            self.crash()
        self._commands.put(None)
        self._thread.join(WATCHDOG_S)
        if self._thread.is_alive():
            raise RuntimeError(f"task {self.label}'s thread did not end within {WATCHDOG_S:g} s")


class SchedulerClock(VirtualClock):
    """The scheduler's virtual clock. A blocking sleep inside a database call
    (a synchronous retry) parks the calling task until the time has come."""

    def sleep(self, seconds: float) -> None:
        executor = getattr(_local, "executor", None)
        if executor is None:
            raise RuntimeError(
                "a blocking sleep outside the scheduler's tasks; run the call through "
                "the scheduler (run_db), which sleeps on its virtual time"
            )
        self.slept.append(seconds)
        executor.pause(_Report("sleep", seconds=seconds))


# -- the scheduler --------------------------------------------------------------


@attrs.define(eq=False)
class _Park:
    task: trio.lowlevel.Task
    label: str
    kind: str
    operation: str
    wake_at: int | None = None
    abortable: bool = False


class Scheduler:
    """A :class:`~litejobs._runtime.Runtime` under which every runtime call is
    a scheduling point.

    Open the databases the tasks use with ``clock=scheduler.clock`` and
    ``busy_timeout=0`` and pass them to :meth:`watch`: a connection that waited
    inside SQLite for a lock would wait for a task that cannot run, which the
    scheduler reports as a deadlock. Drive it from a trio task with
    :meth:`run_decisions`, or one decision at a time with :meth:`next_options`
    and :meth:`step`. For example::

        scheduler = Scheduler()
        db = Database.open(path, clock=scheduler.clock, busy_timeout=0)
        scheduler.watch(db)
        pool = WorkerPool(store, queue, handlers, runtime=scheduler)
        async with scheduler.tasks() as nursery:
            await scheduler.spawn(nursery, "w0", pool.run)
            await scheduler.run_decisions(20, RandomChooser(seed=1))
    """

    def __init__(self, clock: SchedulerClock | None = None) -> None:
        self.clock = clock or SchedulerClock()
        self.start_ms = self.clock.now_ms()
        self.trace: list[Step] = []
        self.decisions = 0
        #: Steps where SQLITE_BUSY came back while no connection held the
        #: write lock: waiting and retrying cannot help (invariant 8).
        self.unexplained_busy: list[Step] = []
        #: Exceptions that ended a spawned task, by task name.
        self.errors: dict[str, BaseException] = {}
        #: Called with each decision's step once it settled (on the loop's
        #: thread): the place for invariants that must hold between any two
        #: decisions, so a violation is caught where it happens.
        self.on_step: Callable[[Step], None] | None = None
        self._databases: list[Database] = []
        self._parked: dict[str, _Park] = {}
        self._labels: dict[trio.lowlevel.Task, str] = {}
        self._roots: dict[trio.lowlevel.Task, str] = {}
        self._scopes: dict[str, trio.CancelScope] = {}
        self._live: dict[str, trio.lowlevel.Task] = {}
        self._parked_once: set[trio.lowlevel.Task] = set()
        self._crashed: set[str] = set()
        self._executors: dict[str, _Executor] = {}
        self._probes: dict[str, apsw.Connection] = {}
        self._current: tuple[int, int, str, str] | None = None
        self._outcome: Step | str | None = None
        self._deadlock: str | None = None

    # -- the Runtime protocol ---------------------------------------------------

    def now_ms(self) -> int:
        return self.clock.now_ms()

    async def sleep(self, seconds: float) -> None:
        task = trio.lowlevel.current_task()
        wake_at = self.clock.now_ms() + to_ms(seconds, "seconds")
        await self._park(task, "wake", f"sleep {seconds:.3g}s", wake_at=wake_at, abortable=True)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        await trio.lowlevel.checkpoint_if_cancelled()
        task = trio.lowlevel.current_task()
        name, call_args, call_kwargs = _unwrap(fn, args)
        text = _describe(name, call_args, call_kwargs)
        await self._park(task, "call", text)
        label = self._labels[task]
        executor = self._executors.get(label)
        if executor is None:
            executor = self._executors[label] = _Executor(label, self._databases)
        report = executor.submit(fn, args)
        while report.kind in ("statement", "sleep"):
            try:
                if report.kind == "sleep":
                    self._outcome = f"sleeps {report.seconds:g}s inside the call"
                    wake_at = self.clock.now_ms() + to_ms(report.seconds, "seconds")
                    await self._park(task, "wake", f"{name}: retry sleep", wake_at=wake_at)
                else:
                    self._outcome = f"paused before {report.text}"
                    await self._park(task, "statement", f"{name}: {report.text}")
            except WorkerCrashed:
                executor.crash()
                raise
            report = executor.resume()
        if report.kind == "blocked":
            self._deadlock = (
                f"task {label} is {report.text}, which another connection holds; under the "
                "scheduler nothing else runs until this call returns"
            )
            try:  # never offered as an option: only a crash ends it
                await self._park(task, "blocked", f"{name}: waiting for the write lock")
            finally:
                executor.crash()
            raise AssertionError("unreachable: a blocked task is only ever crashed")
        assert report.result is not None
        error = getattr(report.result, "error", None)
        value = getattr(report.result, "value", None)
        step = Step(
            decision=self.decisions,
            at_ms=self._elapsed(),
            task=label,
            operation=text,
            outcome=f"-> {_short(value)}" if error is None else f"raised {type(error).__name__}",
            call=name,
            args=call_args,
            kwargs=call_kwargs,
            result=value,
            error=error,
        )
        db = getattr(fn, "__self__", None)
        if isinstance(error, BusyAttempt | BusyError) and not self._write_lock_held(db):
            step = attrs.evolve(step, outcome=f"{step.outcome}, but nobody held the write lock")
            self.unexplained_busy.append(step)
        self._outcome = step
        return report.result.unwrap()

    # -- parking ------------------------------------------------------------------

    def _label(self, task: trio.lowlevel.Task) -> str:
        """Name a task the first time it parks, from its ancestry alone (never
        from the order tasks first run, which trio randomises): a spawned task
        keeps its spawn name; a descendant is named after its nearest named
        ancestor plus its own trio name, except that the only child of a
        spawned task that never parks itself takes the spawn name."""
        label = self._labels.get(task)
        if label is not None:
            return label
        nursery = task.parent_nursery
        parent = nursery.parent_task if nursery is not None else None
        if task in self._roots:
            label = self._roots[task]
        else:
            parent_label = None if parent is None else self._label_of_ancestor(parent)
            short = task.name.rsplit(".", 1)[-1].lstrip("_")
            if parent_label is None:
                label = short
            elif (
                parent in self._roots
                and parent not in self._parked_once
                and nursery is not None
                and len(nursery.child_tasks) == 1
            ):
                label = parent_label
            else:
                label = f"{parent_label}.{short}"
        holder = self._live.get(label)
        if holder is not None and holder is not task and _alive(holder):
            raise RuntimeError(
                f"two live tasks would both be called {label!r}: give them distinct trio "
                "names, so that schedules name the same task every run"
            )
        self._labels[task] = label
        self._live[label] = task
        return label

    def _label_of_ancestor(self, task: trio.lowlevel.Task) -> str | None:
        ancestor: trio.lowlevel.Task | None = task
        while ancestor is not None:
            if ancestor in self._labels:
                return self._labels[ancestor]
            if ancestor in self._roots:
                return self._roots[ancestor]
            nursery = ancestor.parent_nursery
            ancestor = nursery.parent_task if nursery is not None else None
        return None

    def _crashed_label(self, label: str) -> bool:
        return any(label == c or label.startswith(c + ".") for c in self._crashed)

    async def _park(
        self,
        task: trio.lowlevel.Task,
        kind: str,
        operation: str,
        *,
        wake_at: int | None = None,
        abortable: bool = False,
    ) -> None:
        label = self._label(task)
        if self._crashed_label(label):
            raise WorkerCrashed(label)
        self._parked_once.add(task)
        park = _Park(task, label, kind, operation, wake_at, abortable)
        self._parked[label] = park

        def abort(_: Any) -> trio.lowlevel.Abort:
            if park.abortable and self._parked.get(label) is park:
                del self._parked[label]
                return trio.lowlevel.Abort.SUCCEEDED
            return trio.lowlevel.Abort.FAILED

        await trio.lowlevel.wait_task_rescheduled(abort)

    # -- the harness's side ---------------------------------------------------------

    def watch(self, db: Database) -> None:
        """Run ``db``'s statements under the scheduler (its pauses, its
        deadlock detection and the write-lock probe)."""
        if db.clock is not self.clock:
            raise ValueError("open the database with clock=scheduler.clock")
        self._databases.append(db)

    async def spawn(
        self, nursery: trio.Nursery, name: str, fn: Callable[..., Any], *args: Any
    ) -> None:
        """Start ``fn(*args)`` as task ``name`` (its child tasks are named
        after it) and let it run to its first scheduling point."""

        async def body() -> None:
            self._roots[trio.lowlevel.current_task()] = name
            with trio.CancelScope() as scope:
                self._scopes[name] = scope
                try:
                    await fn(*args)
                except BaseException as exc:  # recorded for the harness to judge
                    if not _only(exc, WorkerCrashed | trio.Cancelled):
                        self.errors[name] = exc

        nursery.start_soon(body, name=name)
        self.log(name, "start", "started")
        await self.settle()

    async def crash(self, name: str) -> None:
        """Kill task ``name`` and its children where they stand, as a process
        dies: no further database call, no clean-up that needs one."""
        self._crashed.add(name)
        for label, park in list(self._parked.items()):
            if self._crashed_label(label):
                del self._parked[label]
                trio.lowlevel.reschedule(park.task, outcome.Error(WorkerCrashed(label)))
        scope = self._scopes.get(name)
        if scope is not None:
            scope.cancel()
        await self.settle()
        for label in [lb for lb in self._executors if self._crashed_label(lb)]:
            self._executors.pop(label).close()
        self.log(name, "crash", "crashed")

    @contextlib.asynccontextmanager
    async def tasks(self) -> AsyncIterator[trio.Nursery]:
        """A nursery to :meth:`spawn` tasks in; leaving it, even on an error,
        crashes the tasks still running so that it can close."""
        async with trio.open_nursery() as nursery:
            try:
                yield nursery
            finally:
                with trio.CancelScope(shield=True):
                    await self.shutdown()

    async def shutdown(self) -> None:
        """Crash every spawned task, so that their nursery can exit: a task
        parked in a database call ignores trio's cancellation, as a thread
        does, until it is chosen."""
        for name in self.roots():
            await self.crash(name)

    def roots(self) -> list[str]:
        """The names of the spawned tasks not crashed."""
        return [name for name in self._scopes if name not in self._crashed]

    def advance(self, seconds: float) -> None:
        """Move virtual time forward by ``seconds`` (sleeps that run out become ready)."""
        self.clock.advance(seconds)
        self.log("clock", f"advance {seconds:g}s", f"t={self._elapsed()}")

    def log(self, task: str, operation: str, outcome: str) -> None:
        """Add a harness event to the trace (an intruder taking a lock, say)."""
        self.trace.append(Step(None, self._elapsed(), task, operation, outcome))

    def _elapsed(self) -> int:
        return self.clock.now_ms() - self.start_ms

    async def settle(self) -> None:
        """Let every woken task run until it parks again, blocks or ends."""
        await trio.testing.wait_all_tasks_blocked()

    # -- deciding -------------------------------------------------------------------

    def options(self) -> list[Option]:
        """The parked tasks that may proceed now, sorted by name."""
        now = self.clock.now_ms()
        ready = [
            p
            for p in self._parked.values()
            if p.kind != "blocked" and (p.wake_at is None or p.wake_at <= now)
        ]
        ready.sort(key=lambda p: _natural(p.label))
        return [Option(p.label, p.kind, p.operation) for p in ready]

    def blocked(self) -> list[str]:
        """Tasks that have used the runtime, are not finished and are not parked."""
        return sorted(
            (
                label
                for label, task in self._live.items()
                if label not in self._parked and _alive(task)
            ),
            key=_natural,
        )

    async def next_options(self) -> list[Option]:
        """The options for the next decision, moving time to the next wake-up
        if nothing can proceed before it; ``[]`` once every task has ended.

        Raises:
            DeadlockError: tasks remain, but none can ever proceed.
        """
        await self.settle()  # what the harness did meanwhile (a cancellation, say)
        options = self.options()
        if options:
            return options
        sleepers = [p.wake_at for p in self._parked.values() if p.wake_at is not None]
        if sleepers:
            wake_at = min(sleepers)
            self.clock.now = max(self.clock.now, wake_at)
            woken = ", ".join(o.task for o in self.options())
            self.log("clock", "nothing else can run", f"t={self._elapsed()}: {woken} wake")
            return self.options()
        stuck = self.blocked() + sorted(self._parked, key=_natural)
        if stuck:
            raise DeadlockError(
                f"deadlock: {', '.join(stuck)} cannot proceed and no task can run", self.trace
            )
        return []

    async def step(self, index: int) -> Step:
        """Let ``options()[index]`` proceed to its next scheduling point."""
        option = self.options()[index]
        park = self._parked.pop(option.task)
        self.decisions += 1
        self._current = (self.decisions, self._elapsed(), option.task, option.operation)
        self._outcome = None
        trio.lowlevel.reschedule(park.task)
        await self.settle()
        step = self._record()
        if self._deadlock:
            raise DeadlockError(f"deadlock: {self._deadlock}", self.trace)
        if self.on_step is not None:
            self.on_step(step)
        return step

    def _record(self) -> Step:
        assert self._current is not None
        decision, at, task, operation = self._current
        found = self._outcome
        if isinstance(found, Step):
            step = attrs.evolve(found, decision=decision, at_ms=at, operation=operation)
        else:
            if found is None:
                park = self._parked.get(task)
                if park is not None and park.kind == "blocked":
                    found = "blocked"
                elif park is not None:
                    found = f"now at {park.operation}"
                elif task in self.blocked():
                    found = "blocked"
                else:
                    found = "finished"
            step = Step(decision, at, task, operation, found)
        self.trace.append(step)
        return step

    async def step_and_options(self, index: int) -> list[Option]:
        """:meth:`step`, then :meth:`next_options`: one call per decision for
        a driver on another thread."""
        await self.step(index)
        return await self.next_options()

    async def run_decisions(
        self, n: int, chooser: Chooser, *, until: Callable[[], bool] | None = None
    ) -> int:
        """Make up to ``n`` decisions with ``chooser``; return how many were
        made (fewer once every task has ended, or once ``until()`` holds; it
        is asked every ten decisions)."""
        made = 0
        while made < n:
            if until is not None and made % 10 == 0 and until():
                break
            options = await self.next_options()
            if not options:
                break
            await self.step(chooser.choose(options))
            made += 1
        return made

    # -- invariant 8 ----------------------------------------------------------------

    def _write_lock_held(self, db: Any) -> bool:
        if not isinstance(db, Database):
            db = self._databases[0] if self._databases else None
        if db is None:
            return True
        probe = self._probes.get(db.path)
        if probe is None:
            probe = self._probes[db.path] = apsw.Connection(db.path)
        try:
            probe.execute("BEGIN IMMEDIATE")
        except apsw.BusyError:
            return True
        probe.execute("ROLLBACK")
        return False

    def close(self) -> None:
        """Unwind every paused call and end the threads (their connections close)."""
        for executor in self._executors.values():
            executor.close()
        self._executors.clear()
        for probe in self._probes.values():
            probe.close()
        self._probes.clear()


def _alive(task: trio.lowlevel.Task) -> bool:
    return getattr(task.coro, "cr_frame", None) is not None


def _only(exc: BaseException, kinds: Any) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only(e, kinds) for e in exc.exceptions)
    return isinstance(exc, kinds)
