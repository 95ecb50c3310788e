"""The interleaving machine: real ``WorkerPool`` workers on a real file, with
the order of their steps drawn by Hypothesis through the scheduler.

Rules add work (some of it failing), cancel parents, start, stop, release and
crash workers, let an intruder connection hold the write lock, move the clock,
and run scheduling decisions. After every rule the
trace and the database are checked against invariants 1-8 of the design; at
the end the pool is drained under a fair schedule and must leave every job
finished exactly once and no message behind.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw
import attrs
from hypothesis import event, note, settings, target
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from litejobs._db import BusyAttempt, Database, rows
from litejobs._errors import InvalidTransitionError
from litejobs._jobs import Job, JobStore
from litejobs._payload import loads
from litejobs._queue import Message, Queue
from litejobs._worker import JobContext, WorkerPool
from litejobs.testing._choosers import FairChooser, HypothesisChooser, PCTChooser
from litejobs.testing._loop import LoopThread
from litejobs.testing._scheduler import Chooser, Scheduler, Step, format_trace

#: The lease every worker takes, in seconds; heartbeats renew it every third.
VISIBILITY = 10.0
#: How long a job's handler works, in virtual seconds: none, less than a
#: lease, more than a lease (so only heartbeats keep it).
WORK = [0.0, 0.0, 4.0, 12.0]
#: Jobs one example may hold: enough for every race between a few workers,
#: few enough that the final drain stays short.
MAX_CHILDREN = 6
#: Rules an example may run (Hypothesis's default is 50).
STEPS = 20
#: Decisions a PCT schedule spreads its change points over: about what the
#: rules of one example make.
PCT_HORIZON = 40
#: The workers' longest back-off between empty receives, in seconds.
POLL_INTERVAL = 1.0
#: Decisions past which a drain counts as a livelock (time bounds it first).
LIVELOCK_DECISIONS = 20_000


class InvariantError(AssertionError):
    """An invariant of the design does not hold; the message names it."""


@attrs.define
class _Lease:
    receipt: str
    expires_ms: int
    task: str


def interleaving_machine(
    *, chooser: str = "hypothesis", max_workers: int = 3, max_receive: int = 3, steps: int = STEPS
) -> type[RuleBasedStateMachine]:
    """Build the interleaving machine. ``chooser`` is ``"hypothesis"`` (one
    draw per decision) or ``"pct"`` (:class:`PCTChooser`, drawn per run);
    ``steps`` is the most rules an example runs."""
    if chooser not in ("hypothesis", "pct"):
        raise ValueError(f"chooser must be 'hypothesis' or 'pct', got {chooser!r}")
    lease_ms = round(VISIBILITY * 1000)

    def checked(fn: Callable[..., None]) -> Callable[..., None]:
        """Mark the machine unclean while ``fn`` runs, so that a teardown after
        a failure does not drain, and show the schedule when ``fn`` fails."""

        @functools.wraps(fn)
        def wrapper(self: InterleavingMachine, *args: Any, **kwargs: Any) -> None:
            self.clean = False
            try:
                fn(self, *args, **kwargs)
            except BaseException as exc:
                self.show_schedule(exc)
                raise
            self.clean = True

        return wrapper

    class InterleavingMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.clean = True
            self.steps = 0
            self.directory = tempfile.mkdtemp(prefix="litejobs-interleaving-")
            self.scheduler = Scheduler()
            self.db = Database.open(
                Path(self.directory) / "jobs.db", clock=self.scheduler.clock, busy_timeout=0, seed=0
            )
            self.scheduler.watch(self.db)
            self.scheduler.on_step = self.verify
            self.store = JobStore(self.db)
            self.queue = Queue(self.db, "jobs", max_receive=max_receive)
            self.loop = LoopThread()
            self.workers: dict[str, WorkerPool] = {}
            self.started = 0
            self.children: dict[str, str] = {}  # child id -> parent id
            self.plain: list[str] = []
            self.lock_holder: apsw.Connection | None = None
            self.checked_steps = 0
            self.leases: dict[str, _Lease] = {}
            self.starts: Counter[str] = Counter()
            self.completions: Counter[str] = Counter()
            self.handled: Counter[str] = Counter()
            self.shown = False
            self.pct: PCTChooser | None = None
            # What the search reached, for Hypothesis's statistics and the
            # fuzz summary; gathered on trio's thread, reported on the test's.
            self.seen: set[str] = set()
            self.busy_retries = 0

        # -- reporting -------------------------------------------------------------

        @property
        def decisions(self) -> int:
            return self.scheduler.decisions

        def show_schedule(self, exc: BaseException) -> None:
            if not self.shown:
                self.shown = True
                note(
                    f"schedule ({self.decisions} decisions):\n"
                    f"{format_trace(self.scheduler.trace, last=40)}\n"
                    f"{'':>8}  violated: {type(exc).__name__}: {str(exc).splitlines()[0]}"
                )

        def fail(self, number: int, name: str, message: str) -> None:
            raise InvariantError(f"invariant {number} ({name}): {message}")

        # -- the workers' handler ----------------------------------------------------

        async def handle(self, job: Job, context: JobContext) -> Any:
            work = job.payload["work"]
            if work:
                await context.pool.runtime.sleep(work)
            if job.attempts <= job.payload["fails"]:
                raise RuntimeError(f"attempt {job.attempts} of job {job.id} fails, as told")
            self.handled[job.id] += 1
            return {"done": job.id}

        # -- adding work ---------------------------------------------------------------

        def harness_write(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
            """Write from the test's own connection, once: if a lock is held,
            add nothing (and say so in the trace)."""
            try:
                return self.db.attempt_once(fn, *args)
            except BusyAttempt:
                self.scheduler.log("harness", what, "database locked: nothing added")
                return None

        @precondition(lambda self: len(self.children) < MAX_CHILDREN)
        @rule(
            children=st.integers(1, 3),
            work=st.sampled_from(WORK),
            fails=st.sampled_from([0, 0, 1, max_receive]),
        )
        @checked
        def add_parent(self, children: int, work: float, fails: int) -> None:
            """Add a parent whose children work ``work`` virtual seconds and
            fail their first ``fails`` attempts (``max_receive`` fails for good)."""
            self.steps += 1

            def create() -> tuple[str, list[str]]:
                parent = self.store.create_parent("crawl")
                payloads = [{"work": work, "fails": fails}] * children
                return parent, self.store.spawn_children(parent, "page", payloads, queue=self.queue)

            created = self.harness_write("add parent", create)
            if created is not None:
                parent, ids = created
                self.children.update(dict.fromkeys(ids, parent))
                self.scheduler.log("harness", f"add parent {parent}", f"children {', '.join(ids)}")

        @rule()
        @checked
        def send_plain(self) -> None:
            self.steps += 1
            sent = self.harness_write("send", self.queue.send, {"plain": len(self.plain)})
            if sent is not None:
                self.plain.append(sent)
                self.scheduler.log("harness", "send plain message", f"message {sent}")

        # -- workers -------------------------------------------------------------------

        @precondition(lambda self: len(self.workers) < max_workers)
        @rule()
        @checked
        def start_worker(self) -> None:
            self.steps += 1
            self.new_worker()

        def new_worker(self) -> None:
            name = f"w{self.started}"
            self.started += 1
            pool = WorkerPool(
                self.store,
                Queue(self.db, "jobs", max_receive=max_receive),
                {"page": self.handle},
                runtime=self.scheduler,
                concurrency=1,
                stagger=0,
                visibility_timeout=VISIBILITY,
                poll_interval=POLL_INTERVAL,
                seed=self.started,
            )
            self.workers[name] = pool
            self.loop.call(self.scheduler.spawn, self.loop.nursery, name, pool.run)

        @precondition(lambda self: self.workers)
        @rule(data=st.data(), release=st.booleans())
        @checked
        def stop_worker(self, data: st.DataObject, release: bool) -> None:
            """Ask a worker to stop: gracefully (it finishes its job) or with
            ``release`` (its job goes back, the receive refunded)."""
            self.steps += 1
            name = data.draw(st.sampled_from(sorted(self.workers)), label="worker")
            pool = self.workers.pop(name)
            self.loop.call_sync(pool.release if release else pool.stop)
            self.scheduler.log(name, "release()" if release else "stop()", "stopping")

        @precondition(lambda self: self.children)
        @rule(data=st.data())
        @checked
        def cancel_parent(self, data: st.DataObject) -> None:
            self.steps += 1
            parent = data.draw(st.sampled_from(sorted(set(self.children.values()))), label="parent")
            try:
                cancelled = self.harness_write("cancel", self.store.cancel, parent)
            except InvalidTransitionError:
                self.scheduler.log("harness", f"cancel parent {parent}", "already finished")
                return
            if cancelled is not None:
                if cancelled:
                    self.seen.add("a parent was cancelled with children still active")
                self.scheduler.log("harness", f"cancel parent {parent}", f"{cancelled} cancelled")

        @precondition(lambda self: self.workers)
        @rule(data=st.data())
        @checked
        def crash_worker(self, data: st.DataObject) -> None:
            self.steps += 1
            name = data.draw(st.sampled_from(sorted(self.workers)), label="worker")
            del self.workers[name]
            self.loop.call(self.scheduler.crash, name)

        # -- the intruder --------------------------------------------------------------

        @rule(hold=st.booleans())
        @checked
        def intruder(self, hold: bool) -> None:
            """Take the write lock from another connection and keep it across
            rules (``hold``), or give it back."""
            self.steps += 1
            if not hold:
                self.release_intruder()
            elif self.lock_holder is None:
                conn = apsw.Connection(self.db.path)  # busy timeout 0: never waits
                try:
                    conn.execute("BEGIN IMMEDIATE")
                except apsw.BusyError:
                    conn.close()
                    self.scheduler.log("intruder", "BEGIN IMMEDIATE", "busy: a task holds it")
                    return
                self.lock_holder = conn
                self.scheduler.log("intruder", "BEGIN IMMEDIATE", "holds the write lock")

        def release_intruder(self) -> None:
            if self.lock_holder is not None:
                self.lock_holder.execute("ROLLBACK")
                self.lock_holder.close()
                self.lock_holder = None
                self.scheduler.log("intruder", "ROLLBACK", "released the write lock")

        # -- time and scheduling -----------------------------------------------------------

        @rule(seconds=st.sampled_from([0.001, 1.0, 4.0, 11.0, 31.0]))
        @checked
        def advance(self, seconds: float) -> None:
            self.steps += 1
            self.loop.call_sync(self.scheduler.advance, seconds)

        @rule(data=st.data(), n=st.integers(1, 12))
        @checked
        def run(self, data: st.DataObject, n: int) -> None:
            self.steps += 1
            picker: Chooser
            if chooser == "hypothesis":
                picker = HypothesisChooser(data)
            elif self.pct is None:
                picker = self.pct = PCTChooser(data, horizon=PCT_HORIZON)
            else:
                picker = self.pct
                self.pct.data = data  # priorities and change points persist
            self.decide(n, picker)

        def decide(self, n: int, picker: Chooser) -> None:
            options = self.loop.call(self.scheduler.next_options)
            for _ in range(n):
                if not options:
                    break
                options = self.loop.call(self.scheduler.step_and_options, picker.choose(options))

        # -- invariants ------------------------------------------------------------------

        @invariant()
        @checked
        def invariants_1_to_8(self) -> None:
            self.verify()
            self.report_coverage()

        def report_coverage(self) -> None:
            for seen in sorted(self.seen):
                event(seen)

        def verify(self, _: Step | None = None) -> None:
            """Check the trace so far and the file (after every rule, and after
            every decision: a state no decision boundary may show is caught at
            the decision that shows it)."""
            trace = self.scheduler.trace
            for step in trace[self.checked_steps :]:
                if step.call is not None and step.error is None:
                    self.check_step(step)
                elif isinstance(step.error, BusyAttempt):
                    self.busy_retries += 1
                    holder = "the intruder" if self.lock_holder is not None else "another task"
                    self.seen.add(f"SQLITE_BUSY retried while {holder} held the write lock")
            self.checked_steps = len(trace)
            self.check_file()
            if self.scheduler.unexplained_busy:
                step = self.scheduler.unexplained_busy[0]
                self.fail(
                    8,
                    "no BusyError while retrying could help",
                    f"{step.task}'s {step.call} met SQLITE_BUSY at decision {step.decision} "
                    "while no connection held the write lock",
                )
            for task, error in self.scheduler.errors.items():
                raise InvariantError(f"worker {task} died of {error!r}") from error

        def holder(self, step: Step, receipt: str) -> None:
            message = receipt.split(":")[0]
            lease = self.leases.get(message)
            if lease is None or lease.receipt != receipt:
                live = lease.receipt if lease else "none"
                self.fail(
                    3,
                    "fencing",
                    f"{step.task}'s {step.call} at decision {step.decision} succeeded with "
                    f"receipt {receipt}, but message {message}'s live receipt is {live}",
                )

        def check_step(self, step: Step) -> None:
            t = step.at_ms
            if step.call == "receive" and isinstance(step.result, Message):
                message = step.result
                lease = self.leases.get(message.id)
                if lease is not None and lease.expires_ms <= t:
                    self.seen.add("a lease expired and its message was received again")
                if lease is not None and lease.expires_ms > t:
                    self.fail(
                        2,
                        "exclusive lease",
                        f"{step.task} received message {message.id} at t={t} (decision "
                        f"{step.decision}) while {lease.task}'s lease {lease.receipt} runs "
                        f"until t={lease.expires_ms}",
                    )
                if message.receive_count > max_receive:
                    self.fail(
                        5,
                        "max receive",
                        f"message {message.id} delivered {message.receive_count} times",
                    )
                self.leases[message.id] = _Lease(message.receipt, t + lease_ms, step.task)
            elif step.call == "extend":
                self.seen.add("a heartbeat extended a lease")
                receipt, seconds = step.args
                self.holder(step, receipt)
                self.leases[receipt.split(":")[0]].expires_ms = t + round(seconds * 1000)
            elif step.call in ("start", "complete", "fail", "release"):
                job, receipt = step.args[:2]
                self.holder(step, receipt)
                if step.call == "start":
                    self.starts[job] += 1
                else:
                    self.seen.add(f"a worker called {step.call}()")
                    del self.leases[receipt.split(":")[0]]
                if step.call == "complete":
                    self.completions[job] += 1
                    if self.completions[job] > 1:
                        self.fail(7, "exactly-once effect", f"job {job} was completed twice")
            elif step.call == "nack":
                self.seen.add("a worker nacked a message that is not a job")
                (receipt,) = step.args
                self.holder(step, receipt)
                del self.leases[receipt.split(":")[0]]

        def check_file(self) -> None:
            def read(conn: apsw.Connection) -> tuple[list, list]:
                return (
                    rows(conn, "SELECT id, parent_id, status, attempts, message_id FROM jobs"),
                    rows(conn, "SELECT id, body, received, max_receive FROM messages"),
                )

            jobs, messages = self.db.read(read)
            by_job: dict[str, list[str]] = {}
            for message_id, body, received, limit in messages:
                if received > limit:
                    self.fail(5, "max receive", f"message {message_id} received {received} times")
                job = loads(body, "body").get("job_id")
                if job is not None:
                    by_job.setdefault(job, []).append(str(message_id))
            present = {str(m[0]) for m in messages}
            lost = [m for m in self.plain if m not in present]
            if lost:
                self.fail(1, "conservation", f"plain messages {lost} vanished")
            status = {str(j[0]): j[2] for j in jobs}
            for state in set(status.values()) & {"failed", "cancelled"}:
                self.seen.add(f"a job ended {state}")
            active: Counter[str] = Counter()
            for job_id, parent, state, attempts, message_id in jobs:
                job_id = str(job_id)
                if parent is None:
                    continue
                queued = by_job.get(job_id, [])
                if state in ("pending", "running"):
                    active[str(parent)] += 1
                    if queued != [str(message_id)]:
                        self.fail(
                            1,
                            "conservation",
                            f"{state} job {job_id} has messages {queued}, not its own "
                            f"{message_id}: its work is lost or doubled",
                        )
                elif queued or message_id is not None:
                    self.fail(
                        7,
                        "quiescence",
                        f"{state} job {job_id} still has messages {queued or [message_id]}",
                    )
                if attempts != self.starts[job_id]:
                    self.fail(
                        7,
                        "exactly-once effect",
                        f"job {job_id} counts {attempts} attempts but was started "
                        f"{self.starts[job_id]} times",
                    )
            for parent in set(self.children.values()):
                finished = status[parent] in ("completed", "failed", "cancelled")
                if finished == bool(active[parent]):
                    self.fail(
                        6,
                        "hierarchy",
                        f"parent {parent} is {status[parent]} with {active[parent]} "
                        "active children",
                    )

        # -- the end ------------------------------------------------------------------

        def all_done(self) -> bool:
            ((active,),) = self.db.read(
                lambda conn: rows(
                    conn,
                    "SELECT count(*) FROM jobs WHERE parent_id IS NOT NULL "
                    "AND status IN ('pending', 'running')",
                )
            )
            return active == 0

        def drain(self) -> None:
            """Finish all work under a fair schedule, then stop the workers.

            Work counts as lost if it is not finished by the time every job,
            one after another, could have used all its receives: each one a
            lease running out, the longest handler and the longest back-off,
            plus a sweep."""
            self.release_intruder()
            if not self.workers:
                self.new_worker()
            fair = FairChooser()
            per_receive_ms = round((VISIBILITY + max(WORK) + POLL_INTERVAL) * 1000)
            # Worst case: one worker left, taking the jobs one after another.
            jobs = len(self.children) + len(self.plain)
            deadline = self.scheduler.now_ms() + jobs * max_receive * per_receive_ms + 2_000
            run = self.scheduler.run_decisions

            def finished_or_late() -> bool:
                return self.all_done() or self.scheduler.now_ms() > deadline

            spent = self.loop.call(
                functools.partial(run, LIVELOCK_DECISIONS, fair, until=finished_or_late)
            )
            if not self.all_done():
                waited = (self.scheduler.now_ms() - deadline) / 1000
                self.fail(
                    1,
                    "conservation",
                    f"jobs unfinished {waited:+.1f} s past the time all their receives could "
                    f"take ({spent} fair decisions): work was lost",
                )
            for pool in self.workers.values():
                self.loop.call_sync(pool.stop)
            if self.loop.call(run, LIVELOCK_DECISIONS, fair) >= LIVELOCK_DECISIONS:
                self.fail(7, "quiescence", "the workers did not stop after stop()")
            self.verify()
            for job in self.children:
                if self.completions[job] and not self.handled[job]:
                    self.fail(7, "exactly-once effect", f"job {job} completed but never handled")

        def teardown(self) -> None:
            try:
                if self.clean:
                    self.clean = False
                    try:
                        self.drain()
                    except BaseException as exc:
                        self.show_schedule(exc)
                        raise
                    self.report_coverage()
                    # Contention is what the search should seek out. (Decisions
                    # would be a poor target: maximising them only lengthens
                    # examples, and Hypothesis's optimiser then runs far past
                    # max_examples once a failure turns up.)
                    target(self.busy_retries, label="busy retries")
            finally:
                self.close()

        def close(self) -> None:
            """Release everything, each step even if one before it failed."""
            steps: list[Callable[[], object]] = [self.release_intruder]
            steps += [
                functools.partial(self.loop.call, self.scheduler.crash, name)
                for name in self.scheduler.roots()
            ]
            steps += [self.scheduler.close, self.loop.close, self.db.close]
            errors = []
            for step in steps:
                try:
                    step()
                except Exception as exc:  # the rest must still run
                    errors.append(exc)
            shutil.rmtree(self.directory, ignore_errors=True)
            if errors:
                raise errors[0]

    # Hypothesis keys saved examples by a class's source, or by its name when
    # it has none. A class made by type() has none on any Python, so each
    # variant's name is its key: the choosers and lengths never share (and
    # so never delete) each other's saved failures.
    name = "InterleavingMachine" + ("PCT" if chooser == "pct" else "")
    name += f"{steps}Steps" if steps != STEPS else ""
    machine = type(
        name,
        (InterleavingMachine,),
        {"__qualname__": name, "__doc__": interleaving_machine.__doc__},
    )
    # Races need few steps; short examples run faster and shrink further.
    return settings(stateful_step_count=steps)(machine)
