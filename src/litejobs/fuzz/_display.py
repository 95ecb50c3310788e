"""The live view of a fuzz run: redrawn in place on a terminal, a line now
and then in a log."""

from __future__ import annotations

import sys
from typing import TextIO

from litejobs.fuzz._runner import FuzzProgress

#: Seconds between lines when the output is not a terminal.
LOG_EVERY_S = 10.0
STOPPING = "stopping: each process ends after its current input; a Ctrl-C now kills them"


def render(progress: FuzzProgress) -> list[str]:
    """The view as lines: a progress bar, a row per machine, the failures."""
    fraction = min(progress.elapsed_s / progress.budget_s, 1.0)
    bar = "#" * round(fraction * 30)
    state = "stopping (Ctrl-C kills)" if progress.stopping else "fuzzing"
    lines = [
        f"{state} [{bar:<30}] {fraction:4.0%}  "
        f"{progress.elapsed_s:,.0f}/{progress.budget_s:,.0f} s",
        f"  {'machine':<14}{'examples':>9}{'failures':>9}{'rules':>8}{'events':>7}{'ex/s':>8}",
    ]
    for name, stats in progress.machines.items():
        rate = stats.examples / progress.elapsed_s if progress.elapsed_s else 0.0
        rules = f"{len(stats.rules)}/{progress.rules_total.get(name, 0)}"
        lines.append(
            f"  {name:<14}{stats.examples:>9}{stats.failures:>9}{rules:>8}"
            f"{len(stats.events):>7}{rate:>8.1f}"
        )
    lines += [f"  FAILED {failure}" for failure in progress.failures[:5]]
    if len(progress.failures) > 5:
        lines.append(f"  ... and {len(progress.failures) - 5} more distinct failures")
    return lines


class LiveDisplay:
    """Call with each :class:`FuzzProgress`; ``close`` when the run ends."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.drawn = 0
        self.logged_at = -LOG_EVERY_S
        self.last: FuzzProgress | None = None
        self.said_stopping = False

    def __call__(self, progress: FuzzProgress) -> None:
        self.last = progress
        if progress.stopping and not self.said_stopping and progress.elapsed_s < progress.budget_s:
            self.said_stopping = True
            if not self.tty:
                print(STOPPING, file=self.stream, flush=True)
        if self.tty:
            up = f"\x1b[{self.drawn}F" if self.drawn else ""
            lines = render(progress)
            self.stream.write(up + "\x1b[J" + "\n".join(lines) + "\n")
            self.drawn = len(lines)
            self.stream.flush()
        elif progress.elapsed_s - self.logged_at >= LOG_EVERY_S:
            self.logged_at = progress.elapsed_s
            self.log(progress)

    def log(self, progress: FuzzProgress) -> None:
        examples = sum(s.examples for s in progress.machines.values())
        print(
            f"fuzz {progress.elapsed_s:,.0f}/{progress.budget_s:,.0f} s: {examples} examples, "
            f"{len(progress.failures)} distinct failures",
            file=self.stream,
            flush=True,
        )

    def close(self) -> None:
        if not self.tty and self.last is not None:
            self.log(self.last)
