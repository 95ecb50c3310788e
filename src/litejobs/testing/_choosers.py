"""Choosers: who proceeds at each scheduling decision.

All of them see the same thing, the ready tasks sorted by name, and return an
index into it, so a schedule found by one replays under :class:`ReplayChooser`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from hypothesis import strategies as st

from litejobs.testing._scheduler import Chooser, Option


class HypothesisChooser(Chooser):
    """One ``data.draw`` per decision, so the schedule is part of Hypothesis's
    choice sequence: it replays from the example database and shrinks towards
    "the first ready task, in name order" at every decision."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def choose(self, options: Sequence[Option]) -> int:
        if len(options) == 1:
            return 0
        names = "|".join(o.task for o in options)
        return self.data.draw(st.integers(0, len(options) - 1), label=f"next of {names}")


class PCTChooser(Chooser):
    """Probabilistic concurrency testing (Burckhardt et al., 2010): every task
    gets a random priority, the highest-priority ready task runs, and at
    ``depth - 1`` change points the running task drops below all others. A bug
    of depth ``d`` is found with probability at least 1/(n·k^(d-1)) per run.
    Priorities and change points are drawn from ``data``, so runs replay and
    shrink like any other draw. One chooser serves a whole run (a state
    machine example): set ``data`` afresh for each rule that decides, and
    priorities and change points carry over."""

    def __init__(self, data: st.DataObject, *, depth: int = 3, horizon: int = 64) -> None:
        self.data = data
        self.changes = set(
            data.draw(
                st.lists(
                    st.integers(1, horizon), min_size=depth - 1, max_size=depth - 1, unique=True
                ),
                label="PCT change points",
            )
        )
        self.priorities: dict[str, int] = {}
        self.decisions = 0
        self._low = 0

    def choose(self, options: Sequence[Option]) -> int:
        self.decisions += 1
        for option in options:
            if option.task not in self.priorities:
                self.priorities[option.task] = self.data.draw(
                    st.integers(1, 1000), label=f"PCT priority of {option.task}"
                )
        best = max(range(len(options)), key=lambda i: self.priorities[options[i].task])
        if self.decisions in self.changes:
            self._low -= 1
            self.priorities[options[best].task] = self._low
        return best


class RandomChooser(Chooser):
    """Uniformly random decisions from ``random.Random(seed)``."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def choose(self, options: Sequence[Option]) -> int:
        return self.rng.randrange(len(options))


class FairChooser(Chooser):
    """Round robin with a quantum: the task that ran last goes on while it is
    ready, for up to ``quantum`` decisions in a row; then the ready task that
    has waited longest runs. Every ready task gets its turn, and operations
    are rarely cut in two, so a drain at the end of a test finishes the work
    rather than hunting for races (the rules before it do that)."""

    def __init__(self, quantum: int = 16) -> None:
        self.quantum = quantum
        self.turn = 0
        self.last: dict[str, int] = {}
        self.current: str | None = None
        self.run_length = 0

    def choose(self, options: Sequence[Option]) -> int:
        self.turn += 1
        names = [o.task for o in options]
        if self.current in names and self.run_length < self.quantum:
            index = names.index(self.current)
            self.run_length += 1
        else:
            index = min(range(len(options)), key=lambda i: self.last.get(names[i], -1))
            self.current, self.run_length = names[index], 1
        self.last[names[index]] = self.turn
        return index


class ReplayDivergedError(AssertionError):
    """A replayed schedule names a task that is not ready at that decision:
    the code under test no longer behaves as when the schedule was recorded."""


class ReplayChooser(Chooser):
    """Replays ``decisions``: task names (as in a trace) or indices. After
    the last one it picks the first ready task."""

    def __init__(self, decisions: Sequence[str | int]) -> None:
        self.decisions = list(decisions)
        self.position = 0

    def choose(self, options: Sequence[Option]) -> int:
        if self.position >= len(self.decisions):
            return 0
        wanted = self.decisions[self.position]
        self.position += 1
        if isinstance(wanted, int):
            if not 0 <= wanted < len(options):
                raise ReplayDivergedError(
                    f"decision {self.position}: index {wanted} but only {len(options)} ready"
                )
            return wanted
        names = [o.task for o in options]
        if wanted not in names:
            raise ReplayDivergedError(
                f"decision {self.position}: {wanted} is not ready (ready: {', '.join(names)})"
            )
        return names.index(wanted)
