"""The fuzz loop's speed beside plain pytest's, measured in one run.

For each machine and round, the baseline runs the machine's ``TestCase``
exactly as ``pytest`` does (``run_state_machine_as_test`` under the
profile, no example database), again and again until ``seconds`` have
passed, as repeated pytest runs would, counting examples as machines are
built; then the fuzz loop runs in this process for the same wall time, one
process, the same profile. Rounds alternate so that drift in the machine
hits both sides alike. The ratio is fuzz examples/s over pytest's.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import attrs
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, run_state_machine_as_test

from litejobs.fuzz._child import run_inputs
from litejobs.fuzz._target import FuzzTarget
from litejobs.testing._profiles import register_profiles
from litejobs.testing._registry import build_machine


@attrs.frozen
class BenchRow:
    machine: str
    pytest_per_s: tuple[float, ...]
    #: Inputs that ran to the end (passed or failed), per second.
    fuzz_per_s: tuple[float, ...]
    #: Every input, including those Hypothesis gave up on part-way.
    fuzz_inputs_per_s: tuple[float, ...]

    @property
    def ratio(self) -> float:
        """Fuzz examples that ran to the end over pytest's examples started:
        the stricter of the two ratios, since pytest's count includes the few
        examples Hypothesis gives up on."""
        return statistics.median(self.fuzz_per_s) / statistics.median(self.pytest_per_s)

    @property
    def inputs_ratio(self) -> float:
        """Like for like: every input started on both sides."""
        return statistics.median(self.fuzz_inputs_per_s) / statistics.median(self.pytest_per_s)

    def to_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "pytest_examples_per_s": round(statistics.median(self.pytest_per_s), 2),
            "fuzz_examples_per_s": round(statistics.median(self.fuzz_per_s), 2),
            "fuzz_inputs_per_s": round(statistics.median(self.fuzz_inputs_per_s), 2),
            "ratio": round(self.ratio, 3),
            "inputs_ratio": round(self.inputs_ratio, 3),
            "rounds": len(self.pytest_per_s),
        }


@contextmanager
def _counting_machines() -> Iterator[list[int]]:
    """Count machines built, i.e. examples started, on either side."""
    count = [0]
    original = RuleBasedStateMachine.__init__

    def counted(self: RuleBasedStateMachine) -> None:
        count[0] += 1
        original(self)

    RuleBasedStateMachine.__init__ = counted  # type: ignore[method-assign]
    try:
        yield count
    finally:
        RuleBasedStateMachine.__init__ = original  # type: ignore[method-assign]


class _Never:
    """A stop flag that is never set: the deadline ends the loop."""

    value = 0


class _Drop:
    """An outbox for the loop's messages that nobody reads."""

    def send(self, message: object) -> None:
        pass


def bench_fuzz(
    machines: Sequence[str],
    *,
    profile: str = "ci",
    rounds: int = 3,
    seconds: float = 20.0,
    chooser: str = "hypothesis",
    progress: Callable[[str], None] = lambda _: None,
) -> list[BenchRow]:
    register_profiles()
    previous = settings.get_current_profile_name()
    settings.load_profile(profile)  # the machines take their settings from it
    try:
        return [_bench_machine(name, rounds, seconds, chooser, progress) for name in machines]
    finally:
        settings.load_profile(previous)


def _bench_machine(
    name: str, rounds: int, seconds: float, chooser: str, progress: Callable[[str], None]
) -> BenchRow:
    baseline: list[float] = []
    fuzzed: list[float] = []
    inputs: list[float] = []
    for round_ in range(rounds):
        machine = build_machine(name, chooser=chooser)
        config = settings(machine.TestCase.settings, database=None)
        with _counting_machines() as count:
            start = time.perf_counter()
            while True:  # as repeated pytest runs would
                run_state_machine_as_test(machine, settings=config)
                spent = time.perf_counter() - start
                if spent >= seconds:
                    break
        baseline.append(count[0] / spent)
        target = FuzzTarget.build(name, chooser=chooser, database=None)
        with _counting_machines() as count:
            start = time.perf_counter()
            run_inputs([target], random.Random(round_), time.monotonic() + spent, _Never(), _Drop())
            took = time.perf_counter() - start
        fuzzed.append(target.stats.examples / took)
        inputs.append(count[0] / took)
        progress(
            f"{name} round {round_ + 1}/{rounds}: pytest {baseline[-1]:.1f}/s, "
            f"fuzz {fuzzed[-1]:.1f}/s ({inputs[-1]:.1f} inputs/s) over {spent:.1f} s"
        )
    return BenchRow(name, tuple(baseline), tuple(fuzzed), tuple(inputs))


def format_bench(rows: Sequence[BenchRow], *, profile: str) -> str:
    lines = [
        f"examples/s, median of {len(rows[0].pytest_per_s) if rows else 0} rounds, "
        f"profile {profile}, one process each",
        f"{'machine':<14}{'pytest':>9}{'fuzz':>9}{'ratio':>8}{'fuzz inputs':>13}{'ratio':>8}",
    ]
    for row in rows:
        data = row.to_json()
        lines.append(
            f"{row.machine:<14}{data['pytest_examples_per_s']:>9.1f}"
            f"{data['fuzz_examples_per_s']:>9.1f}{row.ratio:>7.2f}x"
            f"{data['fuzz_inputs_per_s']:>13.1f}{row.inputs_ratio:>7.2f}x"
        )
    return "\n".join(lines)
