"""The job store: hierarchy, lifecycle, fenced completion, tolerance, cancellation."""

from __future__ import annotations

import apsw
import pytest

import litejobs
from dbhelpers import snapshot
from litejobs import JobStatus, Tolerance
from litejobs._db import rows


def take(store: litejobs.JobStore, queue: litejobs.Queue, timeout: float = 10):
    """Receive the next job message and start its job, as a worker would."""
    message = queue.receive(visibility_timeout=timeout)
    assert message is not None, "expected a job message"
    return store.start(message.body["job_id"], message.receipt), message


@pytest.fixture
def family(store, queue):
    """A parent with three pending children."""
    parent = store.create_parent("crawl", {"seed": "http://127.0.0.1/"})
    children = store.spawn_children(parent, "page", [{"n": i} for i in range(3)], queue=queue)
    return parent, children


class TestCreating:
    def test_a_parent_starts_pending_with_its_payload(self, store, clock):
        parent = store.get(store.create_parent("crawl", {"seed": 1}))
        assert (parent.status, parent.kind, parent.payload) == (
            JobStatus.PENDING,
            "crawl",
            {"seed": 1},
        )
        assert (parent.parent_id, parent.message_id, parent.attempts) == (None, None, 0)
        assert parent.created_at == clock.now_ms()

    def test_spawning_writes_child_rows_and_messages_together(self, store, queue, family):
        parent, children = family
        assert store.get(parent).status is JobStatus.RUNNING
        kids = store.children(parent)
        assert [k.id for k in kids] == children
        assert [k.payload for k in kids] == [{"n": 0}, {"n": 1}, {"n": 2}]
        assert all(k.status is JobStatus.PENDING and k.parent_id == parent for k in kids)
        bodies = [m.body for m in queue.receive_batch(10, visibility_timeout=1)]
        assert bodies == [{"job_id": c, "kind": "page"} for c in children]
        assert [k.message_id for k in kids] == [str(i) for i in range(1, 4)]

    def test_spawning_under_a_missing_parent_writes_nothing(self, db, store, queue):
        before = snapshot(db)
        with pytest.raises(litejobs.NotFoundError, match="no job '999'"):
            store.spawn_children("999", "page", [1, 2], queue=queue)
        assert snapshot(db) == before

    def test_a_child_cannot_be_a_parent(self, db, store, queue, family):
        _, children = family
        before = snapshot(db)
        with pytest.raises(litejobs.InvalidTransitionError, match="only parents"):
            store.spawn_children(children[0], "page", [1], queue=queue)
        assert snapshot(db) == before

    def test_a_terminal_parent_takes_no_children(self, db, store, queue, family):
        parent, _ = family
        store.cancel(parent)
        before = snapshot(db)
        with pytest.raises(litejobs.InvalidTransitionError, match="cancelled"):
            store.spawn_children(parent, "page", [1], queue=queue)
        assert snapshot(db) == before

    def test_a_bad_payload_spawns_nothing(self, db, store, queue):
        parent = store.create_parent("crawl")
        before = snapshot(db)
        with pytest.raises(litejobs.InvalidPayloadError, match="payload #1"):
            store.spawn_children(parent, "page", [1, {2}], queue=queue)
        assert snapshot(db) == before

    def test_the_queue_must_live_in_the_same_database(self, tmp_path, store):
        with (
            litejobs.Database.open(tmp_path / "other.db") as other,
            pytest.raises(litejobs.ConfigError, match="this store's database"),
        ):
            store.spawn_children(store.create_parent("p"), "k", [1], queue=litejobs.Queue(other))

    @pytest.mark.parametrize(
        "bad",
        [
            lambda s: s.create_parent(""),
            lambda s: s.create_parent("k", {1}),
            lambda s: s.create_parent("k", tolerance=3),
        ],
    )
    def test_bad_parents_are_refused_without_writing(self, db, store, bad):
        before = snapshot(db)
        with pytest.raises((litejobs.ConfigError, litejobs.InvalidPayloadError)):
            bad(store)
        assert snapshot(db) == before


class TestWorkerCalls:
    def test_start_marks_running_and_counts_the_attempt(self, store, queue, family, clock):
        job, _ = take(store, queue)
        assert (job.status, job.attempts, job.started_at) == (JobStatus.RUNNING, 1, clock.now_ms())

    def test_complete_stores_the_result_deletes_the_message_in_one_step(
        self, store, queue, family, clock
    ):
        job, message = take(store, queue)
        clock.advance(0.25)
        done = store.complete(job.id, message.receipt, {"links": 4})
        assert (done.status, done.result, done.message_id) == (
            JobStatus.COMPLETED,
            {"links": 4},
            None,
        )
        assert done.completed_at == clock.now_ms()
        assert queue.stats().in_flight == 0
        with pytest.raises(litejobs.StaleReceiptError):
            queue.delete(message.receipt)

    def test_a_redelivered_job_is_started_again_and_the_old_holder_is_fenced_out(
        self, db, store, queue, family, clock
    ):
        first, old = take(store, queue, timeout=1)
        clock.advance(1)
        again, new = take(store, queue)
        assert (again.id, again.attempts) == (first.id, 2)
        before = snapshot(db)
        for call in (
            lambda: store.complete(first.id, old.receipt, "late"),
            lambda: store.fail(first.id, old.receipt, "late"),
            lambda: store.start(first.id, old.receipt),
        ):
            with pytest.raises(litejobs.StaleReceiptError, match="received again"):
                call()
        assert snapshot(db) == before
        assert store.complete(first.id, new.receipt, "once").result == "once"

    def test_a_receipt_for_another_job_is_refused(self, db, store, queue, family):
        job, _ = take(store, queue)
        _, other = take(store, queue)
        before = snapshot(db)
        with pytest.raises(litejobs.StaleReceiptError, match=f"not for job {job.id}"):
            store.complete(job.id, other.receipt, None)
        assert snapshot(db) == before

    def test_completing_a_job_that_was_never_started_is_refused(self, db, store, queue, family):
        message = queue.receive(visibility_timeout=5)
        before = snapshot(db)
        with pytest.raises(litejobs.InvalidTransitionError, match="pending: start it first"):
            store.complete(message.body["job_id"], message.receipt, 1)
        assert snapshot(db) == before

    def test_a_result_json_cannot_carry_changes_nothing(self, db, store, queue, family):
        job, message = take(store, queue)
        before = snapshot(db)
        with pytest.raises(litejobs.InvalidPayloadError, match="result"):
            store.complete(job.id, message.receipt, object())
        assert snapshot(db) == before

    @pytest.mark.parametrize(
        "call",
        [
            lambda s, r: s.get("41"),
            lambda s, r: s.start("41", r),
            lambda s, r: s.complete("41", r),
            lambda s, r: s.fail("41", r, "x"),
            lambda s, r: s.cancel("41"),
            lambda s, r: s.children("41"),
            lambda s, r: s.child_stats("41"),
            lambda s, r: s.get("nonsense"),
        ],
    )
    def test_an_unknown_job_id_is_not_found(self, db, store, queue, family, call):
        message = queue.receive(visibility_timeout=5)
        before = snapshot(db)
        with pytest.raises(litejobs.NotFoundError, match="no job"):
            call(store, message.receipt)
        assert snapshot(db) == before

    def test_a_parent_is_not_run_by_workers(self, store, queue, family):
        parent, _ = family
        message = queue.receive(visibility_timeout=5)
        with pytest.raises(litejobs.InvalidTransitionError, match="it is a parent"):
            store.start(parent, message.receipt)


class TestFailAndRetry:
    def test_a_failed_attempt_is_retried_through_the_queue_after_the_delay(
        self, store, queue, family, clock
    ):
        job, message = take(store, queue)
        failed = store.fail(job.id, message.receipt, ValueError("timeout"), delay=3)
        assert (failed.status, failed.error) == (JobStatus.PENDING, "ValueError: timeout")
        assert failed.message_id == message.id
        clock.advance(3)
        again, redelivered = take(store, queue)
        assert (again.id, again.attempts, redelivered.receive_count) == (job.id, 2, 2)

    def test_retries_stop_at_the_receive_limit_and_the_job_fails(self, store, queue, clock):
        parent = store.create_parent("crawl")
        store.spawn_children(parent, "page", [1], queue=queue)
        for attempt in (1, 2, 3):
            job, message = take(store, queue)
            result = store.fail(job.id, message.receipt, f"attempt {attempt}")
        assert (result.status, result.error, result.attempts) == (JobStatus.FAILED, "attempt 3", 3)
        assert queue.stats().total == 0
        assert store.get(parent).status is JobStatus.COMPLETED

    def test_retry_false_fails_at_once(self, store, queue, family):
        job, message = take(store, queue)
        assert store.fail(job.id, message.receipt, "fatal", retry=False).status is JobStatus.FAILED
        assert queue.stats().in_flight == 0

    def test_an_error_must_be_text_or_an_exception(self, store, queue, family):
        job, message = take(store, queue)
        with pytest.raises(litejobs.ConfigError, match="error must be"):
            store.fail(job.id, message.receipt, 42)

    def test_a_job_whose_workers_keep_crashing_fails_when_its_message_dies(
        self, store, queue, clock
    ):
        parent = store.create_parent("crawl")
        (child,) = store.spawn_children(parent, "page", [1], queue=queue)
        for _ in range(3):
            take(store, queue, timeout=1)
            clock.advance(1)
        assert queue.receive(visibility_timeout=1) is None
        job = store.get(child)
        assert job.status is JobStatus.FAILED
        assert "dead-lettered after 3 receives" in job.error
        assert queue.stats().total == 0
        assert queue.dead_letters() == []
        assert store.get(parent).status is JobStatus.COMPLETED

    def test_a_redrive_never_revives_a_failed_job(self, store, queue, clock):
        parent = store.create_parent("crawl")
        (child,) = store.spawn_children(parent, "page", [1], queue=queue)
        for _ in range(3):
            take(store, queue, timeout=1)
            clock.advance(1)
        assert queue.redrive() == 0
        assert store.get(child).status is JobStatus.FAILED


class TestCancel:
    def test_cancel_stops_the_unfinished_children_and_deletes_their_messages(
        self, store, queue, family, clock
    ):
        parent, _ = family
        done, message = take(store, queue)
        store.complete(done.id, message.receipt, "kept")
        running, _ = take(store, queue)
        assert store.cancel(parent) == 2
        assert store.get(parent).status is JobStatus.CANCELLED
        statuses = {k.id: k.status for k in store.children(parent)}
        assert statuses[done.id] is JobStatus.COMPLETED
        assert statuses[running.id] is JobStatus.CANCELLED
        assert list(statuses.values()).count(JobStatus.CANCELLED) == 2
        assert queue.stats().total == 0
        assert all(k.message_id is None for k in store.children(parent))

    def test_a_worker_finishing_a_cancelled_job_changes_nothing(self, db, store, queue, family):
        parent, _ = family
        job, message = take(store, queue)
        store.cancel(parent)
        before = snapshot(db)
        with pytest.raises(litejobs.InvalidTransitionError, match="cancelled"):
            store.complete(job.id, message.receipt, "too late")
        assert snapshot(db) == before

    def test_cancel_twice_or_on_a_child_is_refused(self, store, queue, family):
        parent, children = family
        with pytest.raises(litejobs.InvalidTransitionError, match="cancel its parent"):
            store.cancel(children[0])
        store.cancel(parent)
        with pytest.raises(litejobs.InvalidTransitionError, match="already cancelled"):
            store.cancel(parent)

    def test_a_parent_without_children_can_be_cancelled(self, store):
        parent = store.create_parent("crawl")
        assert store.cancel(parent) == 0
        assert store.get(parent).status is JobStatus.CANCELLED


class TestTerminalIsFinal:
    def test_even_raw_sql_cannot_leave_a_terminal_status(self, db, store, queue, family):
        parent, _ = family
        store.cancel(parent)
        with pytest.raises(apsw.ConstraintError, match="terminal job status is final"):
            rows(db.connection(), "UPDATE jobs SET status = 'running' WHERE id = ?", (parent,))

    def test_deleting_a_parent_row_cascades_to_its_children(self, db, store, family):
        parent, _ = family
        rows(db.connection(), "DELETE FROM jobs WHERE id = ?", (parent,))
        assert rows(db.connection(), "SELECT count(*) FROM jobs") == [(0,)]


class TestRollUp:
    def test_the_parent_completes_in_the_step_its_last_child_does(
        self, store, queue, family, clock
    ):
        parent, children = family
        for _ in children:
            assert store.get(parent).status is JobStatus.RUNNING
            job, message = take(store, queue)
            clock.advance(1)
            store.complete(job.id, message.receipt, None)
        done = store.get(parent)
        assert (done.status, done.completed_at) == (JobStatus.COMPLETED, clock.now_ms())

    def test_unlimited_tolerance_completes_even_when_every_child_fails(self, store, queue, family):
        parent, children = family
        for _ in children:
            job, message = take(store, queue)
            store.fail(job.id, message.receipt, "no", retry=False)
        assert store.get(parent).status is JobStatus.COMPLETED
        assert store.child_stats(parent) == litejobs.ChildStats(failed=3)


class TestTolerance:
    """max_child_failures=2 over four children: the action fires at the second failure."""

    @pytest.fixture(params=["stop_all", "continue", "mark_warning"])
    def action(self, request):
        return request.param

    @pytest.fixture
    def parent(self, store, queue, action):
        parent = store.create_parent("crawl", tolerance=Tolerance(2, action))
        store.spawn_children(parent, "page", [1, 2, 3, 4], queue=queue)
        return parent

    def fail_one(self, store, queue):
        job, message = take(store, queue)
        store.fail(job.id, message.receipt, "broken", retry=False)

    def test_one_failure_below_the_threshold_fires_nothing(self, store, queue, parent):
        self.fail_one(store, queue)
        state = store.get(parent)
        assert (state.status, state.error, state.warning) == (JobStatus.RUNNING, None, None)
        assert store.child_stats(parent) == litejobs.ChildStats(pending=3, failed=1)

    def test_the_action_fires_exactly_at_the_threshold(self, store, queue, parent, action):
        self.fail_one(store, queue)
        self.fail_one(store, queue)
        state = store.get(parent)
        reason = "2 child failures reached max_child_failures=2"
        if action == "stop_all":
            assert (state.status, state.error) == (JobStatus.FAILED, reason)
            assert store.child_stats(parent) == litejobs.ChildStats(failed=2, cancelled=2)
            assert queue.stats().total == 0
        else:
            assert state.status is JobStatus.RUNNING
            assert (state.error, state.warning) == (
                (reason, None) if action == "continue" else (None, reason)
            )
            assert store.child_stats(parent) == litejobs.ChildStats(pending=2, failed=2)
            assert queue.stats().visible == 2

    def test_the_parent_ends_as_its_action_says(self, store, queue, parent, action):
        self.fail_one(store, queue)
        self.fail_one(store, queue)
        while (message := queue.receive(visibility_timeout=5)) is not None:
            job = store.start(message.body["job_id"], message.receipt)
            store.complete(job.id, message.receipt, "ok")
        expected = {
            "stop_all": JobStatus.FAILED,
            "continue": JobStatus.FAILED,
            "mark_warning": JobStatus.COMPLETED,
        }[action]
        state = store.get(parent)
        assert state.status is expected
        assert (state.warning is not None) == (action == "mark_warning")

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"max_child_failures": -1},
            {"max_child_failures": 1.0},
            {"max_child_failures": 1, "action": "explode"},
        ],
    )
    def test_bad_tolerances_are_config_errors(self, kwargs):
        with pytest.raises(litejobs.ConfigError):
            Tolerance(**kwargs)


class TestChildStats:
    def test_child_stats_equal_a_fresh_group_by(self, db, store, queue, clock):
        parent = store.create_parent("crawl")
        store.spawn_children(parent, "page", list(range(6)), queue=queue)
        done, m1 = take(store, queue)
        store.complete(done.id, m1.receipt, 1)
        failed, m2 = take(store, queue)
        store.fail(failed.id, m2.receipt, "x", retry=False)
        take(store, queue)
        retried, m4 = take(store, queue)
        store.fail(retried.id, m4.receipt, "again")
        stats = store.child_stats(parent)
        fresh = dict(
            rows(
                db.connection(),
                "SELECT status, count(*) FROM jobs WHERE parent_id = ? GROUP BY status",
                (parent,),
            )
        )
        assert stats == litejobs.ChildStats(**fresh)
        assert stats == litejobs.ChildStats(pending=3, running=1, completed=1, failed=1)
        assert stats.total == 6

    def test_a_parent_without_children_has_empty_stats(self, store):
        assert store.child_stats(store.create_parent("p")) == litejobs.ChildStats()


class TestJobMessagesBelongToTheirJobs:
    def test_the_queue_will_not_delete_a_job_s_message(self, db, store, queue, family):
        job, message = take(store, queue)
        before = snapshot(db)
        with pytest.raises(litejobs.InvalidTransitionError, match=f"carries job {job.id}"):
            queue.delete(message.receipt)
        with pytest.raises(litejobs.InvalidTransitionError, match="carries job"):
            queue.delete_batch([message.receipt])
        assert snapshot(db) == before
        assert store.complete(job.id, message.receipt, "done").status is JobStatus.COMPLETED

    def test_a_failed_attempt_fences_out_its_worker(self, db, store, queue, family):
        job, message = take(store, queue)
        store.fail(job.id, message.receipt, "retry me")
        before = snapshot(db)
        with pytest.raises(litejobs.StaleReceiptError, match="given back"):
            store.start(job.id, message.receipt)
        assert snapshot(db) == before

    @pytest.mark.parametrize("bad", [2**70, ["1"], 1, None])
    def test_job_ids_must_be_str(self, store, bad):
        with pytest.raises(litejobs.ConfigError, match="job ids are str"):
            store.get(bad)


class TestDeadJobMessages:
    def crash_three_times(self, store, queue, clock, n):
        for _ in range(3):
            for _ in range(n):
                take(store, queue, timeout=1)
            clock.advance(1)

    def test_one_sweep_fails_every_job_whose_message_died(self, store, queue, clock):
        parent = store.create_parent("crawl")
        children = store.spawn_children(parent, "page", [1, 2, 3], queue=queue)
        self.crash_three_times(store, queue, clock, 3)
        assert queue.receive(visibility_timeout=1) is None
        assert [store.get(c).status for c in children] == [JobStatus.FAILED] * 3
        assert store.get(parent).status is JobStatus.COMPLETED
        assert queue.stats().total == 0

    def test_a_sweep_that_reaches_stop_all_cancels_the_rest_of_the_same_sweep(
        self, store, queue, clock
    ):
        parent = store.create_parent("crawl", tolerance=Tolerance(2, "stop_all"))
        store.spawn_children(parent, "page", [1, 2, 3], queue=queue)
        self.crash_three_times(store, queue, clock, 3)
        queue.receive(visibility_timeout=1)
        assert store.child_stats(parent) == litejobs.ChildStats(failed=2, cancelled=1)
        assert store.get(parent).status is JobStatus.FAILED

    def test_receive_batch_sweeps_dead_job_messages_too(self, store, queue, clock):
        parent = store.create_parent("crawl")
        (child,) = store.spawn_children(parent, "page", [1], queue=queue)
        self.crash_three_times(store, queue, clock, 1)
        assert queue.receive_batch(4, visibility_timeout=1) == []
        assert store.get(child).status is JobStatus.FAILED

    def test_a_dead_job_message_behind_busier_traffic_is_swept_within_the_interval(
        self, store, queue, clock
    ):
        parent = store.create_parent("crawl")
        (child,) = store.spawn_children(parent, "page", [1], queue=queue)
        for _ in range(3):
            take(store, queue, timeout=1)
            clock.advance(0.5)
            queue.send("urgent", priority=9)
            assert queue.receive(visibility_timeout=60).body == "urgent"
            clock.advance(0.5)
        # The job's message is dead now, behind a stream of urgent messages.
        interval = litejobs._queue.SWEEP_INTERVAL_MS / 1000
        steps = 0
        while store.get(child).status is JobStatus.RUNNING:
            queue.send("urgent", priority=9)
            assert queue.receive(visibility_timeout=60).body == "urgent"
            clock.advance(0.25)
            steps += 1
            assert steps * 0.25 <= interval + 0.25, "the dead job was never swept"
        assert store.get(child).status is JobStatus.FAILED
        assert queue.dead_letters() == []


class TestToleranceFiresOnce:
    @pytest.mark.parametrize(
        ("action", "column"), [("continue", "error"), ("mark_warning", "warning")]
    )
    def test_failures_past_the_threshold_do_not_fire_again(self, store, queue, action, column):
        parent = store.create_parent("crawl", tolerance=Tolerance(2, action))
        store.spawn_children(parent, "page", [1, 2, 3, 4], queue=queue)
        for _ in range(3):
            job, message = take(store, queue)
            store.fail(job.id, message.receipt, "broken", retry=False)
        assert getattr(store.get(parent), column) == "2 child failures reached max_child_failures=2"


class TestSpawnKeys:
    def test_a_key_the_parent_has_seen_spawns_nothing(self, db, store, queue):
        parent = store.create_parent("crawl")
        first = store.spawn_children(
            parent, "page", ["/a", "/b", "/a"], queue=queue, keys=["/a", "/b", "/a"]
        )
        again = store.spawn_children(parent, "page", ["/b", "/c"], queue=queue, keys=["/b", "/c"])
        assert len(first) == 2
        assert len(again) == 1
        assert [j.payload for j in store.children(parent)] == ["/a", "/b", "/c"]
        assert queue.stats().visible == 3

    def test_keys_are_per_parent(self, store, queue):
        one, two = store.create_parent("crawl"), store.create_parent("crawl")
        assert len(store.spawn_children(one, "page", [1], queue=queue, keys=["/"])) == 1
        assert len(store.spawn_children(two, "page", [1], queue=queue, keys=["/"])) == 1

    @pytest.mark.parametrize("keys", [["/a"], ["/a", 2]])
    def test_keys_need_one_str_per_payload(self, db, store, queue, keys):
        parent = store.create_parent("crawl")
        before = snapshot(db)
        with pytest.raises(litejobs.ConfigError, match="one str per payload"):
            store.spawn_children(parent, "page", [1, 2], queue=queue, keys=keys)
        assert snapshot(db) == before


class TestRelease:
    def test_release_makes_the_job_pending_and_refunds_the_receive(self, db, store, queue):
        parent = store.create_parent("crawl")
        store.spawn_children(parent, "page", [1], queue=queue)
        for _ in range(5):  # more than max_receive: releases never dead-letter
            job, message = take(store, queue)
            released = store.release(job.id, message.receipt)
            assert released.status is JobStatus.PENDING
        job, message = take(store, queue)
        assert message.receive_count == 1
        assert store.complete(job.id, message.receipt, "ok").status is JobStatus.COMPLETED

    def test_a_released_receipt_is_stale(self, db, store, queue, family):
        job, message = take(store, queue)
        store.release(job.id, message.receipt)
        before = snapshot(db)
        with pytest.raises(litejobs.StaleReceiptError, match="given back"):
            store.start(job.id, message.receipt)
        with pytest.raises(litejobs.InvalidTransitionError, match="pending"):
            store.complete(job.id, message.receipt, "late")
        assert snapshot(db) == before
