"""The reference model of the job hierarchy, on top of :class:`QueueModel`.

Parents have a tolerance and a status that follows their children; children
have one queue message each while they are not terminal. Pure Python; the
oracle for the hierarchy machine.
"""

from __future__ import annotations

import attrs

from litejobs._model import QueueModel

TERMINAL = ("completed", "failed", "cancelled")


@attrs.define
class ModelParent:
    id: str
    limit: int
    action: str
    status: str = "pending"
    error: str | None = None
    warning: str | None = None
    children: list[str] = attrs.field(factory=list)


@attrs.define
class ModelChild:
    id: str
    parent: str
    message: str | None
    status: str = "pending"
    attempts: int = 0


@attrs.define
class HierarchyModel:
    queue: QueueModel
    parents: dict[str, ModelParent] = attrs.field(factory=dict)
    children: dict[str, ModelChild] = attrs.field(factory=dict)

    def create_parent(self, parent_id: str, limit: int, action: str) -> None:
        self.parents[parent_id] = ModelParent(parent_id, limit, action)

    def spawn(self, parent_id: str, child_id: str, message_id: str, now: int) -> None:
        parent = self.parents[parent_id]
        self.queue.send(message_id, {"job_id": child_id}, now, 0, 0)
        self.children[child_id] = ModelChild(child_id, parent_id, message_id)
        parent.children.append(child_id)
        if parent.status == "pending":
            parent.status = "running"

    def holds(self, child: ModelChild, receipt: str, now: int) -> bool:
        message = self.queue.holder(receipt, now)
        return message is not None and message.id == child.message

    # -- a worker's calls: each returns what litejobs must do -----------------

    def start(self, child_id: str, receipt: str, now: int) -> str:
        """'ok', 'invalid' (terminal) or 'stale'."""
        child = self.children[child_id]
        if child.status in TERMINAL:
            return "invalid"
        if not self.holds(child, receipt, now):
            return "stale"
        child.status = "running"
        child.attempts += 1
        return "ok"

    def complete(self, child_id: str, receipt: str, now: int) -> str:
        child = self.children[child_id]
        if child.status != "running":
            return "invalid"
        if not self.holds(child, receipt, now):
            return "stale"
        self.queue.delete(receipt, now)
        self.finish(child, "completed")
        return "ok"

    def fail(self, child_id: str, receipt: str, now: int, retry: bool) -> str:
        child = self.children[child_id]
        if child.status != "running":
            return "invalid"
        if not self.holds(child, receipt, now):
            return "stale"
        message = self.queue.holder(receipt, now)
        assert message is not None
        if retry and message.received < message.max_receive:
            self.queue.nack(receipt, now, 0)
            child.status = "pending"
        else:
            self.queue.delete(receipt, now)
            self.finish(child, "failed")
        return "ok"

    def cancel(self, parent_id: str) -> str:
        parent = self.parents[parent_id]
        if parent.status in TERMINAL:
            return "invalid"
        self.cancel_children(parent)
        parent.status = "cancelled"
        return "ok"

    def sweep(self, now: int) -> None:
        """Dead job messages fail their jobs (as a receive_batch's sweep does)."""
        for child in list(self.children.values()):
            if child.message is None or child.status in TERMINAL:
                continue
            message = self.queue.messages[child.message]
            if not message.deleted and message.dead(now):
                message.deleted = True
                self.finish(child, "failed")

    # -- roll-up -----------------------------------------------------------

    def finish(self, child: ModelChild, status: str) -> None:
        child.status = status
        child.message = None
        parent = self.parents[child.parent]
        if parent.status in TERMINAL:
            return
        kids = [self.children[c] for c in parent.children]
        failures = sum(k.status == "failed" for k in kids)
        if parent.limit and status == "failed" and failures == parent.limit:
            reason = f"{failures} child failures reached max_child_failures={parent.limit}"
            if parent.action == "stop_all":
                self.cancel_children(parent)
                parent.status, parent.error = "failed", reason
                return
            if parent.action == "continue":
                parent.error = reason
            else:
                parent.warning = reason
        if all(k.status in TERMINAL for k in kids):
            reached = parent.limit and failures >= parent.limit
            parent.status = "failed" if reached and parent.action == "continue" else "completed"

    def cancel_children(self, parent: ModelParent) -> None:
        for child_id in parent.children:
            child = self.children[child_id]
            if child.status not in TERMINAL:
                if child.message is not None:
                    self.queue.messages[child.message].deleted = True
                child.status, child.message = "cancelled", None
