"""The loop each fuzz process runs: fresh random bytes into the machines in
turn until the deadline or the stop flag, with counts sent home as JSON."""

from __future__ import annotations

import contextlib
import random
import signal
import time
from typing import Any, Protocol

from hypothesis import settings

from litejobs.fuzz._databases import open_database
from litejobs.fuzz._plan import FuzzPlan
from litejobs.fuzz._target import BUFFER_BYTES, FuzzTarget, first_line, origin

#: Seconds between the counts a process sends while it runs.
REPORT_EVERY_S = 0.5


class Outbox(Protocol):
    """Where a process's messages go: a pipe's ``send`` in a real run."""

    def send(self, message: Any) -> None: ...


class StopFlag(Protocol):
    """Non-zero ``value`` asks the loop to end after its current input."""

    value: int


def fuzz_process(
    plan: FuzzPlan, index: int, deadline: float, stop: StopFlag, outbox: Outbox
) -> None:
    """Run process ``index`` of ``plan`` until ``deadline`` (``time.monotonic``,
    which every process on the machine shares) or until ``stop`` is set.

    Messages: ``("stats", {machine: counts})`` now and then, ``("failure",
    machine, origin, message)`` at once, ``("error", text)`` if the process
    cannot start, and ``("done", counts)`` last. SIGINT is ignored here: the
    parent stops the loop between inputs, so an interrupt never lands inside
    a test, where Hypothesis would save it as a failure. SIGTERM too: a
    ``kill`` of the whole process group reaches the parent, which stops us."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.ExitStack() as stack:
        try:
            from litejobs.testing._mutants import mutant
            from litejobs.testing._profiles import register_profiles

            register_profiles()
            settings.load_profile(plan.profile)
            database = open_database(plan.database)
            if plan.mutant:
                stack.enter_context(mutant(plan.mutant))
            targets = [
                FuzzTarget.build(name, chooser=plan.chooser, database=database)
                for name in plan.machines
            ]
        except Exception as exc:
            outbox.send(("error", f"{type(exc).__name__}: {exc}"))
            return
        run_inputs(targets, random.Random(f"{plan.seed}:{index}"), deadline, stop, outbox)


def run_inputs(
    targets: list[FuzzTarget],
    rng: random.Random,
    deadline: float,
    stop: StopFlag,
    outbox: Outbox,
) -> None:
    """Feed ``targets`` in turn; the loop ``litejobs fuzz`` runs in each
    process, and the one its benchmark times."""

    def counts() -> dict[str, Any]:
        return {target.name: target.stats.to_json() for target in targets}

    reported = time.monotonic()
    turn = 0
    while not stop.value and time.monotonic() < deadline:
        target = targets[turn % len(targets)]
        turn += 1
        failure = target.run(rng.randbytes(BUFFER_BYTES))
        if failure is not None:
            outbox.send(("failure", target.name, origin(failure), first_line(failure)))
        if time.monotonic() - reported >= REPORT_EVERY_S:
            reported = time.monotonic()
            outbox.send(("stats", counts()))
    outbox.send(("done", counts()))
