"""Properties of the queue over many generated inputs (issue 4 brings the full
model-based state machines; these pin what holds for any input today)."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

import litejobs

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def fresh_queue(tmp: str, clock: litejobs.VirtualClock) -> litejobs.Queue:
    return litejobs.Queue(litejobs.Database.open(Path(tmp) / "q.db", clock=clock))


@given(bodies=st.lists(json_values, min_size=1, max_size=5), priority=st.integers(-5, 5))
def test_any_json_body_comes_back_equal(bodies, priority):
    with tempfile.TemporaryDirectory() as tmp:
        queue = fresh_queue(tmp, litejobs.VirtualClock())
        ids = [queue.send(body, priority=priority) for body in bodies]
        received = queue.receive_batch(len(bodies), visibility_timeout=1)
        assert [m.id for m in received] == ids
        assert [m.body for m in received] == bodies
        queue.db.close()


non_json = st.one_of(
    st.sets(st.integers(), min_size=1),
    st.binary(),
    st.just(math.nan),
    st.just(math.inf),
    st.builds(object),
)


@given(
    body=st.one_of(
        non_json, st.lists(non_json, min_size=1), st.dictionaries(st.text(), non_json, min_size=1)
    )
)
def test_a_body_json_cannot_carry_is_refused_before_anything_is_written(body):
    with tempfile.TemporaryDirectory() as tmp:
        queue = fresh_queue(tmp, litejobs.VirtualClock())
        try:
            queue.send(body)
        except litejobs.InvalidPayloadError:
            pass
        else:
            raise AssertionError(f"{body!r} was accepted")
        assert queue.stats().total == 0
        queue.db.close()


operations = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(0, 2)),
        st.tuples(st.just("receive"), st.integers(0, 3)),
        st.tuples(st.just("delete"), st.integers(0, 10)),
        st.tuples(st.just("advance"), st.integers(0, 4)),
    ),
    max_size=40,
)


@given(ops=operations)
def test_messages_are_conserved_and_never_leased_twice(ops):
    """Every message sent is visible, delayed, in flight, dead or deleted, and
    no receive hands out a message whose lease is still live."""
    clock = litejobs.VirtualClock()
    with tempfile.TemporaryDirectory() as tmp:
        queue = fresh_queue(tmp, clock)
        sent = deleted = 0
        leases: dict[str, tuple[str, int]] = {}  # message id -> (receipt, lease end)
        for op, arg in ops:
            if op == "send":
                queue.send(sent, delay=arg)
                sent += 1
            elif op == "receive":
                message = queue.receive(visibility_timeout=arg)
                if message is not None:
                    held = leases.get(message.id)
                    assert held is None or held[1] <= clock.now_ms(), "lease handed out twice"
                    leases[message.id] = (message.receipt, clock.now_ms() + arg * 1000)
            elif op == "delete" and leases:
                message_id = sorted(leases)[arg % len(leases)]
                receipt, _ = leases.pop(message_id)
                try:
                    queue.delete(receipt)
                    deleted += 1
                except litejobs.StaleReceiptError:
                    pass
            elif op == "advance":
                clock.advance(arg)
            assert queue.stats().total == sent - deleted
        queue.db.close()
