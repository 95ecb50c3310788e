"""``litejobs selfcheck``: run the properties against every seeded bug.

For each mutant the machines run under a Hypothesis profile (``ci`` by
default), the mutant's own target first. The first failure is timed with
shrinking off; then the same derandomized search runs again with shrinking on,
and the shrunk example is measured: its rule steps and scheduling decisions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from hypothesis import Phase, settings
from hypothesis.database import InMemoryExampleDatabase
from hypothesis.stateful import RuleBasedStateMachine, run_state_machine_as_test

from litejobs.testing._mutants import MUTANTS, mutant
from litejobs.testing._registry import MACHINES, build_machine


@attrs.frozen
class MutantResult:
    """What the properties did with one mutant. The figures are None when the
    mutant escaped."""

    mutant: str
    bug: str
    caught: bool
    machine: str | None = None
    examples_to_failure: int | None = None
    seconds_to_failure: float | None = None
    shrunk_steps: int | None = None
    shrunk_decisions: int | None = None
    #: The rule calls of the shrunk example, as Hypothesis prints them.
    shrunk_example: tuple[str, ...] = ()
    failure: str | None = None
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


class _Watch:
    """Counts the machines a run builds and keeps the last (the final replay
    of a failure is the last one built)."""

    def __init__(self, machine: type[RuleBasedStateMachine]) -> None:
        watch = self
        self.built = 0
        self.last: Any = None

        class Watched(machine):  # type: ignore[misc, valid-type]
            def __init__(self) -> None:
                watch.built += 1
                watch.last = self
                super().__init__()

        Watched.__name__ = Watched.__qualname__ = machine.__name__
        self.machine = Watched


def _rule_calls(error: BaseException, machine: type[RuleBasedStateMachine]) -> tuple[str, ...]:
    """The rule calls in the falsifying example Hypothesis attached to ``error``."""
    rules = {
        name for name in dir(machine) if hasattr(getattr(machine, name), "hypothesis_stateful_rule")
    }
    lines = "\n".join(getattr(error, "__notes__", [])).splitlines()
    return tuple(
        line[6:] for line in lines if line.startswith("state.") and line[6:].split("(")[0] in rules
    )


def _headline(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _run(machine: type[RuleBasedStateMachine], config: settings) -> BaseException | None:
    try:
        run_state_machine_as_test(machine, settings=config)
    except Exception as exc:  # the property failed: that is what we look for
        return exc
    return None


def check_mutant(
    name: str,
    profile: settings,
    *,
    shrink: bool = True,
    progress: Callable[[str], None] = lambda _: None,
) -> MutantResult:
    """Run the machines against mutant ``name`` until one fails; shrink that
    failure (unless ``shrink`` is false: the shrunk figures are then None)."""
    found = MUTANTS[name]
    began = time.perf_counter()
    order = [found.target, *(m for m in MACHINES if m != found.target)]
    # One failure per run (the first found is the one timed and shrunk), and
    # each machine's own step count.
    for machine_name in order:
        watch = _Watch(build_machine(machine_name))
        progress(f"{name}: {machine_name} machine")
        steps = watch.machine.TestCase.settings.stateful_step_count
        # A derandomized search repeats itself, so the shrinking run finds the
        # same failure by searching again. Otherwise it starts from the
        # failure the search saved. (Under the ci profile, starting from the
        # saved example shrank much less on 2026-12-03: up to 31 steps.)
        saved = None if profile.derandomize else InMemoryExampleDatabase()
        single = settings(
            profile, database=saved, report_multiple_bugs=False, stateful_step_count=steps
        )
        search = settings(single, phases=[Phase.explicit, Phase.generate])
        with mutant(name):
            started = time.perf_counter()
            failure = _run(watch.machine, search)
            to_failure = time.perf_counter() - started
            if failure is None:
                continue
            examples = watch.built
            shrunk = None
            if shrink:
                progress(f"{name}: caught by the {machine_name} machine; shrinking")
                shrunk = _run(watch.machine, single)
        calls = _rule_calls(shrunk, watch.machine) if shrunk is not None else None
        return MutantResult(
            mutant=name,
            bug=found.bug,
            caught=True,
            machine=machine_name,
            examples_to_failure=examples,
            seconds_to_failure=round(to_failure, 2),
            shrunk_steps=None if calls is None else len(calls),
            shrunk_decisions=getattr(watch.last, "decisions", 0) if shrink else None,
            shrunk_example=calls or (),
            failure=_headline(shrunk or failure),
            seconds=round(time.perf_counter() - began, 2),
        )
    return MutantResult(
        mutant=name, bug=found.bug, caught=False, seconds=round(time.perf_counter() - began, 2)
    )


def _profile(name: str) -> settings:
    return settings.get_profile(name)


def selfcheck(
    names: Sequence[str] | None = None,
    *,
    profile: str = "ci",
    progress: Callable[[str], None] = lambda _: None,
) -> list[MutantResult]:
    """Check every mutant (or those named) under the Hypothesis profile ``profile``."""
    from litejobs.testing._profiles import register_profiles

    register_profiles()
    chosen = list(MUTANTS) if names is None else list(names)
    unknown = [n for n in chosen if n not in MUTANTS]
    if unknown:
        raise KeyError(f"no mutant {', '.join(unknown)}; known: {', '.join(MUTANTS)}")
    config = _profile(profile)
    return [check_mutant(name, config, progress=progress) for name in chosen]


def format_results(results: Sequence[MutantResult]) -> str:
    """A table: one row per mutant."""
    header = (
        f"{'mutant':<24} {'caught':<7} {'by':<13} {'examples':>8} {'s to fail':>9} "
        f"{'steps':>5} {'decisions':>9}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        if r.caught:
            steps = "-" if r.shrunk_steps is None else r.shrunk_steps
            decisions = "-" if r.shrunk_decisions is None else r.shrunk_decisions
            lines.append(
                f"{r.mutant:<24} {'yes':<7} {r.machine:<13} {r.examples_to_failure:>8} "
                f"{r.seconds_to_failure:>9.2f} {steps:>5} {decisions:>9}"
            )
        else:
            lines.append(f"{r.mutant:<24} {'ESCAPED':<7}")
    caught = sum(r.caught for r in results)
    lines.append(f"\n{caught} of {len(results)} mutants caught")
    return "\n".join(lines)
