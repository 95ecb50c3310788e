"""The lock storm: many processes' workers on one file, all at once, with
the default retry policy. It shows that contention costs time, never an
error: no ``BusyError`` reaches a caller, and no worker starves.

The processes open the database, report ready, and start their workers
together when the storm releases them (a line on each one's stdin), so the
first process to boot does not take the work before the last has started.
Handlers do no work of their own, so every worker spends its time on the
write lock.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import attrs

from litejobs._db import Database
from litejobs._errors import ConfigError
from litejobs.chaos._tree import TreeCheck, TreeShape, check_tree, seed_tree
from litejobs.chaos._victim import VictimSpec


@attrs.frozen
class StormConfig:
    """The settings of one lock storm."""

    processes: int = 8
    workers: int = 2
    # Children that each spawn one more, and do nothing else: 8,000 jobs.
    shape: TreeShape = attrs.field(
        factory=lambda: TreeShape(
            parents=8, children=500, fan_out=1, work_s=0.0, fail_every=0, plain=0
        )
    )
    busy_timeout: float = 5.0
    deadline_s: float = 600.0
    seed: int = 0

    def __attrs_post_init__(self) -> None:
        if min(self.processes, self.workers) < 1:
            raise ConfigError("processes and workers must each be at least 1")


@attrs.frozen
class StormResult:
    """What a storm did, from the processes' own counters and the file."""

    config: StormConfig
    wall_s: float  # from the release to the last worker's end
    completed_per_worker: tuple[int, ...]
    operations: int
    retries: int
    attempts: dict[int, int]  # attempts an operation needed -> operations
    busy_errors_surfaced: int  # BusyError raised by the retry policy, in any process
    busy_errors_caught: int  # BusyError the workers caught (a subset, if all is well)
    crashes: tuple[str, ...]
    check: TreeCheck

    @property
    def jobs_per_s(self) -> float:
        return self.check.completed / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def ok(self) -> bool:
        return (
            self.check.ok
            and not self.crashes
            and self.busy_errors_surfaced == 0
            and self.busy_errors_caught == 0
            and min(self.completed_per_worker, default=0) > 0
        )

    def spread(self) -> dict[str, float]:
        """How evenly the workers shared the jobs."""
        done = self.completed_per_worker
        mean = statistics.fmean(done) if done else 0.0
        return {
            "min": min(done, default=0),
            "median": statistics.median(done) if done else 0,
            "max": max(done, default=0),
            "min_over_fair_share": min(done, default=0) / mean if mean else 0.0,
            "cv": statistics.pstdev(done) / mean if mean else 0.0,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "config": attrs.asdict(self.config),
            "ok": self.ok,
            "wall_s": round(self.wall_s, 3),
            "jobs_per_s": round(self.jobs_per_s, 1),
            "completed_per_worker": list(self.completed_per_worker),
            "spread": self.spread(),
            "operations": self.operations,
            "retries": self.retries,
            "attempts": {str(k): v for k, v in self.attempts.items()},
            "busy_errors_surfaced": self.busy_errors_surfaced,
            "busy_errors_caught": self.busy_errors_caught,
            "crashes": list(self.crashes),
            "check": {**attrs.asdict(self.check), "lost": self.check.lost},
        }


def run_storm(config: StormConfig, directory: Path | None = None) -> StormResult:
    """Run one storm on a fresh file in ``directory`` (temporary if None)."""
    with tempfile.TemporaryDirectory(prefix="litejobs-storm-") as tmp:
        return _storm(config, Path(directory or tmp))


def _storm(config: StormConfig, where: Path) -> StormResult:
    where.mkdir(parents=True, exist_ok=True)
    path, log = where / "storm.db", where / "runs.log"
    for stale in [*where.glob("storm.db*"), log, *where.glob("stats-*.json")]:
        stale.unlink(missing_ok=True)  # a reused directory: old rows and counts would count
    with Database.open(path, seed=config.seed) as db:
        parents = seed_tree(db, config.shape, audit=False)
    specs = [
        VictimSpec(
            db=str(path),
            log=str(log),
            shape=config.shape,
            workers=config.workers,
            visibility_timeout=30.0,
            poll_interval=0.05,
            seed=config.seed * 1000 + i,
            busy_timeout=config.busy_timeout,
            barrier=True,
            stats=str(where / f"stats-{i}.json"),
        )
        for i in range(config.processes)
    ]
    procs = [_start(spec, where / f"victim-{i}.err") for i, spec in enumerate(specs)]
    crashes: list[str] = []
    try:
        for proc in procs:  # the barrier: every process has its database open
            assert proc.stdout is not None
            proc.stdout.readline()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.close()
        deadline = time.monotonic() + config.deadline_s
        for i, proc in enumerate(procs):
            try:
                code = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                crashes.append(f"process {i} still running at the deadline")
                continue
            if code != 0:
                err = (where / f"victim-{i}.err").read_text("utf-8", errors="replace")
                crashes.append(f"process {i}: exit {code}: {err.strip()[-300:]}")
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
    stats = [json.loads(f.read_text("utf-8")) for f in sorted(where.glob("stats-*.json"))]
    attempts: Counter[int] = Counter()
    for s in stats:
        attempts.update({int(k): v for k, v in s["attempts"].items()})
    started = min((s["started_ms"] for s in stats), default=0)
    ended = max((s["ended_ms"] for s in stats), default=0)
    workers = [w for s in stats for w in s["workers"]]
    return StormResult(
        config=config,
        wall_s=(ended - started) / 1000,
        completed_per_worker=tuple(w["completed"] for w in workers),
        operations=sum(s["operations"] for s in stats),
        retries=sum(s["retries"] for s in stats),
        attempts=dict(sorted(attempts.items())),
        # Every BusyError the retry policy gave up with, in any call of any
        # process, and those the workers caught, wherever they came from.
        busy_errors_surfaced=sum(s["busy_errors"] for s in stats),
        busy_errors_caught=sum(w["busy_errors"] for w in workers),
        crashes=tuple(crashes),
        check=check_tree(path, config.shape, parents, log),
    )


def _start(spec: VictimSpec, stderr: Path) -> subprocess.Popen[bytes]:
    with stderr.open("wb") as err:
        return subprocess.Popen(
            spec.to_argv(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            process_group=0,  # a Ctrl-C reaches the storm, which kills them
        )


def format_storm(results: list[StormResult]) -> str:
    """One column per storm, side by side."""
    header = "| | " + " | ".join(f"busy_timeout {r.config.busy_timeout:g} s" for r in results)
    lines = [
        f"litejobs chaos storm: {results[0].config.processes} processes x "
        f"{results[0].config.workers} workers, {results[0].check.expected} jobs on one file",
        "",
        header + " |",
        "|---|" + "---:|" * len(results),
    ]

    def row(name: str, values: list[str]) -> None:
        lines.append(f"| {name} | " + " | ".join(values) + " |")

    row("jobs completed", [f"{r.check.completed}/{r.check.expected}" for r in results])
    row("wall time, s", [f"{r.wall_s:.2f}" for r in results])
    row("jobs/s", [f"{r.jobs_per_s:.0f}" for r in results])
    row("database operations", [str(r.operations) for r in results])
    row("busy retries", [str(r.retries) for r in results])
    row(
        "attempts needed (attempts: operations)",
        [", ".join(f"{k}: {v}" for k, v in r.attempts.items()) for r in results],
    )
    row("BusyError surfaced", [str(r.busy_errors_surfaced) for r in results])
    row("BusyError caught by workers", [str(r.busy_errors_caught) for r in results])
    row("jobs per worker, min / median / max", [_spread(r) for r in results])
    row(
        "least-served worker / fair share",
        [f"{r.spread()['min_over_fair_share']:.2f}" for r in results],
    )
    row(
        "lost / stuck / integrity",
        [f"{r.check.lost} / {r.check.stuck} / {r.check.integrity}" for r in results],
    )
    row("crashed processes", [str(len(r.crashes)) for r in results])
    for r in results:
        lines += [f"crash: {c}" for c in r.crashes]
    return "\n".join(lines)


def _spread(result: StormResult) -> str:
    s = result.spread()
    return f"{s['min']:g} / {s['median']:g} / {s['max']:g}"
