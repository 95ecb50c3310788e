"""The queue: every method, on a real file and a virtual clock."""

from __future__ import annotations

import math

import pytest

import litejobs
from dbhelpers import snapshot
from litejobs._db import rows


def receive(queue: litejobs.Queue, timeout: float = 10) -> litejobs.Message:
    message = queue.receive(visibility_timeout=timeout)
    assert message is not None, "expected a visible message"
    return message


class TestSendAndReceive:
    def test_a_sent_body_comes_back_with_a_receipt_and_count(self, queue):
        message_id = queue.send({"url": "http://x", "n": [1, 2.5, None, "é"]})
        message = receive(queue)
        assert message.id == message_id
        assert message.body == {"url": "http://x", "n": [1, 2.5, None, "é"]}
        assert message.receive_count == 1
        assert message.receipt != message_id

    def test_an_empty_queue_receives_none(self, queue):
        assert queue.receive(visibility_timeout=10) is None

    def test_higher_priority_first_then_oldest(self, queue, clock):
        low_old = queue.send("low-old")
        clock.advance(0.001)
        high_new = queue.send("high-new", priority=5)
        low_new = queue.send("low-new")
        negative = queue.send("negative", priority=-1)
        order = [receive(queue).id for _ in range(4)]
        assert order == [high_new, low_old, low_new, negative]

    def test_messages_sent_in_the_same_millisecond_keep_their_order(self, queue):
        ids = [queue.send(i) for i in range(20)]
        assert [receive(queue).id for _ in ids] == ids

    def test_a_delayed_message_becomes_visible_exactly_at_its_delay(self, queue, clock):
        queue.send("later", delay=1.5)
        clock.advance(1.499)
        assert queue.receive(visibility_timeout=1) is None
        assert queue.stats().delayed == 1
        clock.advance(0.001)
        assert receive(queue).body == "later"

    def test_queues_with_different_names_do_not_share_messages(self, db, queue):
        other = litejobs.Queue(db, "other")
        other.send("theirs")
        assert queue.receive(visibility_timeout=1) is None
        assert receive(other).body == "theirs"


class TestVisibility:
    def test_a_received_message_reappears_exactly_when_its_lease_expires(self, queue, clock):
        queue.send("job")
        first = receive(queue, timeout=2.5)
        clock.advance(2.499)
        assert queue.receive(visibility_timeout=1) is None
        clock.advance(0.001)
        second = receive(queue)
        assert second.id == first.id
        assert second.receive_count == 2
        assert second.receipt != first.receipt

    def test_a_zero_visibility_timeout_leaves_the_message_visible(self, queue):
        queue.send("job")
        first = receive(queue, timeout=0)
        assert receive(queue, timeout=0).id == first.id

    def test_extend_moves_the_lease_end_to_seconds_from_now(self, queue, clock):
        queue.send("job")
        message = receive(queue, timeout=1)
        clock.advance(0.9)
        queue.extend(message.receipt, 5)
        clock.advance(4.999)
        assert queue.receive(visibility_timeout=1) is None
        clock.advance(0.001)
        assert receive(queue).id == message.id

    def test_nack_makes_the_message_visible_after_the_delay(self, queue, clock):
        queue.send("job")
        message = receive(queue, timeout=60)
        queue.nack(message.receipt, delay=2)
        assert queue.stats() == litejobs.QueueStats(visible=0, delayed=1, in_flight=0, dead=0)
        clock.advance(2)
        again = receive(queue)
        assert (again.id, again.receive_count) == (message.id, 2)

    def test_nack_without_delay_makes_it_visible_at_once(self, queue):
        queue.send("job")
        queue.nack(receive(queue, timeout=60).receipt)
        assert receive(queue).receive_count == 2


class TestStaleReceipts:
    @pytest.fixture
    def stale(self, queue, clock):
        """A receipt whose message was received again by someone else."""
        queue.send("job")
        old = receive(queue, timeout=1)
        clock.advance(1)
        receive(queue, timeout=30)
        return old.receipt

    @pytest.mark.parametrize(
        "call",
        [
            lambda q, r: q.delete(r),
            lambda q, r: q.extend(r, 10),
            lambda q, r: q.nack(r),
            lambda q, r: q.nack(r, delay=5),
        ],
        ids=["delete", "extend", "nack", "nack-delay"],
    )
    def test_a_receipt_goes_stale_once_the_message_is_received_again(self, db, queue, stale, call):
        before = snapshot(db)
        with pytest.raises(litejobs.StaleReceiptError, match="received again"):
            call(queue, stale)
        assert snapshot(db) == before

    def test_an_expired_lease_still_holds_until_someone_else_receives(self, queue, clock):
        queue.send("job")
        message = receive(queue, timeout=1)
        clock.advance(5)
        queue.delete(message.receipt)
        assert queue.stats().total == 0

    def test_a_deleted_message_s_receipt_is_stale(self, queue):
        queue.send("job")
        message = receive(queue)
        queue.delete(message.receipt)
        with pytest.raises(litejobs.StaleReceiptError, match="deleted"):
            queue.delete(message.receipt)

    def test_a_receipt_from_another_queue_is_stale_there(self, db, queue):
        other = litejobs.Queue(db, "other")
        other.send("theirs")
        message = receive(other)
        with pytest.raises(litejobs.StaleReceiptError, match="belongs to queue 'other'"):
            queue.delete(message.receipt)
        other.delete(message.receipt)

    @pytest.mark.parametrize(
        "receipt",
        ["", "12", "a:1", "1:b", "1:-1", None, 7, "\u0661:\u0661", f"{2**63}:1", f"1:{2**64}"],
    )
    def test_a_malformed_receipt_is_a_config_error(self, queue, receipt):
        with pytest.raises(litejobs.ConfigError, match="not a litejobs receipt"):
            queue.delete(receipt)


class TestDeadLetters:
    def exhaust(self, queue, clock, times=3):
        for _ in range(times):
            message = receive(queue, timeout=1)
            clock.advance(1)
        return message

    def test_after_max_receive_unacknowledged_receives_a_message_is_dead(self, queue, clock):
        message_id = queue.send("poison")
        last = self.exhaust(queue, clock)
        assert last.receive_count == 3
        assert queue.receive(visibility_timeout=1) is None
        assert queue.stats() == litejobs.QueueStats(visible=0, delayed=0, in_flight=0, dead=1)
        (dead,) = queue.dead_letters()
        assert (dead.id, dead.body, dead.receive_count) == (message_id, "poison", 3)
        assert dead.dead_at == clock.now_ms()

    def test_a_dead_message_is_counted_dead_before_any_receive_sweeps_it(self, queue, clock):
        queue.send("poison")
        for _ in range(3):
            receive(queue, timeout=1)
            clock.advance(1)
        assert queue.stats().dead == 1
        assert len(queue.dead_letters()) == 1

    def test_the_last_receipt_goes_stale_when_its_lease_runs_out(self, queue, clock):
        queue.send("poison")
        for _ in range(2):
            receive(queue, timeout=1)
            clock.advance(1)
        last = receive(queue, timeout=1)
        clock.advance(1)
        with pytest.raises(litejobs.StaleReceiptError, match="dead-lettered after 3 receives"):
            queue.delete(last.receipt)

    def test_a_dead_head_does_not_hide_the_messages_behind_it(self, queue, clock):
        queue.send("poison", priority=9)
        self.exhaust(queue, clock)
        healthy = queue.send("fine")
        assert receive(queue).id == healthy

    def test_max_receive_is_configurable_and_stored_with_the_message(self, db, clock):
        once = litejobs.Queue(db, "once", max_receive=1)
        once.send("x")
        receive(once, timeout=1)
        clock.advance(1)
        assert once.receive(visibility_timeout=1) is None
        assert litejobs.Queue(db, "once", max_receive=5).receive(visibility_timeout=1) is None

    def test_redrive_makes_every_dead_letter_visible_with_a_fresh_count(self, queue, clock):
        first = queue.send("a")
        self.exhaust(queue, clock)
        second = queue.send("b")
        self.exhaust(queue, clock)
        assert queue.redrive() == 2
        assert queue.stats() == litejobs.QueueStats(visible=2, delayed=0, in_flight=0, dead=0)
        again = receive(queue)
        assert (again.id, again.receive_count) == (first, 1)
        assert receive(queue).id == second

    def test_redrive_by_id_moves_only_those(self, queue, clock):
        first = queue.send("a")
        queue.send("b")
        self.exhaust(queue, clock, times=6)
        assert queue.redrive([first]) == 1
        assert receive(queue).id == first
        assert queue.stats().dead == 1

    def test_redrive_of_a_message_that_is_not_dead_changes_nothing(self, db, queue, clock):
        dead = queue.send("a")
        self.exhaust(queue, clock)
        alive = queue.send("b")
        before = snapshot(db)
        with pytest.raises(litejobs.NotFoundError, match=f"message {alive} is not a dead letter"):
            queue.redrive([dead, alive])
        assert snapshot(db) == before
        with pytest.raises(litejobs.ConfigError, match="wrap it in a list"):
            queue.redrive(dead)

    def test_a_redriven_message_s_old_receipt_is_stale(self, queue, clock):
        queue.send("a")
        last = self.exhaust(queue, clock)
        queue.redrive()
        with pytest.raises(litejobs.StaleReceiptError):
            queue.delete(last.receipt)


class TestBatches:
    def test_send_batch_returns_ids_in_order(self, queue):
        ids = queue.send_batch([{"n": i} for i in range(5)])
        assert [receive(queue).id for _ in ids] == ids

    def test_send_batch_with_one_bad_body_sends_nothing(self, db, queue):
        before = snapshot(db)
        with pytest.raises(litejobs.InvalidPayloadError, match="#2"):
            queue.send_batch([1, 2, {3}])
        assert snapshot(db) == before

    def test_receive_batch_takes_up_to_n_in_priority_order(self, queue, clock):
        low = queue.send_batch(["l1", "l2", "l3"])
        high = queue.send("h", priority=1)
        got = queue.receive_batch(3, visibility_timeout=5)
        assert [m.id for m in got] == [high, low[0], low[1]]
        assert all(m.receive_count == 1 for m in got)
        assert [m.id for m in queue.receive_batch(10, visibility_timeout=5)] == [low[2]]
        assert queue.receive_batch(10, visibility_timeout=5) == []

    def test_receive_batch_dead_letters_exhausted_messages(self, queue, clock):
        queue.send("poison")
        for _ in range(3):
            queue.receive_batch(5, visibility_timeout=1)
            clock.advance(1)
        fine = queue.send("fine")
        assert [m.id for m in queue.receive_batch(5, visibility_timeout=1)] == [fine]
        assert queue.stats().dead == 1

    def test_delete_batch_deletes_the_live_and_reports_the_stale(self, queue, clock):
        queue.send_batch(["a", "b", "c"])
        held = queue.receive_batch(3, visibility_timeout=1)
        clock.advance(1)
        retaken = receive(queue)
        stale = queue.delete_batch([m.receipt for m in held])
        assert stale == [m.receipt for m in held if m.id == retaken.id]
        assert queue.stats().in_flight == 1
        assert queue.delete_batch([retaken.receipt]) == []
        assert queue.stats().total == 0

    def test_delete_batch_with_a_malformed_receipt_deletes_nothing(self, db, queue):
        queue.send("a")
        message = receive(queue)
        before = snapshot(db)
        with pytest.raises(litejobs.ConfigError):
            queue.delete_batch([message.receipt, "nonsense"])
        assert snapshot(db) == before

    @pytest.mark.parametrize("n", [0, -1, 1.5, True, 2**63])
    def test_receive_batch_needs_a_positive_int(self, queue, n):
        with pytest.raises(litejobs.ConfigError, match="n must be an int"):
            queue.receive_batch(n, visibility_timeout=1)


class TestStats:
    def test_stats_count_each_state(self, queue, clock):
        queue.send("visible")
        queue.send("delayed", delay=100)
        queue.send("in flight", priority=2)
        receive(queue, timeout=100)
        queue.send("dead", priority=1)
        for _ in range(3):
            receive(queue, timeout=1)
            clock.advance(1)
        stats = queue.stats()
        assert stats == litejobs.QueueStats(visible=1, delayed=1, in_flight=1, dead=1)
        assert stats.total == 4

    def test_stats_equal_a_fresh_count_of_the_rows(self, db, queue, clock):
        queue.send_batch(range(7))
        queue.receive_batch(3, visibility_timeout=2)
        ((total,),) = rows(db.connection(), "SELECT count(*) FROM messages WHERE queue = 'work'")
        assert queue.stats().total == total == 7


class TestBadInput:
    @pytest.mark.parametrize(
        "body", [{1, 2}, b"bytes", math.nan, object(), {"k": math.inf}], ids=repr
    )
    def test_a_body_json_cannot_carry_is_refused_and_nothing_is_written(self, db, queue, body):
        before = snapshot(db)
        with pytest.raises(litejobs.InvalidPayloadError, match="not JSON-serialisable"):
            queue.send(body)
        assert snapshot(db) == before

    def test_a_circular_body_is_refused(self, queue):
        loop: list = []
        loop.append(loop)
        with pytest.raises(litejobs.InvalidPayloadError):
            queue.send(loop)

    @pytest.mark.parametrize("value", [-1, -0.001, math.nan, math.inf, 1e300, "5", None])
    @pytest.mark.parametrize(
        ("name", "call"),
        [
            ("delay", lambda q, v, r: q.send(1, delay=v)),
            ("visibility_timeout", lambda q, v, r: q.receive(visibility_timeout=v)),
            ("visibility_timeout", lambda q, v, r: q.receive_batch(2, visibility_timeout=v)),
            ("seconds", lambda q, v, r: q.extend(r, v)),
            ("delay", lambda q, v, r: q.nack(r, delay=v)),
        ],
    )
    def test_negative_or_nan_times_are_config_errors_that_change_nothing(
        self, db, queue, name, call, value
    ):
        queue.send("held")
        receipt = receive(queue).receipt
        before = snapshot(db)
        with pytest.raises(litejobs.ConfigError, match=name):
            call(queue, value, receipt)
        assert snapshot(db) == before

    @pytest.mark.parametrize("name", ["", None, 3])
    def test_a_queue_needs_a_name(self, db, name):
        with pytest.raises(litejobs.ConfigError, match="queue name"):
            litejobs.Queue(db, name)

    @pytest.mark.parametrize("max_receive", [0, -1, 2.0])
    def test_max_receive_must_be_a_positive_int(self, db, max_receive):
        with pytest.raises(litejobs.ConfigError, match="max_receive"):
            litejobs.Queue(db, "q", max_receive=max_receive)

    @pytest.mark.parametrize("priority", [1.5, 2**63, -(2**63) - 1, "1"])
    def test_priority_must_be_a_64_bit_int(self, db, queue, priority):
        before = snapshot(db)
        with pytest.raises(litejobs.ConfigError, match="priority"):
            queue.send(1, priority=priority)
        with pytest.raises(litejobs.ConfigError, match="priority"):
            queue.send_batch([1], priority=priority)
        assert snapshot(db) == before

    def test_sql_metacharacters_in_names_and_bodies_are_just_data(self, db):
        name = "q'; DROP TABLE messages; --"
        evil = litejobs.Queue(db, name)
        evil.send("x'); DELETE FROM jobs; --")
        message = receive(evil)
        assert message.body == "x'); DELETE FROM jobs; --"
        evil.delete(message.receipt)
        assert litejobs.Queue(db, "work").stats().total == 0


class TestGivingBack:
    def test_nack_makes_the_receipt_stale(self, db, queue):
        queue.send("job")
        message = receive(queue, timeout=60)
        queue.nack(message.receipt, delay=5)
        before = snapshot(db)
        for call in (
            lambda: queue.extend(message.receipt, 60),
            lambda: queue.nack(message.receipt),
            lambda: queue.delete(message.receipt),
        ):
            with pytest.raises(litejobs.StaleReceiptError, match="given back"):
                call()
        assert snapshot(db) == before

    def test_redrive_ignores_repeated_ids_and_wants_str_ids(self, queue, clock):
        dead = queue.send("a")
        for _ in range(3):
            receive(queue, timeout=1)
            clock.advance(1)
        with pytest.raises(litejobs.ConfigError, match="message ids"):
            queue.redrive([int(dead)])
        assert queue.redrive([dead, dead]) == 1
