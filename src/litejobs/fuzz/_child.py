"""The loop each fuzz process runs: fresh random bytes into the machines in
turn until the deadline or the stop event, with counts sent home as JSON."""

from __future__ import annotations

import contextlib
import random
import time
from typing import Any, Protocol

from hypothesis import settings

from litejobs.fuzz._databases import open_database
from litejobs.fuzz._plan import FuzzPlan
from litejobs.fuzz._target import BUFFER_BYTES, FuzzTarget, first_line, origin

#: Seconds between the counts a process sends while it runs.
REPORT_EVERY_S = 0.5


class _Outbox(Protocol):
    def put(self, item: Any) -> None: ...


class _Flag(Protocol):
    def is_set(self) -> bool: ...


def fuzz_process(plan: FuzzPlan, index: int, deadline: float, stop: _Flag, outbox: _Outbox) -> None:
    """Run process ``index`` of ``plan`` until ``deadline`` (``time.monotonic``,
    which every process on the machine shares) or until ``stop`` is set.

    Messages: ``("stats", index, {machine: counts})`` now and then,
    ``("failure", index, machine, origin, message)`` at once, ``("error",
    index, text)`` if the process cannot start, and ``("done", index,
    counts)`` last. SIGINT is ignored here: the parent stops the loop between
    inputs, so an interrupt never lands inside a test and is never saved as a
    failure."""
    try:
        from litejobs.testing._mutants import mutant
        from litejobs.testing._profiles import register_profiles

        register_profiles()
        settings.load_profile(plan.profile)
        database = open_database(plan.database)
        applied = mutant(plan.mutant) if plan.mutant else contextlib.nullcontext()
    except Exception as exc:
        outbox.put(("error", index, f"{type(exc).__name__}: {exc}"))
        return
    with applied:
        targets = [
            FuzzTarget.build(name, chooser=plan.chooser, database=database)
            for name in plan.machines
        ]
        run_inputs(targets, random.Random(f"{plan.seed}:{index}"), deadline, stop, outbox, index)


def run_inputs(
    targets: list[FuzzTarget],
    rng: random.Random,
    deadline: float,
    stop: _Flag,
    outbox: _Outbox,
    index: int = 0,
) -> None:
    """Feed ``targets`` in turn; the loop ``litejobs fuzz`` runs in each
    process, and the one its benchmark times."""

    def counts() -> dict[str, Any]:
        return {target.name: target.stats.to_json() for target in targets}

    reported = time.monotonic()
    turn = 0
    while not stop.is_set() and time.monotonic() < deadline:
        target = targets[turn % len(targets)]
        turn += 1
        failure = target.run(rng.randbytes(BUFFER_BYTES))
        if failure is not None:
            outbox.put(("failure", index, target.name, origin(failure), first_line(failure)))
        if time.monotonic() - reported >= REPORT_EVERY_S:
            reported = time.monotonic()
            outbox.put(("stats", index, counts()))
    outbox.put(("done", index, counts()))
