"""Run a fuzz plan in worker processes, gather their counts, stop on time or
on Ctrl-C, and sum it up."""

from __future__ import annotations

import multiprocessing
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import attrs

from litejobs.fuzz._child import fuzz_process
from litejobs.fuzz._databases import open_database
from litejobs.fuzz._plan import FuzzPlan
from litejobs.fuzz._stats import MachineStats
from litejobs.fuzz._summary import FuzzSummary
from litejobs.testing._registry import build_machine, rule_names

#: How often the caller hears of progress, in seconds.
PROGRESS_EVERY_S = 0.25


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
    before it is killed: inside the 5 % a budget is honoured to."""
    return max(1.0, 0.03 * budget_s)


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
    deadline = began + plan.budget_s
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    outbox = context.Queue()
    counts: dict[int, dict[str, Any]] = {}
    failures: dict[str, str] = {}
    errors: list[str] = []
    done: set[int] = set()
    dead_since: dict[int, float] = {}
    interrupts = 0

    def interrupt(signum: int, frame: object) -> None:
        nonlocal interrupts
        interrupts += 1
        stop.set()
        if interrupts > 1:
            for process in processes:
                process.kill()

    processes = [
        context.Process(
            target=fuzz_process,
            args=(plan, index, deadline, stop, outbox),
            name=f"litejobs-fuzz-{index}",
            daemon=True,
        )
        for index in range(plan.jobs)
    ]

    def progress() -> FuzzProgress:
        return FuzzProgress(
            elapsed_s=time.monotonic() - began,
            budget_s=plan.budget_s,
            machines=_total(plan, counts),
            rules_total=rules_total,
            failures=tuple(failures.values()),
            stopping=stop.is_set(),
        )

    with _signals_routed(interrupt) as children_started:
        for process in processes:
            process.start()
        children_started()
        try:
            shown = 0.0
            while len(done) < plan.jobs:
                try:
                    message = outbox.get(timeout=0.1)
                except queue.Empty:
                    message = None
                if message is not None:
                    kind, index, *rest = message
                    if kind in ("stats", "done"):
                        counts[index] = rest[0]
                    if kind == "done":
                        done.add(index)
                    elif kind == "error":
                        errors.append(f"process {index}: {rest[0]}")
                        done.add(index)
                    elif kind == "failure":
                        machine, where, text = rest
                        failures.setdefault(f"{machine}: {where}", f"{machine}: {text}")
                        if plan.exitfirst:
                            stop.set()
                now = time.monotonic()
                for index, process in enumerate(processes):
                    if index in done:
                        continue
                    if now > deadline + grace_s(plan.budget_s) and process.is_alive():
                        process.kill()  # its last counts stand
                    if process.is_alive():
                        continue
                    # Its last message may still be in the pipe: give it time.
                    dead_since.setdefault(index, now)
                    if now - dead_since[index] > 1.0:
                        if process.exitcode:
                            code = process.exitcode
                            errors.append(f"process {index} ended with exit code {code}")
                        done.add(index)
                finished = len(done) == plan.jobs
                if on_progress is not None and (now - shown >= PROGRESS_EVERY_S or finished):
                    shown = now
                    on_progress(progress())
        finally:
            stop.set()
            for process in processes:
                process.join(timeout=grace_s(plan.budget_s))
                if process.is_alive():
                    process.kill()
                    process.join()
    return FuzzSummary(
        plan=plan,
        elapsed_s=time.monotonic() - began,
        machines=_total(plan, counts),
        rules_total=rules_total,
        interrupted=interrupts > 0,
        errors=tuple(errors),
    )


def _total(plan: FuzzPlan, counts: dict[int, dict[str, Any]]) -> dict[str, MachineStats]:
    totals = {name: MachineStats() for name in plan.machines}
    for per_machine in counts.values():
        for name, data in per_machine.items():
            totals[name] = totals[name].merge(MachineStats.from_json(data))
    return totals


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
            signal.signal(sig, action)
