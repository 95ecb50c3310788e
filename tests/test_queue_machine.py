"""queue_machine against independent in-memory queues, one right and some
wrong: the machine must pass the first and catch each of the others."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from litejobs import StaleReceiptError
from litejobs.testing import queue_machine


class MemoryQueue:
    """A queue in a list, written from the contract, not from litejobs."""

    def __init__(self, clock, max_receive: int = 3) -> None:
        self.clock, self.max_receive, self.rows = clock, max_receive, []
        self.ids, self.tokens = itertools.count(1), itertools.count(1)

    def now(self) -> int:
        return self.clock.now_ms()

    def send(self, body, *, delay=0.0, priority=0):
        now = self.now()
        row = {
            "id": f"m{next(self.ids)}",
            "body": body,
            "priority": priority,
            "created": now,
            "due": now + round(delay * 1000),
            "count": 0,
            "leased": False,
            "token": None,
        }
        self.rows.append(row)
        return row["id"]

    def send_batch(self, bodies):
        return [self.send(body) for body in bodies]

    def is_dead(self, row) -> bool:
        return row["count"] >= self.max_receive and row["due"] <= self.now()

    def is_visible(self, row) -> bool:
        return row["due"] <= self.now() and not self.is_dead(row)

    def visible(self):
        rows = [r for r in self.rows if self.is_visible(r)]
        # sorted() is stable, so send order breaks the remaining ties
        return sorted(rows, key=lambda r: (-r["priority"], r["created"]))

    def take(self, row, lease):
        row["count"] += 1
        row["due"] = self.now() + round(lease * 1000)
        row["leased"] = True
        row["token"] = f"t{next(self.tokens)}"
        return SimpleNamespace(
            id=row["id"], body=row["body"], receipt=row["token"], receive_count=row["count"]
        )

    def receive(self, *, visibility_timeout):
        rows = self.visible()
        return self.take(rows[0], visibility_timeout) if rows else None

    def receive_batch(self, n, *, visibility_timeout):
        return [self.take(row, visibility_timeout) for row in self.visible()[:n]]

    def holding(self, token):
        for row in self.rows:
            if row["token"] == token and not self.is_dead(row):
                return row
        raise StaleReceiptError(f"receipt {token} is stale")

    def delete(self, receipt):
        self.rows.remove(self.holding(receipt))

    def delete_batch(self, receipts):
        stale = []
        for receipt in receipts:
            try:
                self.delete(receipt)
            except StaleReceiptError:
                stale.append(receipt)
        return stale

    def extend(self, receipt, seconds):
        row = self.holding(receipt)
        row["due"], row["leased"] = self.now() + round(seconds * 1000), True

    def nack(self, receipt, *, delay=0.0):
        row = self.holding(receipt)
        row["due"], row["leased"], row["token"] = self.now() + round(delay * 1000), False, None

    def redrive(self):
        dead = [r for r in self.rows if self.is_dead(r)]
        for row in dead:
            row.update(count=0, due=self.now(), leased=False, token=None)
        return len(dead)

    def stats(self):
        counts = dict.fromkeys(("visible", "delayed", "in_flight", "dead"), 0)
        for row in self.rows:
            if self.is_dead(row):
                counts["dead"] += 1
            elif self.is_visible(row):
                counts["visible"] += 1
            else:
                counts["in_flight" if row["leased"] else "delayed"] += 1
        return SimpleNamespace(**counts)

    def dead_letters(self):
        return [SimpleNamespace(id=r["id"]) for r in self.rows if self.is_dead(r)]


class DeleteIgnoresTheReceipt(MemoryQueue):
    def delete(self, receipt):
        for row in self.rows:
            if row["token"] == receipt or receipt in row.get("old", ()):
                self.rows.remove(row)
                return
        raise StaleReceiptError(receipt)

    def take(self, row, lease):
        row.setdefault("old", []).append(row["token"])
        return super().take(row, lease)


class ExpiryOneMillisecondLate(MemoryQueue):
    def is_visible(self, row):
        return row["due"] < self.now() and not self.is_dead(row)


class OneReceiveTooMany(MemoryQueue):
    def is_dead(self, row):
        return row["count"] > self.max_receive and row["due"] <= self.now()


SETTINGS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_a_correct_independent_queue_passes():
    machine = queue_machine(lambda path, clock: MemoryQueue(clock))
    run_state_machine_as_test(machine, settings=SETTINGS)


@pytest.mark.parametrize(
    "broken", [DeleteIgnoresTheReceipt, ExpiryOneMillisecondLate, OneReceiveTooMany]
)
def test_a_wrong_queue_is_caught(broken):
    machine = queue_machine(lambda path, clock: broken(clock))
    # Finding is enough here; shrinking is what the correct queue never needs.
    find_only = settings(SETTINGS, phases=[Phase.explicit, Phase.reuse, Phase.generate])
    with pytest.raises((AssertionError, BaseExceptionGroup)) as raised:
        run_state_machine_as_test(machine, settings=find_only)
    # Hypothesis may report several distinct failures at once, in a group.
    failures = (
        list(raised.value.exceptions)
        if isinstance(raised.value, BaseExceptionGroup)
        else [raised.value]
    )
    assert failures
    assert all(isinstance(f, AssertionError) for f in failures), failures
