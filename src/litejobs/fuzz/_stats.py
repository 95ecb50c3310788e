"""What one machine's fuzzing did: examples, failures and what they reached.

Counts merge across processes; a snapshot crosses the process boundary as
JSON-able data, so the parent never unpickles a child's objects.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import attrs

#: Hypothesis's own bookkeeping events, which say nothing about the search.
_NOISE = ("Retried draw from", "invalid because")


@attrs.define
class MachineStats:
    """Counts for one machine. ``examples`` are inputs that ran to the end
    (passed or failed); ``gave_up`` ran out of bytes or were filtered, as a
    fuzzer's random input sometimes does."""

    examples: int = 0
    gave_up: int = 0
    failures: int = 0
    seconds: float = 0.0
    rules: set[str] = attrs.field(factory=set)
    events: Counter[str] = attrs.field(factory=Counter)
    targets: dict[str, float] = attrs.field(factory=dict)
    origins: Counter[str] = attrs.field(factory=Counter)
    #: One message per failure origin, the first seen.
    messages: dict[str, str] = attrs.field(factory=dict)

    def observe(self, observation: Any) -> None:
        """Count a Hypothesis observation of one test case."""
        if observation.status == "gave_up":
            self.gave_up += 1
            return
        self.examples += 1
        prefix = "execute:rule:"
        self.rules.update(k[len(prefix) :] for k in observation.timing if k.startswith(prefix))
        for feature, value in observation.features.items():
            if feature.startswith("target:"):
                label = feature[len("target:") :]
                self.targets[label] = max(self.targets.get(label, value), value)
            elif not feature.startswith(_NOISE):
                self.events[feature] += 1

    def failed(self, origin: str, message: str) -> None:
        self.failures += 1
        self.origins[origin] += 1
        self.messages.setdefault(origin, message)

    def merge(self, other: MachineStats) -> MachineStats:
        """A new total of ``self`` and ``other``."""
        targets = dict(self.targets)
        for label, value in other.targets.items():
            targets[label] = max(targets.get(label, value), value)
        return MachineStats(
            examples=self.examples + other.examples,
            gave_up=self.gave_up + other.gave_up,
            failures=self.failures + other.failures,
            seconds=self.seconds + other.seconds,
            rules=self.rules | other.rules,
            events=self.events + other.events,
            targets=targets,
            origins=self.origins + other.origins,
            messages={**other.messages, **self.messages},
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "examples": self.examples,
            "gave_up": self.gave_up,
            "failures": self.failures,
            "seconds": round(self.seconds, 3),
            "rules": sorted(self.rules),
            "events": dict(sorted(self.events.items())),
            "targets": dict(sorted(self.targets.items())),
            "origins": dict(self.origins),
            "messages": dict(self.messages),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MachineStats:
        return cls(
            examples=data["examples"],
            gave_up=data["gave_up"],
            failures=data["failures"],
            seconds=data["seconds"],
            rules=set(data["rules"]),
            events=Counter(data["events"]),
            targets=dict(data["targets"]),
            origins=Counter(data["origins"]),
            messages=dict(data["messages"]),
        )
