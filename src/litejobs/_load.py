"""The scaled load scenario: the seed's load-test plan, run for real.

A run creates its parents on a fresh database file, spawns their children
(synthetic ``work`` jobs, or one seed ``crawl_url`` job per parent that
crawls the generated site), runs a :class:`WorkerPool` until every parent is
terminal or the time bound passes, and then checks the database itself:

- ``no_busy_errors_surfaced``: no ``BusyError`` reached any caller (retries
  are counted separately);
- ``all_messages_deleted``: the queue holds no message once the jobs are done;
- ``hierarchy_intact``: no orphan, and each parent's children are exactly the
  expected set (the payload numbers, or the reachable URLs), none twice;
- ``all_parents_terminal``;
- ``workers_staggered``: worker ``i``'s first receive came ``stagger * i``
  after the pool started;
- ``throughput_at_least_10_jobs_per_s``: the seed's throughput criterion.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import platform
import statistics
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import apsw
import attrs
import httpx
import trio

from litejobs._db import Database, rows
from litejobs._errors import ConfigError
from litejobs._jobs import JobStore
from litejobs._metrics import LoadResult, Sample, percentile
from litejobs._queue import Queue
from litejobs._runtime import TrioRuntime
from litejobs._site import Site, SiteConfig, serve_site
from litejobs._worker import Handler, WorkerPool
from litejobs._workloads import (
    CRAWL_KIND,
    SYNTHETIC_KIND,
    crawl_handlers,
    crawl_payload,
    expected_crawl,
    synthetic_handlers,
)

#: name -> (parents, children per parent)
SCENARIOS: dict[str, tuple[int, int]] = {"light": (5, 20), "medium": (10, 50), "heavy": (15, 100)}
WORKLOADS = ("synthetic", "crawl")
QUEUE = "load"
SAMPLE_EVERY_S = 0.1


@attrs.frozen
class LoadConfig:
    """One load run's settings. ``children`` is per parent for the synthetic
    workload; a crawl's children are the pages it reaches (``fan_out`` and
    ``depth`` shape the site, ``max_depth`` bounds the crawl)."""

    scenario: str = "light"
    parents: int = 5
    children: int = 20
    workers: int = 2
    stagger: float | None = None
    poll_interval: float = 1.0
    visibility_timeout: float = 30.0
    workload: str = "synthetic"
    work_s: float = 0.005
    fan_out: int = 3
    depth: int = 3
    max_depth: int = 3
    latency: float = 0.0
    error_rate: float = 0.0
    timeout: float = 600.0
    min_throughput: float = 10.0
    seed: int = 0

    @classmethod
    def for_scenario(cls, scenario: str, **overrides: Any) -> LoadConfig:
        """The named scenario's parents and children, with ``overrides``."""
        if scenario not in (*SCENARIOS, "custom"):
            choices = ", ".join([*SCENARIOS, "custom"])
            raise ConfigError(f"unknown scenario {scenario!r}; choose one of {choices}")
        parents, children = SCENARIOS.get(scenario, SCENARIOS["light"])
        settings: dict[str, Any] = {"parents": parents, "children": children}
        settings.update({k: v for k, v in overrides.items() if v is not None})
        config = cls(scenario=scenario, **settings)
        if config.workload not in WORKLOADS:
            raise ConfigError(f"workload must be one of {WORKLOADS}, got {config.workload!r}")
        if min(config.parents, config.children, config.workers) < 1:
            raise ConfigError("parents, children and workers must each be at least 1")
        return config

    def site(self) -> SiteConfig:
        return SiteConfig(
            fan_out=self.fan_out,
            depth=self.depth,
            latency=self.latency,
            error_rate=self.error_rate,
            seed=self.seed,
        )


@attrs.define
class _Run:
    """State shared by the tasks of one run."""

    config: LoadConfig
    db: Database
    store: JobStore
    queue: Queue
    parents: list[str]
    expected: dict[str, dict[str, str]]  # parent id -> child key -> its expected final status
    samples: list[Sample] = attrs.field(factory=list)


def run_load(
    config: LoadConfig,
    directory: Path | None = None,
    *,
    progress: Callable[[int, int, float], None] | None = None,
) -> LoadResult:
    """Run one load scenario on a fresh database file in ``directory`` (a
    temporary one if None) and return what it measured."""
    with tempfile.TemporaryDirectory(prefix="litejobs-load-") as tmp:
        where = Path(directory or tmp)
        where.mkdir(parents=True, exist_ok=True)
        path = where / "load.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        with Database.open(path, seed=config.seed) as db:
            return trio.run(_run_load, config, db, progress)


async def _run_load(
    config: LoadConfig, db: Database, progress: Callable[[int, int, float], None] | None
) -> LoadResult:
    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    runtime = TrioRuntime(db.clock)
    store, queue = JobStore(db), Queue(db, QUEUE)
    async with _workload(config, runtime) as (handlers, site):
        run = _Run(config, db, store, queue, parents=[], expected={})
        _create(run, site)
        pool = WorkerPool(
            store,
            queue,
            handlers,
            runtime=runtime,
            concurrency=config.workers,
            poll_interval=config.poll_interval,
            stagger=config.stagger,
            visibility_timeout=config.visibility_timeout,
            seed=config.seed,
        )
        total = sum(len(keys) for keys in run.expected.values())
        began = runtime.now_ms()
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            with trio.move_on_after(config.timeout):
                await _sample_until_done(run, pool, began, total, progress)
            pool.stop()
        wall = (runtime.now_ms() - began) / 1000
    return _measure(run, pool, site, started_at, wall)


@contextlib.asynccontextmanager
async def _workload(
    config: LoadConfig, runtime: TrioRuntime
) -> AsyncIterator[tuple[dict[str, Handler], Site | None]]:
    """The handlers for the configured workload, and the site when crawling."""
    if config.workload == "synthetic":
        yield synthetic_handlers(runtime), None
        return
    limits = httpx.Limits(max_connections=config.workers * 2)
    async with (
        serve_site(config.site()) as site,
        httpx.AsyncClient(timeout=30, limits=limits) as client,
    ):
        yield crawl_handlers(client), site


def _create(run: _Run, site: Site | None) -> None:
    """Create every parent and its first children, as the harness of the seed did."""
    config = run.config
    for index in range(config.parents):
        parent = run.store.create_parent(f"load-{config.workload}", {"index": index})
        run.parents.append(parent)
        if site is None:
            numbers = [str(n) for n in range(config.children)]
            payloads = [{"n": n, "work_s": config.work_s} for n in range(config.children)]
            run.store.spawn_children(
                parent, SYNTHETIC_KIND, payloads, queue=run.queue, keys=numbers
            )
            run.expected[parent] = dict.fromkeys(numbers, "completed")
        else:
            root = site.url("/")
            run.store.spawn_children(
                parent,
                CRAWL_KIND,
                [crawl_payload(root, 0, config.max_depth, True)],
                queue=run.queue,
                keys=[root],
            )
            run.expected[parent] = {
                site.url(path): "failed" if site.config.is_error(path) else "completed"
                for path in expected_crawl(site.config, config.max_depth)
            }


@attrs.frozen
class Checks:
    """What the database says after a run, counted without the pool's help."""

    orphans: int  # children whose parent row is missing
    messages_left: int  # messages still in the database
    parents_terminal: int
    parents_intact: int  # parents whose children's keys are exactly the expected set
    unexpected_outcomes: int  # children not in the expected set or status


def verify(conn: apsw.Connection, expected: dict[str, dict[str, str]]) -> Checks:
    """Check the database against what a run should have left: for each
    parent id, each child's key and its final status."""
    ((orphans,),) = rows(
        conn,
        "SELECT count(*) FROM jobs c LEFT JOIN jobs p ON c.parent_id = p.id "
        "WHERE c.parent_id IS NOT NULL AND p.id IS NULL",
    )
    ((left,),) = rows(conn, "SELECT count(*) FROM messages")
    found: dict[str, list[tuple[str, str]]] = {parent: [] for parent in expected}
    terminal = 0
    for parent in expected:
        found[parent] = rows(
            conn, "SELECT key, status FROM jobs WHERE parent_id = ? ORDER BY id", (parent,)
        )
        status = rows(conn, "SELECT status FROM jobs WHERE id = ?", (parent,))
        terminal += bool(status) and status[0][0] in ("completed", "failed", "cancelled")
    intact = sum(
        sorted(key for key, _ in children) == sorted(expected[parent])
        for parent, children in found.items()
    )
    unexpected = sum(
        expected[parent].get(key) != status
        for parent, children in found.items()
        for key, status in children
    )
    return Checks(orphans, left, terminal, intact, unexpected)


def _snapshot(db: Database) -> tuple[int, int, int]:
    """(children terminal, queue depth, parents terminal), read consistently."""

    def read(conn: apsw.Connection) -> tuple[int, int, int]:
        ((done,),) = rows(
            conn,
            "SELECT count(*) FROM jobs WHERE parent_id IS NOT NULL "
            "AND status IN ('completed', 'failed', 'cancelled')",
        )
        ((depth,),) = rows(conn, "SELECT count(*) FROM messages WHERE queue = ?", (QUEUE,))
        ((terminal,),) = rows(
            conn,
            "SELECT count(*) FROM jobs WHERE parent_id IS NULL "
            "AND status IN ('completed', 'failed', 'cancelled')",
        )
        return done, depth, terminal

    return db.read(read)


async def _sample_until_done(
    run: _Run,
    pool: WorkerPool,
    began: int,
    total: int,
    progress: Callable[[int, int, float], None] | None,
) -> None:
    while True:
        done, depth, terminal = await pool.call(_snapshot, run.db)
        elapsed = (pool.runtime.now_ms() - began) / 1000
        run.samples.append(Sample(t=elapsed, completed=done, queue_depth=depth))
        if progress:
            progress(done, total, elapsed)
        if terminal == len(run.parents):
            return
        await pool.runtime.sleep(SAMPLE_EVERY_S)


def _measure(
    run: _Run, pool: WorkerPool, site: Site | None, started_at: str, wall: float
) -> LoadResult:
    config, conn = run.config, run.db.connection()
    checks = verify(conn, run.expected)
    children = rows(
        conn,
        "SELECT status, created_at, completed_at FROM jobs WHERE parent_id IS NOT NULL",
    )
    completion = [(done - created) / 1000 for _, created, done in children if done is not None]
    stats = pool.stats
    offsets = [w.started_at for w in stats.workers]
    stagger = pool.stagger  # the pool resolves the default
    tolerance = max(0.05, 0.1 * stagger)
    # A worker whose turn came after the work was done never started: that is
    # the stagger too.
    staggered = all(
        abs(o - i * stagger) <= tolerance if o is not None else i * stagger >= wall - tolerance
        for i, o in enumerate(offsets)
    )
    jobs = len(children)
    completed = sum(1 for status, _, _ in children if status == "completed")
    throughput = completed / wall if wall > 0 else 0.0
    retry = run.db.retry_metrics
    received = stats.total("received")
    busy_surfaced = retry.busy_errors  # every BusyError raised, by any call
    depths = [s.queue_depth for s in run.samples] or [0]
    metrics: dict[str, Any] = {
        "jobs_total": jobs,
        "jobs_completed": completed,
        "jobs_failed": sum(1 for status, _, _ in children if status == "failed"),
        "jobs_unexpected_outcome": checks.unexpected_outcomes,
        "wall_time_s": wall,
        "throughput_jobs_per_s": throughput,
        "mean_completion_s": _finite(statistics.fmean(completion) if completion else math.nan),
        "p50_completion_s": _finite(percentile(completion, 50)),
        "p95_completion_s": _finite(percentile(completion, 95)),
        "p99_completion_s": _finite(percentile(completion, 99)),
        "busy_errors_surfaced": busy_surfaced,
        "busy_retries": retry.retries,
        "attempts_distribution": {str(k): v for k, v in retry.attempts.items()},
        "messages_sent": jobs,
        "messages_deleted": jobs - checks.messages_left,
        "messages_redelivered": max(0, received - jobs),
        "deletion_rate": (jobs - checks.messages_left) / jobs if jobs else 1.0,
        "hierarchy_integrity": 0.0 if checks.orphans else checks.parents_intact / len(run.parents),
        "parents_terminal": checks.parents_terminal / len(run.parents),
        "queue_depth_mean": statistics.fmean(depths),
        "queue_depth_peak": max(depths),
        "worker_utilisation": [
            round(w.busy_s / (wall - w.started_at), 4)
            if w.started_at is not None and wall > w.started_at
            else 0.0
            for w in stats.workers
        ],
        "worker_start_offsets_s": offsets,
        "pool": {
            k: stats.total(k)
            for k in (
                "received",
                "completed",
                "failed",
                "retried",
                "released",
                "skipped",
                "lost_leases",
            )
        },
    }
    if site is not None:
        metrics["http_requests"] = sum(site.requests.values())
        metrics["http_pages_requested"] = len(site.requests)
    criteria = {
        "no_busy_errors_surfaced": busy_surfaced == 0,
        "all_messages_deleted": checks.messages_left == 0,
        "hierarchy_intact": metrics["hierarchy_integrity"] == 1.0,
        "all_parents_terminal": checks.parents_terminal == len(run.parents),
        "jobs_finished_as_expected": checks.unexpected_outcomes == 0,
        "workers_staggered": staggered,
        "throughput_at_least_10_jobs_per_s": throughput >= config.min_throughput,
    }
    return LoadResult(
        scenario=config.scenario,
        started_at=started_at,
        config={**attrs.asdict(config), "stagger_s": stagger, **_machine()},
        criteria=criteria,
        metrics=metrics,
        samples=tuple(run.samples),
        completion_times_s=tuple(completion),
    )


def _finite(value: float) -> float | None:
    """JSON has no NaN: an undefined figure (no job finished) is null."""
    return None if math.isnan(value) else value


def _machine() -> dict[str, str]:
    return {
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "sqlite": apsw.sqlite_lib_version(),
    }
