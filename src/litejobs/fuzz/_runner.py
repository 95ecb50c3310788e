"""Run a fuzz plan in worker processes, gather their counts, stop on time or
on Ctrl-C, and sum it up.

Each process has a pipe of its own back to the parent and reads its stop
flag from shared memory, so no lock is shared: a process killed at any
instant cannot wedge the parent or another process, and the end of its pipe
says it is gone with all it sent already read.
"""

from __future__ import annotations

import multiprocessing
import pickle
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from multiprocessing.connection import Connection, wait
from typing import Any, cast

import attrs

from litejobs.fuzz._child import fuzz_process
from litejobs.fuzz._databases import open_database
from litejobs.fuzz._plan import FuzzPlan
from litejobs.fuzz._stats import MachineStats
from litejobs.fuzz._summary import FuzzSummary
from litejobs.testing._registry import build_machine, rule_names

#: How often the caller hears of progress, in seconds.
PROGRESS_EVERY_S = 0.25
#: How long a process whose pipe closed may take to exit before it is killed.
_EXIT_WAIT_S = 1.0


@attrs.frozen
class FuzzProgress:
    """The run so far, for a live display."""

    elapsed_s: float
    budget_s: float
    machines: dict[str, MachineStats]
    rules_total: dict[str, int]
    #: ``machine: message`` of each distinct failure, first seen first.
    failures: tuple[str, ...]
    stopping: bool


def grace_s(budget_s: float) -> float:
    """How long past the deadline a process may take to finish its input
    before it is killed; with start-up, within 5 % of budgets from 30 s."""
    return max(0.5, 0.03 * budget_s)


class _Fleet:
    """The processes of one run and what they have said."""

    def __init__(self, plan: FuzzPlan, deadline: float) -> None:
        context = multiprocessing.get_context("spawn")
        self.plan = plan
        self.deadline = deadline
        self.stop = context.RawValue("b", 0)  # read by every process, no lock
        self.processes: list[Any] = []
        self.pipes: dict[Connection, int] = {}
        self.writers: list[Connection] = []
        for index in range(plan.jobs):
            reader, writer = context.Pipe(duplex=False)
            self.pipes[reader] = index
            self.writers.append(writer)
            self.processes.append(
                context.Process(
                    target=fuzz_process,
                    args=(plan, index, deadline, self.stop, writer),
                    name=f"litejobs-fuzz-{index}",
                    daemon=True,
                )
            )
        self.counts: dict[int, dict[str, Any]] = {}
        #: Failures as reported one by one, which a last snapshot may lack.
        self.failures: dict[str, tuple[str, str, str]] = {}  # key -> machine, origin, message
        self.failure_counts: Counter[tuple[str, str]] = Counter()
        self.errors: list[str] = []
        self.killed: list[int] = []

    def start(self) -> None:
        for process, writer in zip(self.processes, self.writers, strict=True):
            process.start()
            writer.close()  # the child's copy is the only one: its end is our EOF

    def running(self) -> bool:
        return bool(self.pipes)

    def receive(self, timeout: float) -> None:
        # Given only connections, wait() returns only connections.
        for reader in cast("list[Connection]", wait(list(self.pipes), timeout=timeout)):
            index = self.pipes[reader]
            try:
                message = reader.recv()
            except (EOFError, OSError, pickle.UnpicklingError):
                del self.pipes[reader]
                self.ended(index)
                continue
            self.handle(index, message)

    def handle(self, index: int, message: tuple[Any, ...]) -> None:
        kind, *rest = message
        if kind in ("stats", "done"):
            self.counts[index] = rest[0]
        elif kind == "error":
            self.errors.append(f"process {index} could not start: {rest[0]}")
        elif kind == "failure":
            machine, origin, text = rest
            self.failure_counts[machine, origin] += 1
            self.failures.setdefault(f"{machine}: {origin}", (machine, origin, text))
            if self.plan.exitfirst:
                self.stop.value = 1

    def ended(self, index: int) -> None:
        """Its pipe closed or broke: it has exited, or must now."""
        process = self.processes[index]
        process.join(timeout=_EXIT_WAIT_S)
        if process.is_alive():  # a garbled message from a live process
            self.errors.append(f"process {index} sent a message that could not be read")
            self.kill(index)
            process.join()
        elif process.exitcode and index not in self.killed:
            self.errors.append(f"process {index} died with exit code {process.exitcode}")

    def enforce_deadline(self, now: float) -> None:
        if now < self.deadline + grace_s(self.plan.budget_s):
            return
        for index in self.pipes.values():
            self.kill(index)

    def kill(self, index: int) -> None:
        process = self.processes[index]
        if process.is_alive() and index not in self.killed:
            self.killed.append(index)  # its last counts stand
            process.kill()

    def close(self) -> None:
        self.stop.value = 1
        for index, process in enumerate(self.processes):
            if process.pid is not None:
                process.join(timeout=grace_s(self.plan.budget_s))
                if process.is_alive():
                    self.kill(index)
                    process.join()

    def totals(self) -> dict[str, MachineStats]:
        totals = {name: MachineStats() for name in self.plan.machines}
        for per_machine in self.counts.values():
            for name, data in per_machine.items():
                totals[name] = totals[name].merge(MachineStats.from_json(data))
        for (machine, origin), reported in self.failure_counts.items():
            stats = totals[machine]
            missing = reported - stats.origins[origin]
            if missing > 0:  # found after the last snapshot that arrived
                stats.failures += missing
                stats.origins[origin] += missing
        for machine, origin, text in self.failures.values():
            totals[machine].messages.setdefault(origin, text)
        return totals


def run_fuzz(
    plan: FuzzPlan,
    *,
    on_progress: Callable[[FuzzProgress], None] | None = None,
    started: float | None = None,
) -> FuzzSummary:
    """Run ``plan``; return its summary. Raises :class:`ConfigError` before
    starting anything if the plan is wrong or its database unreachable.
    The budget counts from ``started`` (``time.monotonic()``; default now).

    Ctrl-C (SIGINT) or SIGTERM stops the processes after their current input
    and still returns the summary; a second one kills them."""
    plan.check()
    open_database(plan.database)  # fail here, not in every process
    rules_total = {
        name: len(rule_names(build_machine(name, chooser=plan.chooser))) for name in plan.machines
    }
    began = time.monotonic() if started is None else started
    fleet = _Fleet(plan, began + plan.budget_s)
    interrupts = [0]

    def interrupt(signum: int, frame: object) -> None:
        interrupts[0] += 1  # acted on by the loop, never inside a handler

    def progress() -> FuzzProgress:
        return FuzzProgress(
            elapsed_s=time.monotonic() - began,
            budget_s=plan.budget_s,
            machines=fleet.totals(),
            rules_total=rules_total,
            failures=tuple(f"{m}: {text}" for m, _, text in fleet.failures.values()),
            stopping=bool(fleet.stop.value),
        )

    with _signals_routed(interrupt) as children_started:
        try:
            fleet.start()
            children_started()
            shown = 0.0
            while fleet.running():
                fleet.receive(timeout=0.1)
                if interrupts[0]:
                    fleet.stop.value = 1
                if interrupts[0] > 1:
                    for index in list(fleet.pipes.values()):
                        fleet.kill(index)
                now = time.monotonic()
                fleet.enforce_deadline(now)
                if on_progress is not None and (
                    now - shown >= PROGRESS_EVERY_S or not fleet.running()
                ):
                    shown = now
                    on_progress(progress())
        finally:
            fleet.close()
    return FuzzSummary(
        plan=plan,
        elapsed_s=time.monotonic() - began,
        machines=fleet.totals(),
        rules_total=rules_total,
        interrupted=interrupts[0] > 0,
        errors=tuple(fleet.errors),
        killed=len(fleet.killed),
    )


@contextmanager
def _signals_routed(handler: Callable[[int, object], None]) -> Iterator[Callable[[], None]]:
    """Ignore SIGINT while children start (an ignored signal stays ignored
    across exec, and Python then installs no handler of its own, so a
    Ctrl-C never lands inside a child's test); once they have started, send
    SIGINT and SIGTERM to ``handler``; restore both at the end."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None  # signals reach only the main thread
        return
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.getsignal(sig) for sig in signals}

    def started() -> None:
        for sig in signals:
            signal.signal(sig, handler)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield started
    finally:
        for sig, action in previous.items():
            # None: set outside Python; the default is the closest we can give back.
            with suppress(ValueError, OSError):
                signal.signal(sig, signal.SIG_DFL if action is None else action)
