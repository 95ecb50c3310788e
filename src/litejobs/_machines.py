"""Hypothesis state machines that check a queue against the reference model.

:func:`queue_machine` builds the sequential queue machine for any
implementation of the queue contract, so the same properties can test
litejobs or another queue.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from hypothesis import event, note
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from litejobs._clock import VirtualClock, to_ms
from litejobs._errors import StaleReceiptError
from litejobs._model import QueueModel


class QueueContract(Protocol):
    """What :func:`queue_machine` needs from a queue implementation.

    Ids and receipts are opaque strings. ``receive`` returns ``None`` or an
    object with ``id``, ``body``, ``receipt`` and ``receive_count``;
    ``stats()`` returns an object with ``visible``, ``delayed``, ``in_flight``
    and ``dead``; ``dead_letters()`` returns objects with an ``id``. Every
    fenced call given a receipt that no longer holds its message raises
    :class:`litejobs.StaleReceiptError` and changes nothing. Time comes only
    from the clock passed to ``make_queue``.
    """

    def send(self, body: Any, *, delay: float = 0.0, priority: int = 0) -> str: ...
    def send_batch(self, bodies: list[Any]) -> list[str]: ...
    def receive(self, *, visibility_timeout: float) -> Any: ...
    def receive_batch(self, n: int, *, visibility_timeout: float) -> list[Any]: ...
    def delete(self, receipt: str) -> None: ...
    def delete_batch(self, receipts: list[str]) -> list[str]: ...
    def extend(self, receipt: str, seconds: float) -> None: ...
    def nack(self, receipt: str, *, delay: float = 0.0) -> None: ...
    def redrive(self) -> int: ...
    def stats(self) -> Any: ...
    def dead_letters(self) -> list[Any]: ...


MakeQueue = Callable[[Path, VirtualClock], QueueContract]

bodies = st.one_of(st.integers(-5, 5), st.text(max_size=3), st.lists(st.booleans(), max_size=2))
# Durations near the interesting edges: zero, one millisecond, the leases below.
leases = st.sampled_from([0.0, 1.0, 2.5])
delays = st.sampled_from([0.0, 0.0, 0.001, 1.0])
steps = st.sampled_from([0.001, 0.999, 1.0, 1.5, 2.5, 10.0])


def litejobs_queue(path: Path, clock: VirtualClock) -> QueueContract:
    """The ``make_queue`` that runs :func:`queue_machine` against litejobs'
    own :class:`~litejobs.Queue` on a real file."""
    from litejobs._db import Database
    from litejobs._queue import Queue

    return Queue(Database.open(path, clock=clock), "machine")


def queue_machine(make_queue: MakeQueue, *, max_receive: int = 3) -> type[RuleBasedStateMachine]:
    """Build a state machine that runs ``make_queue(path, clock)``'s queue
    beside :class:`~litejobs._model.QueueModel` and compares every return
    value, and the whole queue after every step (invariants 1-5 of the
    design: conservation, exclusive lease, fencing, visibility, max receive).

    For example::

        TestLitejobsQueue = queue_machine(
            lambda path, clock: Queue(Database.open(path, clock=clock))
        ).TestCase
    """

    class QueueMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.directory = tempfile.mkdtemp(prefix="litejobs-machine-")
            self.clock = VirtualClock()
            self.queue = make_queue(Path(self.directory) / "queue.db", self.clock)
            self.model = QueueModel(max_receive=max_receive)
            self.receipts: list[str] = []  # every receipt handed out, live or stale

        def now(self) -> int:
            return self.clock.now_ms()

        # -- sending ---------------------------------------------------------

        @rule(body=bodies, delay=delays, priority=st.integers(-1, 1))
        def send(self, body: Any, delay: float, priority: int) -> None:
            message_id = self.queue.send(body, delay=delay, priority=priority)
            self.model.send(message_id, body, self.now(), to_ms(delay, "delay"), priority)

        @rule(batch=st.lists(bodies, min_size=1, max_size=3))
        def send_batch(self, batch: list[Any]) -> None:
            ids = self.queue.send_batch(batch)
            assert len(ids) == len(batch)
            for message_id, body in zip(ids, batch, strict=True):
                self.model.send(message_id, body, self.now(), 0, 0)

        # -- receiving -------------------------------------------------------

        @rule(lease=leases)
        def receive(self, lease: float) -> None:
            expected = self.model.receivable(self.now())
            got = self.queue.receive(visibility_timeout=lease)
            if not expected:
                assert got is None, f"received {got!r} but nothing is visible"
                return
            assert got is not None, f"nothing received but {expected[0].id} is visible"
            assert got.id == expected[0].id, f"received {got.id}, expected {expected[0].id}"
            assert got.receipt not in self.receipts, "a receipt was handed out twice"
            leased = self.model.lease(expected[0], self.now(), to_ms(lease, "lease"), got.receipt)
            assert (got.body, got.receive_count) == (leased.body, leased.received)
            if got.receive_count > 1:
                event("a message was received again after its lease ran out")
            self.receipts.append(got.receipt)

        @rule(times=st.integers(2, max_receive + 1))
        def receive_again_and_again(self, times: int) -> None:
            """Receive with no lease several times in a row: a message can use
            up its receives within one step (and one sweep interval)."""
            for _ in range(times):
                self.receive(0.0)

        @rule(n=st.integers(1, 3), lease=leases)
        def receive_batch(self, n: int, lease: float) -> None:
            expected = self.model.receivable(self.now())[:n]
            got = self.queue.receive_batch(n, visibility_timeout=lease)
            assert [m.id for m in got] == [m.id for m in expected]
            for message, model in zip(got, expected, strict=True):
                self.model.lease(model, self.now(), to_ms(lease, "lease"), message.receipt)
                assert message.receive_count == model.received
                self.receipts.append(message.receipt)

        # -- fenced calls, with live and stale receipts ------------------------

        def fenced(self, call: Callable[[], object], holds: bool, what: str) -> None:
            try:
                call()
            except StaleReceiptError:
                assert not holds, f"{what} refused a live receipt"
                event(f"{what} refused a stale receipt")
            else:
                assert holds, f"{what} accepted a stale receipt"

        @precondition(lambda self: self.receipts)
        @rule(data=st.data())
        def delete(self, data: st.DataObject) -> None:
            receipt = data.draw(st.sampled_from(self.receipts), label="receipt")
            holds = self.model.holder(receipt, self.now()) is not None
            self.fenced(lambda: self.queue.delete(receipt), holds, "delete")
            self.model.delete(receipt, self.now())

        @precondition(lambda self: self.receipts)
        @rule(data=st.data(), seconds=leases)
        def extend(self, data: st.DataObject, seconds: float) -> None:
            receipt = data.draw(st.sampled_from(self.receipts), label="receipt")
            holds = self.model.holder(receipt, self.now()) is not None
            self.fenced(lambda: self.queue.extend(receipt, seconds), holds, "extend")
            self.model.extend(receipt, self.now(), to_ms(seconds, "seconds"))

        @precondition(lambda self: self.receipts)
        @rule(data=st.data(), delay=delays)
        def nack(self, data: st.DataObject, delay: float) -> None:
            receipt = data.draw(st.sampled_from(self.receipts), label="receipt")
            holds = self.model.holder(receipt, self.now()) is not None
            self.fenced(lambda: self.queue.nack(receipt, delay=delay), holds, "nack")
            self.model.nack(receipt, self.now(), to_ms(delay, "delay"))

        @precondition(lambda self: self.receipts)
        @rule(data=st.data())
        def delete_batch(self, data: st.DataObject) -> None:
            chosen = data.draw(
                st.lists(st.sampled_from(self.receipts), min_size=1, max_size=3), label="receipts"
            )
            expected_stale = [r for r in chosen if not self.model.delete(r, self.now())]
            assert self.queue.delete_batch(chosen) == expected_stale

        @rule()
        def redrive(self) -> None:
            redriven = self.model.redrive(self.now())
            assert self.queue.redrive() == redriven
            if redriven:
                event("dead letters were redriven")

        @rule(seconds=steps)
        def advance(self, seconds: float) -> None:
            self.clock.advance(seconds)

        # -- after every step ------------------------------------------------

        @invariant()
        def every_message_is_in_exactly_the_state_the_model_says(self) -> None:
            stats = self.queue.stats()
            got = {k: getattr(stats, k) for k in ("visible", "delayed", "in_flight", "dead")}
            expected = self.model.stats(self.now())
            note(f"t={self.now()} stats={got} model={expected}")
            assert got == expected
            if got["dead"]:
                event("a message used up its receives and went to the dead letters")

        @invariant()
        def the_dead_letters_are_the_models(self) -> None:
            got = {letter.id for letter in self.queue.dead_letters()}
            assert got == self.model.dead_ids(self.now())

        def teardown(self) -> None:
            close = getattr(getattr(self.queue, "db", None), "close", None)
            if close is not None:
                close()
            shutil.rmtree(self.directory, ignore_errors=True)

    QueueMachine.__name__ = QueueMachine.__qualname__ = "QueueMachine"
    return QueueMachine


def hierarchy_machine(*, max_receive: int = 3) -> type[RuleBasedStateMachine]:
    """Build a state machine that runs litejobs' :class:`JobStore` on a real
    file beside :class:`~litejobs._hierarchy_model.HierarchyModel`: parents
    with tolerances, children spawned, received, started, completed and failed
    with live and stale receipts, cancellation and the clock. After every step
    it checks invariants 6 and 7 of the design: every status equals the
    model's, ``child_stats`` equals a fresh ``GROUP BY`` and the model,
    tolerance fired exactly as the model says, a cancelled parent has no live
    child or message, and once every job is terminal no message is left.
    """
    from litejobs._db import Database, rows
    from litejobs._errors import InvalidTransitionError
    from litejobs._hierarchy_model import TERMINAL, HierarchyModel
    from litejobs._jobs import ChildStats, JobStore, Tolerance
    from litejobs._queue import Queue

    def outcome(call: Callable[[], object]) -> str:
        try:
            call()
        except InvalidTransitionError:
            return "invalid"
        except StaleReceiptError:
            return "stale"
        return "ok"

    class HierarchyMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.directory = tempfile.mkdtemp(prefix="litejobs-machine-")
            self.clock = VirtualClock()
            self.db = Database.open(Path(self.directory) / "jobs.db", clock=self.clock)
            self.queue = Queue(self.db, "jobs", max_receive=max_receive)
            self.store = JobStore(self.db)
            self.model = HierarchyModel(QueueModel(max_receive=max_receive))
            self.receipts: list[tuple[str, str]] = []  # (job id, receipt), live or stale

        def now(self) -> int:
            return self.clock.now_ms()

        @rule(
            limit=st.integers(0, 2),
            action=st.sampled_from(["stop_all", "continue", "mark_warning"]),
        )
        def create_parent(self, limit: int, action: str) -> None:
            parent = self.store.create_parent("p", tolerance=Tolerance(limit, action))
            self.model.create_parent(parent, limit, action)

        @precondition(lambda self: self.model.parents)
        @rule(data=st.data(), n=st.integers(1, 3))
        def spawn(self, data: st.DataObject, n: int) -> None:
            parent = data.draw(st.sampled_from(sorted(self.model.parents)), label="parent")
            try:
                children = self.store.spawn_children(parent, "k", list(range(n)), queue=self.queue)
            except InvalidTransitionError:
                assert self.model.parents[parent].status in TERMINAL
                return
            assert self.model.parents[parent].status not in TERMINAL
            for child in children:
                message = self.store.get(child).message_id
                assert message is not None
                self.model.spawn(parent, child, message, self.now())

        @rule(n=st.integers(1, 3), lease=leases)
        def receive(self, n: int, lease: float) -> None:
            self.model.sweep(self.now())
            expected = self.model.queue.receivable(self.now())[:n]
            got = self.queue.receive_batch(n, visibility_timeout=lease)
            assert [m.id for m in got] == [m.id for m in expected]
            for message, model in zip(got, expected, strict=True):
                self.model.queue.lease(model, self.now(), to_ms(lease, "lease"), message.receipt)
                self.receipts.append((message.body["job_id"], message.receipt))

        @rule(result=st.sampled_from(["complete", "fail", "retry"]))
        def work_next(self, result: str) -> None:
            """Receive, start and finish the next job in one step, so that runs
            reaching several failures under one parent stay short."""
            before = len(self.receipts)
            self.receive(1, 30.0)
            if len(self.receipts) == before:
                return
            job, receipt = self.receipts[-1]
            expected = self.model.start(job, receipt, self.now())
            assert outcome(lambda: self.store.start(job, receipt)) == expected
            if result == "complete":
                expected = self.model.complete(job, receipt, self.now())
                assert outcome(lambda: self.store.complete(job, receipt, "done")) == expected
            else:
                retry = result == "retry"
                expected = self.model.fail(job, receipt, self.now(), retry)
                got = outcome(lambda: self.store.fail(job, receipt, "no", retry=retry))
                assert got == expected

        def held(self, data: st.DataObject) -> tuple[str, str]:
            return data.draw(st.sampled_from(self.receipts), label="job, receipt")

        @precondition(lambda self: self.receipts)
        @rule(data=st.data())
        def start(self, data: st.DataObject) -> None:
            job, receipt = self.held(data)
            expected = self.model.start(job, receipt, self.now())
            assert outcome(lambda: self.store.start(job, receipt)) == expected

        @precondition(lambda self: self.receipts)
        @rule(data=st.data())
        def complete(self, data: st.DataObject) -> None:
            job, receipt = self.held(data)
            expected = self.model.complete(job, receipt, self.now())
            assert outcome(lambda: self.store.complete(job, receipt, "done")) == expected

        @precondition(lambda self: self.receipts)
        @rule(data=st.data(), retry=st.booleans())
        def fail(self, data: st.DataObject, retry: bool) -> None:
            job, receipt = self.held(data)
            expected = self.model.fail(job, receipt, self.now(), retry)
            assert outcome(lambda: self.store.fail(job, receipt, "no", retry=retry)) == expected

        @precondition(lambda self: self.model.parents)
        @rule(data=st.data())
        def cancel(self, data: st.DataObject) -> None:
            parent = data.draw(st.sampled_from(sorted(self.model.parents)), label="parent")
            expected = self.model.cancel(parent)
            assert outcome(lambda: self.store.cancel(parent)) == expected
            event(f"cancel: {expected}")

        @rule(seconds=steps)
        def advance(self, seconds: float) -> None:
            self.clock.advance(seconds)

        @invariant()
        def every_status_is_the_models(self) -> None:
            for parent in self.model.parents.values():
                job = self.store.get(parent.id)
                got = (job.status, job.error, job.warning)
                expected = (parent.status, parent.error, parent.warning)
                assert got == expected, f"parent {parent.id}: {got}, model says {expected}"
                if parent.warning:
                    event("a parent carries on with a warning")
                elif parent.status in TERMINAL:
                    event(f"a parent ended {parent.status}")
            for child in self.model.children.values():
                job = self.store.get(child.id)
                found = (job.status, job.attempts)
                modelled = (child.status, child.attempts)
                assert found == modelled, f"child {child.id}: {found}, model says {modelled}"
                if child.status in ("failed", "cancelled"):
                    event(f"a child ended {child.status}")

        @invariant()
        def child_stats_equal_a_fresh_group_by_and_the_model(self) -> None:
            conn = self.db.connection()
            for parent in self.model.parents.values():
                fresh = dict(
                    rows(
                        conn,
                        "SELECT status, count(*) FROM jobs WHERE parent_id = ? GROUP BY status",
                        (parent.id,),
                    )
                )
                counts: dict[str, int] = {}
                for child in parent.children:
                    status = self.model.children[child].status
                    counts[status] = counts.get(status, 0) + 1
                assert (
                    self.store.child_stats(parent.id) == ChildStats(**fresh) == ChildStats(**counts)
                )

        @invariant()
        def no_orphans_and_cancelled_parents_hold_nothing_live(self) -> None:
            conn = self.db.connection()
            assert rows(
                conn,
                "SELECT count(*) FROM jobs c LEFT JOIN jobs p ON c.parent_id = "
                "p.id WHERE c.parent_id IS NOT NULL AND p.id IS NULL",
            ) == [(0,)]
            assert rows(
                conn,
                "SELECT count(*) FROM jobs c JOIN jobs p ON c.parent_id = p.id "
                "WHERE p.status = 'cancelled' AND (c.status IN "
                "('pending', 'running') OR c.message_id IS NOT NULL)",
            ) == [(0,)]

        @invariant()
        def once_every_job_is_terminal_no_message_is_left(self) -> None:
            statuses = [p.status for p in self.model.parents.values()]
            statuses += [c.status for c in self.model.children.values()]
            if all(status in TERMINAL for status in statuses):
                assert self.queue.stats().total == 0

        def teardown(self) -> None:
            self.db.close()
            shutil.rmtree(self.directory, ignore_errors=True)

    HierarchyMachine.__name__ = HierarchyMachine.__qualname__ = "HierarchyMachine"
    return HierarchyMachine
