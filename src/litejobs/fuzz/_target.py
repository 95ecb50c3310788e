"""One machine as a fuzz target: Hypothesis's ``fuzz_one_input`` on the same
test ``pytest`` runs, so that a failure it saves is one ``pytest`` replays.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from pathlib import Path

import attrs
from hypothesis import settings
from hypothesis.core import HypothesisHandle
from hypothesis.database import ExampleDatabase
from hypothesis.internal.observability import with_observability_callback
from hypothesis.stateful import get_state_machine_test

from litejobs.fuzz._stats import MachineStats
from litejobs.testing._registry import build_machine, rule_names

#: Bytes fed to one input: Hypothesis's own buffer size. Fewer run out in
#: the middle of an example more often; more are never read.
BUFFER_BYTES = 8 * 1024


@attrs.define
class FuzzTarget:
    name: str
    fuzz_one_input: Callable[[bytes], bytes | None]
    rules_total: int
    stats: MachineStats = attrs.field(factory=MachineStats)

    @classmethod
    def build(cls, name: str, *, chooser: str, database: ExampleDatabase | None) -> FuzzTarget:
        """The target for machine ``name`` under the profile loaded now;
        failures go to ``database``."""
        machine = build_machine(name, chooser=chooser)
        config = settings(
            machine.TestCase.settings, database=database, derandomize=False, deadline=None
        )
        # Hypothesis splits this out of run_state_machine_as_test for fuzzers:
        # the same test, and so the same database key, as the TestCase's.
        test = get_state_machine_test(machine, settings=config)
        # Typed as a plain callable since Hypothesis 6.16x; it is a @given test.
        handle: HypothesisHandle = getattr(test, "hypothesis")  # noqa: B009
        return cls(name, handle.fuzz_one_input, len(rule_names(machine)))

    def run(self, buffer: bytes) -> BaseException | None:
        """Run one input; count it; return the failure, if it failed (Hypothesis
        has then saved it)."""
        observed: list = []
        start = time.perf_counter()
        failure: BaseException | None = None
        with with_observability_callback(observed.append):
            try:
                self.fuzz_one_input(buffer)
            except Exception as exc:
                failure = exc
        self.stats.seconds += time.perf_counter() - start
        for observation in observed:
            if getattr(observation, "type", None) == "test_case":
                self.stats.observe(observation)
        if failure is not None:
            self.stats.failed(origin(failure), first_line(failure))
        return failure


def origin(exc: BaseException) -> str:
    """Where a failure comes from, stable across inputs that hit one bug:
    the exception's type and the line that raised it."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    text = str(exc)
    if text.startswith("invariant "):  # InvariantError names its invariant
        return f"{type(exc).__name__}: {text.split(':')[0]}"
    return f"{type(exc).__name__}{where}"


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= 200 else text[:197] + "..."
