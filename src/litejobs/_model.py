"""The reference model of the queue: the oracle the state machines compare
litejobs against. Pure Python, no I/O, times in integer milliseconds given by
the caller. Kept small so that it is obviously right.

A message is in exactly one state at time ``now``::

    deleted    delete() with its live receipt
    dead       received max_receive times and its last lease has run out
    visible    timeout <= now
    in flight  leased and timeout > now
    delayed    not leased and timeout > now

The receipt a receive hands out is the only live one until the message is
received again, given back (nack), dead or redriven.
"""

from __future__ import annotations

from typing import Any

import attrs


@attrs.define
class ModelMessage:
    id: str
    body: Any
    priority: int
    created: int
    order: int  # send order, the last tie-breaker
    max_receive: int
    timeout: int
    received: int = 0
    leased: bool = False
    receipt: str | None = None  # the live receipt, if any
    deleted: bool = False

    def dead(self, now: int) -> bool:
        return self.received >= self.max_receive and self.timeout <= now

    def state(self, now: int) -> str:
        if self.deleted:
            return "deleted"
        if self.dead(now):
            return "dead"
        if self.timeout <= now:
            return "visible"
        return "in_flight" if self.leased else "delayed"


@attrs.define
class QueueModel:
    """One queue's messages, as the design says they behave."""

    max_receive: int = 3
    messages: dict[str, ModelMessage] = attrs.field(factory=dict)

    def send(self, message_id: str, body: Any, now: int, delay_ms: int, priority: int) -> None:
        assert message_id not in self.messages, f"id {message_id} handed out twice"
        self.messages[message_id] = ModelMessage(
            id=message_id,
            body=body,
            priority=priority,
            created=now,
            order=len(self.messages),
            max_receive=self.max_receive,
            timeout=now + delay_ms,
        )

    def live(self) -> list[ModelMessage]:
        return [m for m in self.messages.values() if not m.deleted]

    def receivable(self, now: int) -> list[ModelMessage]:
        """Visible messages, most urgent first."""
        visible = [m for m in self.live() if m.state(now) == "visible"]
        return sorted(visible, key=lambda m: (-m.priority, m.created, m.order))

    def receive(self, now: int, lease_ms: int, receipt: str) -> ModelMessage | None:
        """Lease the most urgent visible message under ``receipt`` (the
        implementation's receipt string, which the model adopts)."""
        candidates = self.receivable(now)
        if not candidates:
            return None
        return self.lease(candidates[0], now, lease_ms, receipt)

    def lease(self, message: ModelMessage, now: int, lease_ms: int, receipt: str) -> ModelMessage:
        message.received += 1
        message.timeout = now + lease_ms
        message.leased = True
        message.receipt = receipt
        return message

    def holder(self, receipt: str, now: int) -> ModelMessage | None:
        """The message ``receipt`` holds now, if it still holds one."""
        for message in self.live():
            if message.receipt == receipt and not message.dead(now):
                return message
        return None

    def delete(self, receipt: str, now: int) -> bool:
        message = self.holder(receipt, now)
        if message is None:
            return False
        message.deleted = True
        message.receipt = None
        return True

    def extend(self, receipt: str, now: int, lease_ms: int) -> bool:
        message = self.holder(receipt, now)
        if message is None:
            return False
        message.timeout = now + lease_ms
        message.leased = True
        return True

    def nack(self, receipt: str, now: int, delay_ms: int) -> bool:
        message = self.holder(receipt, now)
        if message is None:
            return False
        message.timeout = now + delay_ms
        message.leased = False
        message.receipt = None
        return True

    def redrive(self, now: int) -> int:
        dead = [m for m in self.live() if m.dead(now)]
        for message in dead:
            message.received = 0
            message.timeout = now
            message.leased = False
            message.receipt = None
        return len(dead)

    def stats(self, now: int) -> dict[str, int]:
        counts = dict.fromkeys(("visible", "delayed", "in_flight", "dead"), 0)
        for message in self.live():
            counts[message.state(now)] += 1
        return counts

    def dead_ids(self, now: int) -> set[str]:
        return {m.id for m in self.live() if m.dead(now)}
